"""The report of a prediction run (`tumorfm predict --report`): for scans without ground truth.

Per case: the statistics table (volumes, lesions, diameters, intensity) when the run measured
them, and the scan beside the prediction on a few axial slices through the predicted lesions,
each with its slice number and a scale bar. It reads only what `predict` leaves in its folder
(predict.json, dataset.json, the label maps) and the scans predict.json names, so it can be
drawn again later from the folder alone. Pictures are those of tumorfm.eval.report: axial (a
sagittally or coronally stored scan is turned, tumorfm.data.orient), radiological view.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tumorfm.data.classes import RGB, class_colours
from tumorfm.errors import TumorFMError
from tumorfm.eval.report import GAP, case_figure, viewer_link, write_report
from tumorfm.files import read_json_object
from tumorfm.tables import STATISTICS_HEADER, statistics_rows

SLICES = 3  # pictures per case
BARS_MM = (5, 10, 20, 50, 100, 200)  # scale-bar lengths to choose from
BAR_MARGIN = 8  # pixels between the bar and the picture's edges


def pick_slices(
    label: np.ndarray, lesion_values: Sequence[int], count: int = SLICES
) -> tuple[list[int], int | None, str]:
    """(slices, busiest, what): up to `count` axial slices (first axis) spread through the
    predicted lesions, always including the one with the most lesion voxels (`busiest`); with
    no lesion predicted, the same through the other structures ("structures"); with nothing
    predicted, spread through the whole scan ("nothing", busiest None). Sorted by z."""
    depth = label.shape[0]
    per_slice, what = np.isin(label, list(lesion_values)).reshape(depth, -1).sum(axis=1), "lesions"
    if not per_slice.any():
        per_slice, what = (label > 0).reshape(depth, -1).sum(axis=1), "structures"
    if per_slice.any():
        held, busiest = np.flatnonzero(per_slice), int(np.argmax(per_slice))
    else:
        held, busiest, what = np.arange(depth), None, "nothing"
    if held.size <= count:
        return held.tolist(), busiest, what
    # interior points dividing the extent into count + 1 parts: distinct, since held > count
    spread = held[(np.arange(1, count + 1) * held.size) // (count + 1)]
    if busiest is not None:
        spread[np.argmin(abs(spread - busiest))] = busiest
    return sorted(spread.tolist()), busiest, what


def bar_length_mm(width_mm: float) -> int:
    """The longest of BARS_MM within a quarter of the picture's width (else the shortest)."""
    fitting = [bar for bar in BARS_MM if bar <= width_mm / 4]
    return fitting[-1] if fitting else BARS_MM[0]


