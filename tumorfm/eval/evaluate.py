"""`tumorfm evaluate`: score predicted label maps against the ground truth, per case and class.

Pred and gt are two label-map files or two folders matched by case name (the file name without its
extension, so case_001.nrrd meets case_001.nii.gz). Classes are matched by name when both sides
have a dataset.json naming their labels (values may differ), otherwise by label value. Every class
of every case gets Dice, HD95, NSD, volumes and lesion counts (conventions in tumorfm.eval.metrics);
every class gets means and medians over cases, pooled lesion-wise and patient-level detection.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
from scipy import ndimage

import tumorfm
from tumorfm.data.formats import label_names
from tumorfm.data.io import VOLUME_SUFFIXES, Geometry, read_volume, volume_suffix
from tumorfm.errors import TumorFMError
from tumorfm.eval import metrics
from tumorfm.eval.tables import csv_text, format_summary, json_safe
from tumorfm.files import ensure_writable, write_json, write_text
from tumorfm.parallel import run_parallel

EMPTY = np.zeros((1, 1, 1), bool)  # a class neither mask holds: scored as two empty masks


@dataclass(frozen=True)
class ClassSpec:
    """One class to score: its name and its label value on each side."""

    name: str
    pred_value: int
    gt_value: int


def _case_name(path: Path) -> str:
    return path.name[: -len(volume_suffix(path) or "")] or path.name


def _label_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or volume_suffix(path) is None:
            continue
        name = _case_name(path)
        if name in files:
            raise TumorFMError(f"{path}: case '{name}' is also {files[name].name}; keep one")
        files[name] = path
    if not files:
        raise TumorFMError(f"{folder}: no label maps ({', '.join(VOLUME_SUFFIXES)}) in this folder")
    return files


def _listing(names: list[str]) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > 10 else ""
    return ", ".join(names[:10]) + more


def match_cases(
    pred: Path, gt: Path, only: list[str] | None = None, chill: bool = False
) -> list[tuple[str, Path, Path]]:
    """(case, pred file, gt file) for every gt case (or those in `only`); a gt case without
    prediction is an error, or left out with `chill` (nnU-Net's --chill), saying how many."""
    for path in (pred, gt):
        if not path.exists():
            raise TumorFMError(f"{path}: no such file or folder")
    if pred.is_dir() != gt.is_dir():
        raise TumorFMError(f"{pred}, {gt}: give two label-map files or two folders")
    if not pred.is_dir():
        return [(_case_name(gt), pred, gt)]
    preds, gts = _label_files(pred), _label_files(gt)
    if only is not None:
        unknown = sorted(set(only) - set(gts))
        if unknown:
            raise TumorFMError(f"{gt}: no ground truth for case(s) {_listing(unknown)}")
        gts = {name: gts[name] for name in only}
    missing = sorted(set(gts) - set(preds))
    if missing and not chill:
        raise TumorFMError(
            f"{pred}: no prediction for ground-truth case(s) {_listing(missing)} "
            "(--chill scores the cases that have one)"
        )
    if missing:
        if len(missing) == len(gts):
            raise TumorFMError(f"{pred}: no prediction for any ground-truth case of {gt}")
        print(
            f"tumorfm: scoring {len(gts) - len(missing)} of {len(gts)} ground-truth cases "
            f"(--chill: {len(missing)} without prediction)",
            file=sys.stderr,
        )
        gts = {name: path for name, path in gts.items() if name not in missing}
    extra = sorted(set(preds) - set(gts))
    if extra:
        print(
            f"tumorfm: warning: {pred}: ignoring {len(extra)} prediction(s) without ground truth "
            f"in {gt}: {_listing(extra)}",
            file=sys.stderr,
        )
    return [(name, preds[name], gts[name]) for name in sorted(gts)]


def resolve_classes(
    pred_names: dict[int, str] | None,
    gt_names: dict[int, str] | None,
    labels: list[str | int] | None,
    where: str,
) -> list[ClassSpec] | None:
    """Classes by name when both sides name them, else by value; None: every value found."""
    if pred_names and gt_names:
        pred_value = {n: v for v, n in pred_names.items() if v}
        known = [
            ClassSpec(n, pred_value[n], v)
            for v, n in sorted(gt_names.items())
            if v and n in pred_value
        ]
        if not known:
            raise TumorFMError(
                f"{where}: the two dataset.json files name no common class (prediction: "
                f"{', '.join(pred_value)}; ground truth: "
                f"{', '.join(n for v, n in sorted(gt_names.items()) if v)}); "
                "pair them with --map PRED_CLASS=GT_CLASS"
            )
    elif labels:  # by value, named where a dataset.json names the value
        table = (pred_names or {}) | (gt_names or {})
        values = sorted(set(table) | {int(x) for x in map(str, labels) if x.isdigit()})
        known = [ClassSpec(table.get(v, str(v)), v, v) for v in values if v]
    else:
        return None
    by_key = {str(c.gt_value): c for c in known} | {c.name: c for c in known}
    unknown = [str(x) for x in labels or [] if str(x) not in by_key]
    if unknown:
        names = ", ".join(c.name for c in known if c.name != str(c.gt_value))
        hint = f"named classes: {names}" if names else "no dataset.json names any; give values"
        raise TumorFMError(f"{where}: no class {', '.join(unknown)} to score ({hint})")
    return list(dict.fromkeys(by_key[str(x)] for x in labels)) if labels else known


def _mapped(
    pred_names: dict[int, str] | None, gt_names: dict[int, str] | None, mapping: dict, where: str
) -> dict[int, str] | None:
    """The prediction's class names with `mapping` (PRED_CLASS -> GT_CLASS) applied."""
    if not mapping:
        return pred_names
    if not pred_names or not gt_names:
        raise TumorFMError(f"{where}: --map needs a dataset.json naming the classes on both sides")
    for name, other in mapping.items():
        for side, wanted, known in (
            ("prediction", name, pred_names),
            ("ground truth", other, gt_names),
        ):
            if wanted not in known.values():
                names = ", ".join(n for v, n in sorted(known.items()) if v)
                raise TumorFMError(
                    f"--map {name}={other}: the {side} has no class '{wanted}' ({names})"
                )
    return {value: mapping.get(name, name) for value, name in pred_names.items()}


def parse_tolerances(items: list[str]) -> dict[str, float]:
    """NAME=MM items (the CLI's --tolerance) as {name: mm}."""
    out = {}
    for item in items:
        name, _, mm = item.rpartition("=")
        try:
            out[name] = float(mm)
        except ValueError:
            name = ""
        if not name or not math.isfinite(out[name]) or out[name] < 0:
            raise TumorFMError(f"--tolerance '{item}': expected NAME=MM with MM >= 0, e.g. liver=2")
    return out


def _check_tolerances(tolerances: dict[str, float], classes: list[ClassSpec]) -> None:
    unknown = sorted(set(tolerances) - {c.name for c in classes})
    if unknown:
        known = ", ".join(c.name for c in classes)
        raise TumorFMError(f"--tolerance {', '.join(unknown)}: no such class (classes: {known})")


def _read_label_map(path: Path) -> tuple[np.ndarray, Geometry]:
    volume = read_volume(path)
    array = volume.array
    if array.ndim != 3:
        raise TumorFMError(f"{path}: expected a 3D label map, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and not np.all(array == np.round(array)):
            raise TumorFMError(f"{path}: not a label map (non-integer values)")
        array = array.astype(np.int32)
    if array.min() < 0:
        raise TumorFMError(f"{path}: not a label map (negative value {array.min()})")
    return array, volume.geometry


def _box(boxes: list, value: int) -> tuple[slice, ...] | None:
    return boxes[value - 1] if 0 < value <= len(boxes) else None


def _score_case(options: dict, job: tuple[str, Path, Path]) -> dict:
    """Read one pred/gt pair and score every class (in a worker process)."""
    case, pred_file, gt_file = job
    pred, pred_geometry = _read_label_map(pred_file)
    gt, gt_geometry = _read_label_map(gt_file)
    if not pred_geometry.close_to(gt_geometry):
        difference = pred_geometry.difference_text(gt_geometry)
        raise TumorFMError(
            f"{pred_file}: geometry differs from the ground truth {gt_file} ({difference})"
        )
    spacing = gt_geometry.spacing_zyx
    penalty = metrics.image_diagonal_mm(gt.shape, spacing)
    pred_boxes, gt_boxes = ndimage.find_objects(pred), ndimage.find_objects(gt)
    classes = options["classes"] or [
        ClassSpec(options["names"].get(v, str(v)), v, v)
        for v in range(1, max(len(pred_boxes), len(gt_boxes)) + 1)
        if _box(pred_boxes, v) or _box(gt_boxes, v)
    ]
    scores, present = {}, []
    for spec in classes:
        boxes = [b for b in (_box(pred_boxes, spec.pred_value), _box(gt_boxes, spec.gt_value)) if b]
        present += [spec.name] if boxes else []
        # the union of the two bounding boxes holds both masks: cropping to it changes no metric
        box = tuple(slice(min(s.start for s in a), max(s.stop for s in a)) for a in zip(*boxes))
        p, g = (pred[box] == spec.pred_value, gt[box] == spec.gt_value) if boxes else (EMPTY, EMPTY)
        tolerance = options["tolerances"].get(spec.name, options["default_tolerance_mm"])
        scores[spec.name] = metrics.score(p, g, spacing, tolerance, penalty, **options["lesions"])
    return {
        "case": case,
        "pred": str(pred_file),
        "gt": str(gt_file),
        "spacing_zyx": [float(s) for s in spacing],
        "classes": [asdict(spec) for spec in classes],  # dropped once every case is in
        "present": present,  # so is this: the classes either map holds
        "scores": scores,
    }


def default_output(pred: Path) -> Path:
    """PRED/evaluation for a folder, <case>_evaluation beside a single file."""
    pred = Path(pred)
    return pred / "evaluation" if pred.is_dir() else pred.parent / f"{_case_name(pred)}_evaluation"


def evaluate(
    pred: str | os.PathLike,
    gt: str | os.PathLike,
    out: str | os.PathLike | None = None,
    labels: list[str | int] | None = None,
    tolerances: dict[str, float] | None = None,
    default_tolerance_mm: float = 2.0,
    workers: int = 1,
    progress: bool = True,
    connectivity: int = 26,
    min_lesion_ml: float = 0.0,
    cases: list[str] | None = None,
    mapping: dict[str, str] | None = None,
    chill: bool = False,
) -> dict:
    """Score `pred` against `gt`; write metrics.json, metrics.csv and summary.md into `out`.

    Returns {"settings", "aggregates": {class: ...}, "cases": [...]} with NaN where a metric is
    undefined (null in metrics.json, empty in metrics.csv).
    """
    pred, gt = Path(pred), Path(gt)
    tolerances = dict(tolerances or {})
    jobs = match_cases(pred, gt, cases, chill)
    pred_json, pred_names = label_names(pred)
    gt_json, gt_names = label_names(gt, parents=1)
    where = f"{pred_json or pred}, {gt_json or gt}"
    pred_names = _mapped(pred_names, gt_names, mapping or {}, where)
    classes = resolve_classes(pred_names, gt_names, labels, where)
    if classes is not None:
        _check_tolerances(tolerances, classes)
    options = {
        "classes": classes,
        "names": (pred_names or {}) | (gt_names or {}),
        "tolerances": tolerances,
        "default_tolerance_mm": default_tolerance_mm,
        "lesions": {"connectivity": connectivity, "min_lesion_ml": min_lesion_ml},
    }
    cases = run_parallel(partial(_score_case, options), jobs, workers, "evaluate", progress)
    if classes is None:  # every value found in any case
        found = {c["name"]: ClassSpec(**c) for case in cases for c in case["classes"]}
        classes = sorted(found.values(), key=lambda c: c.gt_value)
        if not classes:
            raise TumorFMError(f"{where}: nothing to score: every label map is empty")
        _check_tolerances(tolerances, classes)
    tolerance_of = {c.name: tolerances.get(c.name, default_tolerance_mm) for c in classes}
    present = {name for case in cases for name in case.pop("present")}
    absent = [c.name for c in classes if c.name not in present]
    if labels and absent:  # asked for by the user, and in no map: scored as "both empty" = 1
        raise TumorFMError(f"--labels {', '.join(absent)}: no label map holds this class")
    for case in cases:
        del case["classes"]
        scores = case["scores"]  # a class neither mask holds is scored as two empty masks
        case["scores"] = {
            c.name: scores.get(c.name) or metrics.score(EMPTY, EMPTY, [1] * 3, tolerance_of[c.name])
            for c in classes
        }
    settings = {
        "pred": str(pred),
        "gt": str(gt),
        "matching": "name" if pred_names and gt_names else "value",
        "class_map": dict(mapping or {}),
        "cases_scored": len(cases),
        "chill": chill,
        "label_files": [str(path) if path else None for path in (pred_json, gt_json)],
        "classes": [asdict(c) | {"tolerance_mm": tolerance_of[c.name]} for c in classes],
        "default_tolerance_mm": default_tolerance_mm,
        "lesions": options["lesions"],
        "conventions": metrics.CONVENTIONS,
        "tumorfm": tumorfm.__version__,
    }
    aggregates = {c.name: metrics.summarize([k["scores"][c.name] for k in cases]) for c in classes}
    result = {"settings": settings, "aggregates": aggregates, "cases": cases}
    if out is not None:
        out = ensure_writable(Path(out))
        write_text(out / "metrics.csv", csv_text(result))
        write_text(out / "summary.md", format_summary(result))
        write_json(out / "metrics.json", json_safe(result))
    return result
