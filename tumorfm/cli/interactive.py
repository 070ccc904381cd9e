"""`tumorfm refine`: correct a segmentation with clicks and boxes on a promptable bundle (issue 19).

Coordinates: voxel indices in the scan's array order (z, y, x), as numpy and SimpleITK arrays
give them (a viewer's slice number is z). `--box` corners are inclusive, the first and the last
voxel of the box on each axis (Z0 = Z1 is a box one slice thick), so a box has no zero size; it
becomes tumorfm.interactive's half-open Box by adding 1 to the high corner. With `--world` every
number is millimetres in patient space in ITK's (LPS) order, x, y, z, as viewers show patient
coordinates: a point is mapped to continuous voxel indices (tumorfm.interactive.from_world), a
box's corners to the voxels holding them, sorted per axis (a flipped axis swaps them).

The prompts run in command-line order: click hands each repeated option its values as one list,
so the command's parser (_PromptOrder) notes the order of the `--point` and `--box` tokens first.
Outside the windows the prompts were computed in, the result is the `--mask` given, unchanged
(empty without one): the network never looked there. Everything is checked before the network
runs, and nothing is written unless the whole run succeeds.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from tumorfm.cli.app import app
from tumorfm.errors import TumorFMError

ORDER = "tumorfm.refine.order"  # ctx.meta key: "point"/"box" per prompt, in command-line order
PROMPT_OPTIONS = {"--point": "point", "--box": "box"}


def _prompt_order(args: list[str], params) -> list[str]:
    """The kinds of the `--point` / `--box` options in `args`, in their order. The value of an
    option that takes one is skipped, so `-o --point` is not read as a prompt."""
    takes_value = {
        name
        for param in params
        if getattr(param, "opts", None) and not getattr(param, "is_flag", True)
        and not getattr(param, "count", False)
        for name in param.opts
    }  # fmt: skip
    order, tokens = [], iter(args)
    for token in tokens:
        if token == "--":
            break
        name = token.split("=", 1)[0] if token.startswith("--") else token
        if name in PROMPT_OPTIONS:
            order.append(PROMPT_OPTIONS[name])
        if name in takes_value and "=" not in token:
            next(tokens, None)
    return order


class _PromptOrder(TyperCommand):
    """`refine`'s command: remembers how --point and --box interleave on the command line."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        ctx.meta[ORDER] = _prompt_order(list(args), self.params)
        return super().parse_args(ctx, args)


