"""`tumorfm view`: look at a scan and its label maps in the browser (issue 21, tumorfm.viewer)."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from tumorfm.cli.app import app
from tumorfm.errors import TumorFMError


@app.command()
def view(
    scan: Annotated[Path, typer.Argument(help="Scan: NIfTI, NRRD, MHA/MHD or a DICOM folder.")],
    label_maps: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Label maps on the scan's grid, drawn over it (names and colours "
            "from the dataset.json beside them).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int, typer.Option(help="Port on 127.0.0.1 [default: a free one].", show_default=False)
    ] = 0,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the address, do not open a browser.")
    ] = False,
    export: Annotated[
        Path | None,
        typer.Option(
            help="Write one self-contained HTML page (script and volumes inside; "
            "large scans shrunk) instead of serving.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="Refine with clicks: a bundle (shipped name or folder) segments the scan, and "
            "the page's + and - add or take away voxels (as `tumorfm refine`).",
            show_default=False,
        ),
    ] = None,
    plan: Annotated[str | None, typer.Option(help="With --model: the bundle's plan.")] = None,
    object_class: Annotated[
        str | None, typer.Option("--class", help="With --model: the object, if several.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="With --model: where the page's save writes the refined label map "
            "[default: SCAN's name + _refined.nii.gz, here].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Show SCAN with its LABEL_MAPS in three planes and 3D, each class toggled and named, the
    patient coordinate and value under the cursor, statistics when a CASE_statistics.json sits
    beside a label map; with --model, refine a segmentation with clicks. Served on this machine
    only, behind a token in the address."""
    from tumorfm.files import ensure_writable
    from tumorfm.viewer import Viewer, export_page, read_scene

    label_maps = label_maps or []
    if not 0 <= port <= 65535:
        raise TumorFMError(f"--port {port}: a port is a number from 1 to 65535 (0: a free one)")
    if model is None and (plan, object_class, out) != (None, None, None):
        raise TumorFMError("--plan, --class and --out refine a segmentation: give --model too")
    if export is not None and model is not None:
        raise TumorFMError("--export writes a page for disk; refining needs the server: drop one")
    if export is not None:
        if export.is_dir():
            raise TumorFMError(f"--export {export}: a folder; give the page's file name")
        ensure_writable(export.parent)
        path = export_page(scan, label_maps, export, title=scan.name)
        typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return
    scene = read_scene(scan, label_maps)
    refiner = None if model is None else _refiner(scan, model, plan, object_class, out)
    viewer = Viewer(scene, scan.name, port, refiner)
    typer.echo(f"viewer of {scan.name} at {viewer.url}\n(this machine only; Ctrl-C stops it)")
    if not no_browser:
        webbrowser.open(viewer.url)
    viewer.serve()


def _refiner(scan: Path, model: Path, plan, object_class, out: Path | None):
    """A Session on the scan (the bundle's network runs here, once) and where `save` writes."""
    from tumorfm.data.io import VOLUME_SUFFIXES, volume_suffix
    from tumorfm.files import ensure_writable
    from tumorfm.infer.inputs import list_inputs, load_scan
    from tumorfm.interactive import AutomaticSession, Session
    from tumorfm.viewer.refine import Refiner

    cases = list_inputs(scan)
    if len(cases) != 1:
        raise TumorFMError(f"{scan}: {len(cases)} scans; the viewer refines one")
    (case,) = cases
    out = out or Path(f"{case.case_id}_refined.nii.gz")
    if not volume_suffix(out):
        raise TumorFMError(f"--out {out}: a label map's file name ({', '.join(VOLUME_SUFFIXES)})")
    ensure_writable(out.resolve().parent)
    session = Session.from_bundle(model, plan=plan, object_class=object_class)
    image, geometry = load_scan(case, len(session.plan.normalization_schemes))
    typer.echo(f"segmenting {scan.name} with {model} ...")
    session.set_image(image, geometry)
    automatic = isinstance(session, AutomaticSession)
    settings = {"scan": str(scan), "bundle": str(model), "plan": plan, "object_class":
                getattr(session, "object_class", None),
                "mode": "automatic: local thresholds" if automatic else "promptable"}  # fmt: skip
    return Refiner(session, geometry, out, settings)