def draw_scale_bar(panel: np.ndarray, mm_per_pixel: float, bar_mm: float) -> int:
    """Draw a white horizontal bar `bar_mm` long, outlined in black so it shows on bright
    tissue too, into the bottom-left corner of `panel` (H, W, 3; in place); its length in
    pixels. The outline lies outside the bar: the white run is the length."""
    height, width = panel.shape[:2]
    length = max(1, min(round(bar_mm / mm_per_pixel), width - 2 * BAR_MARGIN))
    thickness = max(3, height // 80)
    bottom, left = height - BAR_MARGIN, BAR_MARGIN
    panel[bottom - thickness - 1 : bottom + 1, left - 1 : left + length + 1] = 0
    panel[bottom - thickness : bottom, left : left + length] = 255
    return length


def prediction_figures(
    image: np.ndarray,
    label: np.ndarray,
    spacing_zyx: Sequence[float],
    colours: Sequence[RGB],
    lesion_values: Sequence[int],
    modality: str = "CT",
    direction: Sequence[float] | None = None,
    count: int = SLICES,
) -> Iterator[dict]:
    """Per picked slice (pick_slices): {"z", "picture" (scan | prediction, scale bar in the
    scan), "bar_mm", "bar_pixels", "mm_per_pixel", "busiest" (the slice with the most), "what"
    (pick_slices' "lesions", "structures" or "nothing")}. Arrays axial (z, y, x)."""
    slices, busiest, what = pick_slices(label, lesion_values, count)
    width_mm = image.shape[2] * float(spacing_zyx[2])
    bar_mm = bar_length_mm(width_mm)
    for z in slices:
        picture = case_figure(image, None, label, spacing_zyx, colours, modality, direction, z)
        panel = (picture.shape[1] - GAP) // 2
        mm_per_pixel = width_mm / panel  # columns: what _square_pixels made of the slice
        pixels = draw_scale_bar(picture[:, :panel], mm_per_pixel, bar_mm)
        yield {
            "z": z,
            "picture": picture,
            "bar_mm": bar_mm,
            "bar_pixels": pixels,
            "mm_per_pixel": mm_per_pixel,
            "busiest": z == busiest,
            "what": what,
        }


def report_modality(settings: dict) -> str:
    """The window's modality: "CT" where the bundle's plan normalises the first channel as CT,
    "other" where it does not, else the bundle's first modality; "CT" when the bundle is gone
    (window still tells HU from other values)."""
    from tumorfm.model.bundle import read_bundle_config

    try:
        meta = read_bundle_config(settings["bundle"])
    except (TumorFMError, KeyError, TypeError, OSError):
        return "CT"
    plans = (meta.get("plan") or {}).get("datasets") or {}
    schemes = (plans.get(settings.get("plan")) or {}).get("normalization_schemes")
    if schemes:
        return "CT" if schemes[0] == "ct" else "other"
    return str((meta.get("modalities") or ["CT"])[0])


def _case_statistics(entry: dict) -> dict | None:
    """A case's statistics: in its predict.json entry, else its CASE_statistics.json."""
    if isinstance(entry.get("statistics"), dict):
        return entry["statistics"]
    path = (entry.get("files") or {}).get("statistics")
    if path and Path(path).is_file():
        return read_json_object(Path(path), "the statistics of a case")
    return None


def _labels(folder: Path, settings: dict) -> dict[str, int]:
    """Class name -> label value: dataset.json beside the label maps, else the run's settings."""
    path = folder / "dataset.json"
    labels = read_json_object(path, "the label values").get("labels") if path.is_file() else None
    labels = labels or settings.get("labels") or {}
    return {str(name): int(value) for name, value in labels.items() if int(value) > 0}


def _caption(figure: dict, depth: int, stats: dict | None, lesion_names: list[str]) -> str:
    parts = [f"z = {figure['z']} of {depth}"]
    if figure["busiest"]:
        parts.append("most lesion voxels" if figure["what"] == "lesions" else "most voxels")
    for name in lesion_names:
        if ((stats or {}).get(name) or {}).get("axial_slice") == figure["z"]:
            parts.append(f"RECIST slice of {name}")
    parts.append(f"bar = {figure['bar_mm']} mm")
    return " \u00b7 ".join(parts)


def _pictures(case_id, entry, labels, lesion_names, colours, modality, stats, folder) -> dict:
    """A segmented case's section: statistics table, figures (or why it is not drawn) and its
    viewer page."""
    from tumorfm.data.io import read_volume
    from tumorfm.data.orient import Orientation

    section = {"case_id": case_id}
    if stats:
        section["table"] = (STATISTICS_HEADER, statistics_rows(stats))
    try:
        scan = read_volume(entry["input"][0])
        label = read_volume(entry["files"]["label"]).array
    except (TumorFMError, OSError, KeyError, IndexError, RuntimeError) as error:
        return {**section, "failed": f"not drawn: {error}"}
    image = scan.array if scan.array.ndim == 3 else scan.array[0]  # the first channel
    if image.shape != label.shape:
        return {**section, "failed": f"not drawn: scan {image.shape}, label map {label.shape}"}
    axial = Orientation.of(scan.geometry)  # a sagittal scan is drawn axial too
    image, label = axial.to_axial(image), axial.to_axial(label)
    geometry = axial.geometry(scan.geometry)
    lesion_values = [labels[name] for name in lesion_names]
    figures = prediction_figures(
        image, label, geometry.spacing_zyx, colours, lesion_values, modality, geometry.direction
    )
    section["figures"] = [
        {
            "picture": figure["picture"],
            "caption": _caption(figure, image.shape[0], stats, lesion_names),
            "alt": f"axial slice z = {figure['z']}, scan and prediction",
        }
        for figure in figures
    ]
    viewer_link(section, folder, entry["input"][0], [entry["files"]["label"]])
    return section


def report_from_prediction(
    folder: str | os.PathLike,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    modality: str | None = None,
) -> Path:
    """The HTML report (default FOLDER/report.html) of the prediction run in `folder`: a
    summary table, then per case its statistics and pictures, or what failed. `modality`
    ("CT" or other) overrides the window report_modality reads from the bundle."""
    folder = Path(folder)
    record = read_json_object(folder / "predict.json", "the record of a prediction run")
    settings, cases = record.get("settings") or {}, record.get("cases") or {}
    labels = _labels(folder, settings)
    lesion_names = [n for n in labels if n in set(settings.get("lesion_classes") or ())]
    colours = class_colours(max(labels.values(), default=1))
    modality = modality or report_modality(settings)
    statistics = {case: _case_statistics(entry) for case, entry in cases.items()}
    path = Path(path or folder / "report.html")
    pages = path.parent

    header = ["case", "outcome", *(f"{name} ml" for name in labels)]
    header += [f"{name} lesions" for name in lesion_names]
    rows = []
    for case, entry in cases.items():
        stats = statistics[case] or {}
        outcome = "failed" if "error" in entry else "segmented"
        rows.append(
            [case, outcome, *((stats.get(n) or {}).get("volume_ml") for n in labels)]
            + [(stats.get(n) or {}).get("lesions") for n in lesion_names]
        )

    def sections():
        for case, entry in cases.items():
            if "error" in entry:
                yield {"case_id": case, "failed": f"failed: {entry['error']}"}
            else:
                yield _pictures(
                    case, entry, labels, lesion_names, colours, modality, statistics[case], pages
                )

    window = (
        "CT soft-tissue window (level 40, width 400 HU) where the scan is in HU"
        if modality.upper() == "CT"
        else "grey levels: each slice's 0.5-99.5 percentiles"
    )
    notes = [
        f"model {settings.get('bundle', '?')}, plan {settings.get('plan', '?')}; "
        f"lesion classes: {', '.join(lesion_names) or 'none'}",
        f"left: the scan, right: the prediction; {window}",
        f"axial slices in the radiological view (the patient's right on the left, anterior at "
        f"the top); up to {SLICES} per case through the predicted lesions (else the other "
        f"structures, else the whole scan), z counted from 0 along the axial stack as the "
        f"statistics' RECIST slice is; the white bar bottom left is the length its caption gives",
        "no ground truth: the pictures show what the model found, not whether it is right",
    ]
    legend = [(name, colours[value - 1]) for name, value in labels.items()]
    title = title or f"tumorfm prediction of {record.get('input', folder)}"
    return write_report(path, title, rows, header, sections(), notes, legend)
