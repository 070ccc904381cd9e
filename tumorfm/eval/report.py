"""Pictures and a self-contained HTML report: looking at a segmentation catches what a Dice hides.

Arrays are (z, y, x) as read by tumorfm.data.io; a picture is one axial slice (first axis) shown
the way radiologists look at it: anterior at the top, the patient's right on the left of the
screen. In ITK's LPS world that means columns run towards +x (left) and rows towards +y
(posterior), so an identity direction (DICOM axial) is displayed as stored, and an axis whose
direction points the other way (e.g. NIfTI written in RAS) is flipped (`display_flips`).
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from tumorfm.data.classes import RGB, class_colours
from tumorfm.errors import TumorFMError
from tumorfm.files import make_public
from tumorfm.tables import table_html

GAP = 4  # white pixels between panels
MIN_HEIGHT = 256  # panels are upsampled to at least this many pixels


def window(image2d: np.ndarray, modality: str = "CT") -> np.ndarray:
    """Grey values 0..255. CT in HU gets the soft-tissue window (level 40, width 400), where
    tumours show; anything else (MR, or CT that is clearly not HU) the 0.5-99.5 percentiles."""
    image = np.asarray(image2d, dtype=np.float64)
    lo, hi = np.percentile(image, (0.5, 99.5)) if image.size else (0.0, 0.0)
    # Not HU: nothing below 0 (raw stored values, no fat or air) or a tiny range (normalised).
    if modality.upper() == "CT" and lo < 0 and hi - lo >= 100:
        lo, hi = 40 - 400 / 2, 40 + 400 / 2
    if hi <= lo:
        return np.zeros(image.shape, np.uint8)
    return np.round(np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _busiest_slice(label: np.ndarray | None) -> int | None:
    """The slice with the most voxels of the smallest class present, or None if empty."""
    if label is None:
        return None
    values, counts = np.unique(label[label > 0], return_counts=True)
    if values.size == 0:
        return None
    smallest = values[np.argmin(counts)]
    per_slice = (label == smallest).reshape(label.shape[0], -1).sum(axis=1)
    return int(np.argmax(per_slice))


def pick_slice(
    gt: np.ndarray | None, pred: np.ndarray | None = None, image: np.ndarray | None = None
) -> int:
    """The axial slice to show: where the smallest class of gt is largest (the tumour rather
    than the organ around it), else the same in pred, else the middle slice."""
    for label in (gt, pred):
        index = _busiest_slice(label)
        if index is not None:
            return index
    reference = next(a for a in (gt, pred, image) if a is not None)
    return reference.shape[0] // 2


def overlay(
    image2d_uint8: np.ndarray,
    label2d: np.ndarray,
    colours: Sequence[RGB],
    alpha: float = 0.45,
    contour_only: bool = False,
) -> np.ndarray:
    """Labels over the grey scan: each class blended in with `alpha` (unless contour_only) and
    outlined by a solid 1-pixel contour, so small structures stay visible on any background."""
    rgb = np.repeat(np.asarray(image2d_uint8, np.float64)[..., None], 3, axis=2)
    for value in np.unique(label2d[label2d > 0]):
        colour = np.asarray(colours[(int(value) - 1) % len(colours)], np.float64)
        mask = label2d == value
        if not contour_only:
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
        rgb[mask ^ ndimage.binary_erosion(mask)] = colour
    return np.round(rgb).astype(np.uint8)


def display_flips(direction: Sequence[float] | None) -> tuple[bool, bool]:
    """(flip rows, flip columns) that bring an axial slice to radiological display, from an ITK
    direction (9 numbers, row-major): flip an index axis whose main component is negative.
    Axes are not permuted: give an axial stack (tumorfm.data.orient), whose first axis is z."""
    if direction is None:
        return False, False
    matrix = np.asarray(direction, np.float64).reshape(3, 3)
    x_axis, y_axis = matrix[:, 0], matrix[:, 1]
    return bool(y_axis[np.argmax(abs(y_axis))] < 0), bool(x_axis[np.argmax(abs(x_axis))] < 0)


def _square_pixels(shape: tuple[int, int], spacing_yx: Sequence[float]) -> tuple[np.ndarray, ...]:
    """Nearest-neighbour index grids that make one output pixel cover the same mm in y and x,
    with the panel at least MIN_HEIGHT pixels tall."""
    height, width = shape
    sy, sx = (float(s) for s in spacing_yx)
    mm_per_pixel = min(sy, sx, height * sy / MIN_HEIGHT)
    out_h, out_w = round(height * sy / mm_per_pixel), round(width * sx / mm_per_pixel)
    rows = np.minimum((np.arange(out_h) + 0.5) * height / out_h, height - 1).astype(int)
    cols = np.minimum((np.arange(out_w) + 0.5) * width / out_w, width - 1).astype(int)
    return np.ix_(rows, cols)


def case_figure(
    image3d: np.ndarray,
    gt3d: np.ndarray | None,
    pred3d: np.ndarray,
    spacing_zyx: Sequence[float],
    colours: Sequence[RGB],
    modality: str = "CT",
    direction: Sequence[float] | None = None,
    index: int | None = None,
) -> np.ndarray:
    """One row of panels on slice `index` (default: pick_slice's): scan | ground truth |
    prediction (scan | prediction without gt). Arrays are (z, y, x): give one channel of a
    multi-channel image. Pass the ITK `direction` (Geometry.direction) to get radiological
    orientation.

    The slice is upsampled before the labels are drawn, so contours stay 1 pixel thin."""
    index = pick_slice(gt3d, pred3d, image3d) if index is None else index
    flip_rows, flip_cols = display_flips(direction)
    grid = _square_pixels(image3d.shape[1:], spacing_zyx[1:])

    def show(volume: np.ndarray) -> np.ndarray:
        slice2d = volume[index][::-1] if flip_rows else volume[index]
        return (slice2d[:, ::-1] if flip_cols else slice2d)[grid]

    grey = window(show(image3d), modality)
    panels = [np.repeat(grey[..., None], 3, axis=2)]
    panels += [overlay(grey, show(label), colours) for label in (gt3d, pred3d) if label is not None]
    gap = np.full((grey.shape[0], GAP, 3), 255, np.uint8)
    row = [part for panel in panels for part in (gap, panel)][1:]
    return np.concatenate(row, axis=1)


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of an (H, W, 3) uint8 picture, through SimpleITK (no imaging dependency)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) picture, got shape {rgb.shape}")
    fd, tmp = tempfile.mkstemp(suffix=".png")
    os.close(fd)
    try:
        sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), tmp)
        return Path(tmp).read_bytes()
    finally:
        Path(tmp).unlink(missing_ok=True)


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 100em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 1em; height: 1em; margin: 0 0.3em 0 1em;
          vertical-align: middle; border: 1px solid #555; }
img { max-width: 100%; image-rendering: pixelated; } .notes li { color: #555; }
.entry { white-space: nowrap; } .failed { color: #b00; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
figcaption { color: #555; }
"""


def _summary_html(title, summary_rows, header, notes, legend) -> str:
    """Everything above the pictures: title, notes, summary table, colour legend."""
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if notes:
        items = "\n".join(f"<li>{html.escape(str(note))}</li>" for note in notes)
        parts.append(f'<ul class="notes">\n{items}\n</ul>')
    parts.append(table_html(header, summary_rows))
    if legend:
        swatches = "".join(
            f'<span class="entry"><span class="swatch" style="background: '
            f'rgb{tuple(int(c) for c in rgb)}"></span>{html.escape(str(name))}</span>'
            for name, rgb in legend
        )
        parts.append(f'<p class="legend">{swatches}</p>')
    return "\n".join(parts) + "\n"


def _png_base64(rgb: np.ndarray) -> str:
    return base64.b64encode(png_bytes(rgb)).decode("ascii")


def _case_html(case: dict) -> str:
    """One case: its heading, then either one picture under its caption (the evaluation
    report), or what failed, a caption, a table and captioned figures, each optional."""
    case_id = html.escape(str(case["case_id"]))
    parts = [f"<h2>{case_id}</h2>\n"]
    if case.get("viewer"):
        parts.append(f'<p><a href="{html.escape(case["viewer"])}">open in the viewer</a> (every '
                     "slice, three planes and 3D, each class on and off)</p>\n")  # fmt: skip
    elif case.get("viewer_failed"):
        parts.append(f"<p>{html.escape(case['viewer_failed'])}</p>\n")
    if "picture" in case:
        caption = html.escape(str(case.get("caption", "")))
        alt = f"{case_id}: one axial slice, scan and segmentation overlays"
        src = f"data:image/png;base64,{_png_base64(case['picture'])}"
        return "".join([*parts, f"<p>{caption}</p>\n", f'<img src="{src}" alt="{alt}">\n'])
    if case.get("failed"):
        parts.append(f'<p class="failed">{html.escape(str(case["failed"]))}</p>\n')
    if case.get("caption"):
        parts.append(f"<p>{html.escape(str(case['caption']))}</p>\n")
    if case.get("table"):
        parts.append(table_html(*case["table"]) + "\n")
    for figure in case.get("figures", ()):
        src = f"data:image/png;base64,{_png_base64(figure['picture'])}"
        alt = html.escape(f"{case['case_id']}: {figure.get('alt', figure['caption'])}")
        caption = html.escape(str(figure["caption"]))
        parts.append(
            f'<figure><img src="{src}" alt="{alt}"><figcaption>{caption}</figcaption></figure>\n'
        )
    return "".join(parts)


def write_report(
    path: str | os.PathLike,
    title: str,
    summary_rows: Sequence[Sequence[object]],
    header: Sequence[str],
    cases: Sequence[dict],
    notes: Sequence[str] | None = None,
    legend: Sequence[tuple[str, RGB]] | None = None,
) -> Path:
    """One HTML file with everything inside (pictures as base64 PNG, no scripts); a case may
    link to its viewer page ("viewer": a path relative to the report, tumorfm.viewer).

    Cases ({"case_id", "picture", "caption"}, or {"case_id", and any of "failed", "caption",
    "table": (header, rows), "figures": [{"picture", "caption", "alt"}]}) are encoded one at a
    time straight into a temporary file beside `path`, which then replaces it: memory stays
    small with many cases, and a failure leaves the old report as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(_summary_html(title, summary_rows, header, notes, legend))
            for case in cases:
                out.write(_case_html(case))
            out.write("</body>\n</html>\n")
        make_public(tmp)  # mkstemp makes it private; a report is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _value_map(label: np.ndarray, values: dict[int, int]) -> np.ndarray:
    """Relabel `label` (value -> k), every other value to 0."""
    lookup = np.zeros(int(max(label.max(), max(values, default=0))) + 1, np.uint8)
    for value, k in values.items():
        lookup[value] = k
    return lookup[label]


def viewer_link(section: dict, folder: Path, scan, label_maps, names=None) -> None:
    """Add the case's viewer page (written into FOLDER/viewer) to its report `section`, or
    the one line saying why there is none (NiiVue not installed, a scan of several channels)."""
    from tumorfm.viewer.page import write_case_page

    try:
        section["viewer"] = write_case_page(folder, section["case_id"], scan, label_maps, names)
    except TumorFMError as error:
        section["viewer_failed"] = f"no viewer page: {error}"


NAMES = ["ground truth", "prediction"]  # the label maps of an evaluation's viewer pages


def report_from_evaluation(
    result: dict,
    images: str | os.PathLike,
    path: str | os.PathLike,
    title: str,
    notes: Sequence[str] = (),
    modality: str = "CT",
) -> Path:
    """The HTML report of a `tumorfm.eval.evaluate` result: its table per class, and for each
    case the scan (from the folder `images`), ground truth and prediction on one slice."""
    from tumorfm.data.io import read_volume  # here: the picture helpers above need no I/O
    from tumorfm.data.orient import Orientation
    from tumorfm.infer.inputs import list_inputs

    path = Path(path)
    classes = result["settings"]["classes"]
    colours = class_colours(len(classes))
    scans = {scan.case_id: scan.files[0] for scan in list_inputs(images)}
    header = ["class", "cases", "Dice mean", "Dice std", "HD95 median (mm)", "NSD mean"]
    header += ["lesion sensitivity", "lesion precision", "patient sensitivity"]
    rows = []
    for name, row in result["aggregates"].items():
        rows.append(
            [name, row["cases"], row["dice"]["mean"], row["dice"]["std"]]
            + [row["hd95"]["median"], row["nsd"]["mean"], row["lesions"]["sensitivity"]]
            + [row["lesions"]["precision"], row["patient"]["sensitivity"]]
        )

    def pictures():
        for case in result["cases"]:
            scan = read_volume(scans[case["case"]])
            gt, pred = read_volume(case["gt"]).array, read_volume(case["pred"]).array
            image = scan.array if scan.array.ndim == 3 else scan.array[0]
            k = {c["name"]: i + 1 for i, c in enumerate(classes)}
            gt = _value_map(gt, {c["gt_value"]: k[c["name"]] for c in classes})
            pred = _value_map(pred, {c["pred_value"]: k[c["name"]] for c in classes})
            axial = Orientation.of(scan.geometry)  # a sagittal scan is drawn axial too
            image, gt, pred = (axial.to_axial(a) for a in (image, gt, pred))
            geometry = axial.geometry(scan.geometry)
            picture = case_figure(
                image, gt, pred, geometry.spacing_zyx, colours, modality, geometry.direction
            )
            dice = ", ".join(f"{n} {s['dice']:.3f}" for n, s in case["scores"].items())
            section = {
                "case_id": case["case"],
                "picture": picture,
                "caption": f"Dice: {dice}. Left to right: scan, ground truth, prediction.",
            }
            labels = [case["gt"], case["pred"]]
            viewer_link(section, path.parent, scans[case["case"]], labels, NAMES)
            yield section

    legend = [(c["name"], colours[i]) for i, c in enumerate(classes)]
    return write_report(path, title, rows, header, pictures(), notes, legend)
