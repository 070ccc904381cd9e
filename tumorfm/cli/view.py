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
) -> None:
    """Show SCAN with its LABEL_MAPS in three planes and 3D, each class toggled and named, the
    patient coordinate and value under the cursor, statistics when a CASE_statistics.json sits
    beside a label map. Served on this machine only, behind a token in the address."""
    from tumorfm.files import ensure_writable
    from tumorfm.viewer import Viewer, export_page, read_scene

    label_maps = label_maps or []
    if not 0 <= port <= 65535:
        raise TumorFMError(f"--port {port}: a port is a number from 1 to 65535 (0: a free one)")
    if export is not None:
        if export.is_dir():
            raise TumorFMError(f"--export {export}: a folder; give the page's file name")
        ensure_writable(export.parent)
        path = export_page(scan, label_maps, export, title=scan.name)
        typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return
    viewer = Viewer(read_scene(scan, label_maps), scan.name, port)
    typer.echo(f"viewer of {scan.name} at {viewer.url}\n(this machine only; Ctrl-C stops it)")
    if not no_browser:
        webbrowser.open(viewer.url)
    viewer.serve()