def _numbers(text: str, option: str, count: int, world: bool) -> tuple[list[float], bool]:
    """`A,B,C[:neg]` -> (numbers, positive), or a one-line error naming the option."""
    if option == "--point":
        form = "X,Y,Z (mm, with --world)" if world else "Z,Y,X (voxel indices)"
    else:
        form = "X0,Y0,Z0,X1,Y1,Z1 (mm, with --world)" if world else "Z0,Y0,X0,Z1,Y1,X1 (voxels)"
    body, colon, sign = text.partition(":")
    if colon and sign.strip().lower() not in ("neg", "pos"):
        raise TumorFMError(
            f"{option} {text}: unknown suffix ':{sign}'; expected {form}, optionally followed by "
            "':neg' (a negative prompt)"
        )
    try:
        numbers = [float(part) for part in body.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != count:
        raise TumorFMError(f"{option} {text}: expected {count} numbers {form}[:neg]")
    if not all(math.isfinite(v) for v in numbers):
        raise TumorFMError(f"{option} {text}: coordinates must be finite numbers")
    return numbers, sign.strip().lower() != "neg"


def _parse_prompts(points: list[str], boxes: list[str], order: list[str], world: bool):
    """(option, text, numbers, positive) per prompt, in command-line order (boxes first, then
    points, should the order read from the command line not account for them)."""
    parsed = {
        "point": [("--point", t, *_numbers(t, "--point", 3, world)) for t in points],
        "box": [("--box", t, *_numbers(t, "--box", 6, world)) for t in boxes],
    }
    if sorted(order) != sorted(["point"] * len(points) + ["box"] * len(boxes)):
        order = ["box"] * len(boxes) + ["point"] * len(points)  # pragma: no cover
    queues = {kind: iter(items) for kind, items in parsed.items()}
    return [next(queues[kind]) for kind in order]


def _plain(values) -> list:
    """Numbers for the record: 15 rather than 15.0 where a coordinate is whole."""
    return [int(v) if float(v).is_integer() else float(v) for v in values]


def _to_voxels(prompt, shape, geometry, world: bool) -> dict:
    """A parsed prompt in the scan's voxel indices (checked to lie in the scan): a point's
    continuous `zyx`, a box's inclusive first and last voxels and its half-open Box bounds."""
    from tumorfm.interactive.prompts import from_world, shape_text

    option, text, numbers, positive = prompt
    entry = {"option": option, "given": text, "positive": positive}
    outside = f"{option} {text}: outside the scan (size {shape_text(shape)} voxels, z, y, x)"
    try:
        if world:
            mm = [numbers[i : i + 3] for i in range(0, len(numbers), 3)]
            entry["mm_xyz"] = mm
            indices = [tuple(round(v, 6) for v in zyx) for zyx in from_world(mm, geometry)]
    except TumorFMError as error:
        raise TumorFMError(f"{option} {text}: {error}") from None
    if option == "--point":
        zyx = indices[0] if world else tuple(numbers)
        if not all(-0.5 <= v < n - 0.5 for v, n in zip(zyx, shape)):
            raise TumorFMError(outside)
        return {**entry, "zyx": _plain(zyx)}
    if world:  # the voxels holding the corners, sorted per axis
        held = [[math.floor(v + 0.5) for v in zyx] for zyx in indices]
        first, last = [min(a, b) for a, b in zip(*held)], [max(a, b) for a, b in zip(*held)]
    else:
        first, last = list(numbers[:3]), list(numbers[3:])
        for axis, a, b in zip("zyx", first, last):
            if a > b:
                raise TumorFMError(
                    f"{option} {text}: corners swapped on axis {axis} ({a:g} > {b:g}); give the "
                    "first voxel, then the last"
                )
        if not all(0 <= a and b <= n - 1 for a, b, n in zip(first, last, shape)):
            raise TumorFMError(outside)
    return {
        **entry,
        "first_voxel_zyx": _plain(first),
        "last_voxel_zyx": _plain(last),
        "box_zyx": {"lo": _plain(first), "hi_exclusive": _plain(b + 1 for b in last)},
    }


def _window_slices(window, shape) -> tuple[slice, ...]:
    """The voxels whose centres lie in a half-open window of scan indices."""

    def first(edge: float, n: int) -> int:  # the first voxel k with k + 0.5 >= edge
        return min(max(math.ceil(round(edge, 6) - 0.5), 0), n)

    lo, hi = window
    return tuple(slice(first(a, n), first(b, n)) for a, b, n in zip(lo, hi, shape))


def _target(out: Path, case: str) -> Path:
    """The label map's path: OUT itself if it names a volume file, else OUT/<case>.nii.gz."""
    from tumorfm.data.io import VOLUME_SUFFIXES, volume_suffix
    from tumorfm.infer.predict import NOT_FOLDERS

    if volume_suffix(out):
        return out
    if out.is_file() or out.suffix.lower() in NOT_FOLDERS:
        raise TumorFMError(
            f"{out}: not a folder or a label map's name ({', '.join(VOLUME_SUFFIXES)})"
        )
    return out / f"{case}.nii.gz"


def _read_mask(path: Path, label: int | None, geometry, scan: Path):
    """The object of a label map on the scan's grid: its non-zero voxels, or those of `label`."""
    import numpy as np

    from tumorfm.data.io import read_volume
    from tumorfm.interactive.prompts import shape_text

    volume = read_volume(path)
    if volume.array.ndim != 3:
        raise TumorFMError(f"--mask {path}: a {volume.array.ndim}D image; expected a label map")
    differ = geometry.differences(volume.geometry)
    if differ:
        shown = (
            f" ({shape_text(volume.geometry.size)} against {shape_text(geometry.size)}, x, y, z)"
            if differ == ["size"]
            else ""
        )
        raise TumorFMError(
            f"--mask {path}: its {' and '.join(differ)} differ(s) from the scan's ({scan}){shown}"
        )
    if label is None:
        return volume.array != 0
    mask = volume.array == label
    if not mask.any():
        values = ", ".join(f"{v:g}" for v in np.unique(volume.array)[:20])
        raise TumorFMError(f"--mask {path}: no voxel has label {label} (it holds {values})")
    return mask


@app.command(cls=_PromptOrder)
def refine(
    ctx: typer.Context,
    input: Annotated[
        Path, typer.Option("--input", "-i", help="One scan file (or a DICOM series folder).")
    ],
    bundle: Annotated[
        Path,
        typer.Option(
            "--model",
            "-m",
            help="Model bundle: a promptable one (each prompt a forward) or an automatic one "
            "(its answer once, each prompt a local threshold on it).",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Label map file (.nii.gz, ...) or folder.")
    ],
    point: Annotated[
        list[str] | None,
        typer.Option(
            "--point",
            help="A click Z,Y,X (voxel indices), X,Y,Z mm with --world; ':neg' after it for a "
            "negative click (repeatable).",
        ),
    ] = None,
    box: Annotated[
        list[str] | None,
        typer.Option(
            "--box",
            help="A box Z0,Y0,X0,Z1,Y1,X1: its first and last voxels (inclusive), or two "
            "corners X,Y,Z mm with --world; ':neg' for a negative box (repeatable).",
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(help="A label map on the scan's grid to start from (its non-zero voxels)."),
    ] = None,
    mask_label: Annotated[
        int | None, typer.Option("--mask-label", help="Take only this value of --mask.")
    ] = None,
    world: Annotated[
        bool, typer.Option(help="Coordinates are millimetres in patient space (x, y, z).")
    ] = False,
    plan: Annotated[str | None, typer.Option(help="Dataset plan of a pool bundle.")] = None,
    object_class: Annotated[
        str | None,
        typer.Option("--class", help="The object, when an automatic bundle's plan has several."),
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto (cuda, else mps, else cpu), cpu, cuda or mps.")
    ] = "auto",
    precision: Annotated[str, typer.Option(help="auto, bf16, fp16 or fp32.")] = "auto",
) -> None:
    """Refine a segmentation with clicks and boxes (in command-line order) on a bundle; writes
    the label map (0/1, the scan's geometry) and a <stem>_refine.json record."""
    points, boxes = point or [], box or []
    prompts = _parse_prompts(points, boxes, ctx.meta.get(ORDER, []), world)
    if mask_label is not None and mask is None:
        raise TumorFMError(f"--mask-label {mask_label}: needs --mask")
    if not prompts and mask is None:
        raise TumorFMError("nothing to do: give a --point, a --box or a --mask")

    import numpy as np

    import tumorfm
    from tumorfm.data.io import volume_suffix, write_volume
    from tumorfm.files import write_json
    from tumorfm.infer.inputs import list_inputs, load_scan
    from tumorfm.infer.predictor import choose_plan
    from tumorfm.interactive import POINT_RADIUS_MM, AutomaticSession, Session
    from tumorfm.model.bundle import bundle_folder, read_bundle_config

    scans = list_inputs(input)
    if len(scans) != 1:
        names = ", ".join(s.case_id for s in scans[:5]) + (", ..." if len(scans) > 5 else "")
        raise TumorFMError(f"{input}: {len(scans)} scans ({names}); refine takes one scan")
    (scan,) = scans
    label_path = _target(out, scan.case_id)
    if any(label_path.resolve() == Path(f).resolve() for f in scan.files):
        raise TumorFMError(f"{label_path}: is the scan itself; give another output")
    session = Session.from_bundle(
        bundle, device=device, plan=plan, precision=precision, object_class=object_class
    )
    automatic = isinstance(session, AutomaticSession)
    folder = bundle_folder(bundle)
    plan_name = choose_plan(read_bundle_config(folder), plan, folder)[0]
    image, geometry = load_scan(scan, len(session.plan.normalization_schemes))
    shape = tuple(reversed(geometry.size))
    given = None if mask is None else _read_mask(mask, mask_label, geometry, input)
    entries = [_to_voxels(p, shape, geometry, world) for p in prompts]  # all checked first

    started = time.perf_counter()
    session.set_image(image, geometry)
    del image
    if given is not None:
        session.set_mask(given)
    prepared = time.perf_counter() - started
    windows = []
    for entry in entries:
        try:
            if entry["option"] == "--point":
                session.add_point(entry["zyx"], entry["positive"])
            else:
                session.add_box(entry["box_zyx"]["lo"], entry["box_zyx"]["hi_exclusive"],
                                entry["positive"])  # fmt: skip
        except TumorFMError as error:
            raise TumorFMError(f"{entry['option']} {entry['given']}: {error}") from None
        lo, hi = session.window
        entry["window_zyx"] = {"lo": [round(v, 3) for v in lo], "hi": [round(v, 3) for v in hi]}
        entry["seconds"] = round(session.seconds, 3)
        windows.append((lo, hi))
        typer.echo(f"{entry['option']} {entry['given']}: {session.seconds:.2f} s")

    # outside every window the network never looked: the mask given (or nothing), unchanged
    result = np.zeros(shape, np.uint8) if given is None else given.astype(np.uint8)
    answer = session.mask if windows else None
    for window in windows:
        region = _window_slices(window, shape)
        result[region] = answer[region]
    voxels = int(result.sum())
    ml = voxels * float(np.prod(geometry.spacing)) / 1000.0
    stem = label_path.name[: -len(volume_suffix(label_path))]
    record_path = label_path.parent / f"{stem}_refine.json"
    record = {
        "tumorfm_version": tumorfm.__version__,
        "case": scan.case_id,
        "input": [str(f) for f in scan.files],
        "label": str(label_path),
        "settings": {
            "bundle": str(bundle),
            "bundle_folder": str(folder),
            "plan": plan_name,
            "mode": "automatic: the network once, prompts as local thresholds"
            if automatic
            else "promptable: one forward per prompt",
            "object_class": session.object_class if automatic else None,
            "patch_size": list(session.patch_size),
            "target_spacing_zyx": list(session.plan.target_spacing_zyx),
            "point_radius_mm": POINT_RADIUS_MM,
            "world": world,
            "mask": None if mask is None else str(mask),
            "mask_label": mask_label,
            "device": str(session.device),
            "precision": session.precision,
        },
        "coordinates": "voxel indices (z, y, x) of the scan's array; boxes: first and last voxel "
        "(inclusive), box_zyx half-open; windows half-open, where each prompt could change the "
        "mask; with world, mm_xyz as given (x, y, z in patient space, LPS)",
        "prompts": entries,
        "seconds": {
            "prepare": round(prepared, 3),
            "prompts": round(sum(e["seconds"] for e in entries), 3),
        },
        "voxels": voxels,
        "volume_ml": round(ml, 3),
    }
    write_volume(result, geometry, label_path)
    write_json(record_path, record)
    typer.echo(f"label map: {label_path} ({voxels} voxels, {ml:.1f} ml); record: {record_path}")
