"""`tumorfm model calibrate`: each class's decision threshold, chosen on labelled scans and stored
in the bundle that predicted them.

A network trained briefly ranks voxels better than it places the line between them: at 0.5 the
shipped bundle's sarcomas are too large, and more so on new scans than on its training scans. As
nnU-Net chooses its post-processing on cross-validation and never on test scans, the threshold of
each class here is the one of GRID with the best mean Dice over the scans given (their
probabilities from `predict --save-probabilities`, scored in their own geometry), ties going to
the one nearest 0.5. Scans the model never trained on are best; its training scans work (the
shipped bundle had no others to spare) but flatter it. Predict, refine, view and the interactive
local thresholds then start from the stored threshold (tumorfm.infer.predictor.stored_thresholds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

import tumorfm
from tumorfm.data.formats import label_names
from tumorfm.defaults import DECISION_THRESHOLD
from tumorfm.errors import TumorFMError
from tumorfm.eval.evaluate import _read_label_map, match_cases
from tumorfm.files import read_json_object, write_json
from tumorfm.model.bundle import CONFIG, bundle_folder, read_bundle_config

GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 ... 0.95
DEFAULT = DECISION_THRESHOLD


def threshold_counts(probability: np.ndarray, reference: np.ndarray) -> tuple:
    """For every t of GRID, the voxels with `probability >= t` and how many of them `reference`
    holds; and the size of `reference`. Two histograms: one pass over the voxels, not one per t."""
    p = np.asarray(probability, dtype=np.float32).ravel()
    reference = np.asarray(reference, bool).ravel()
    edges = np.array([*GRID, np.inf], dtype=np.float32)
    above = np.histogram(p, edges)[0][::-1].cumsum()[::-1]
    hits = np.histogram(p[reference], edges)[0][::-1].cumsum()[::-1]
    return above, hits, int(np.count_nonzero(reference))


def dice_per_threshold(probability: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Dice of `probability >= t` against `reference` for every t of GRID; 1 where both masks
    are empty."""
    return _dice(*threshold_counts(probability, reference))


def _dice(above: np.ndarray, hits: np.ndarray, size: int) -> np.ndarray:
    total = above + size
    return np.where(total > 0, 2.0 * hits / np.maximum(total, 1), 1.0)


def best_threshold(mean_dice: np.ndarray) -> float:
    """The threshold of GRID with the highest mean Dice; of equals, the one nearest 0.5."""
    best = mean_dice.max()
    ties = [t for t, d in zip(GRID, mean_dice) if d >= best - 1e-12]
    return min(ties, key=lambda t: abs(t - DEFAULT))


def _prediction_run(predictions: Path) -> dict:
    record = predictions / "predict.json"
    if not record.is_file():
        raise TumorFMError(f"{predictions}: no predict.json; give a folder `tumorfm predict` wrote")
    run = read_json_object(record, "the record of a prediction run")
    settings = run.get("settings") or {}
    if not (settings.get("outputs") or {}).get("probabilities"):
        raise TumorFMError(
            f"{record}: predicted without probabilities; predict again with --save-probabilities"
        )
    return run


def _probabilities(run: dict, case: str, where: Path) -> tuple[np.ndarray, list[str]]:
    files = ((run.get("cases") or {}).get(case) or {}).get("files") or {}
    # beside the label maps, by its name: the folder may have moved since predict wrote it
    path = where / Path(files.get("probabilities", f"{case}_probabilities.npz")).name
    if not path.is_file():
        raise TumorFMError(f"{path}: missing; predict again with --save-probabilities")
    try:
        with np.load(path) as npz:
            return npz["probabilities"], [str(c) for c in npz["classes"]]
    except (OSError, ValueError, KeyError) as error:
        raise TumorFMError(
            f"{path}: not a probabilities file of tumorfm predict ({error})"
        ) from None


def _rounded(value) -> float | None:
    return None if value is None else round(float(value), 3)


def reference_values(predicted: dict[str, int], gt_names, mapping: dict, where: str) -> dict:
    """Each predicted class's value in the reference label maps, as `tumorfm evaluate` pairs
    them: by name where the labels' dataset.json names classes (--map pairs other names), else by
    value."""
    unknown = [name for name in mapping if name not in predicted]
    if unknown:
        raise TumorFMError(
            f"--map {unknown[0]}: the predictions hold no class '{unknown[0]}' "
            f"({', '.join(predicted)})"
        )
    if not gt_names:
        return dict(predicted)
    by_name = {name: value for value, name in gt_names.items() if value}
    values = {}
    for name in predicted:
        wanted = mapping.get(name, name)
        if wanted not in by_name:
            raise TumorFMError(
                f"{where}: the labels name no class '{wanted}' ({', '.join(by_name)}); "
                f"pair it with --map {name}=CLASS"
            )
        values[name] = by_name[wanted]
    return values


def calibrate(
    predictions: str | Path, labels: str | Path, mapping: dict[str, str] | None = None,
    write: bool = True,
) -> dict:  # fmt: skip
    """Choose each predicted class's threshold on `predictions` (a `predict --save-probabilities`
    folder) against `labels`; with `write`, store it in the bundle that predicted them and write
    calibration.json beside the predictions. Returns that record."""
    predictions, labels = Path(predictions), Path(labels)
    run = _prediction_run(predictions)
    settings = run["settings"]
    folder = bundle_folder(settings.get("bundle") or "")
    plan = settings.get("plan")
    meta = read_bundle_config(folder)
    jobs = match_cases(predictions, labels)
    gt_json, gt_names = label_names(labels, parents=1)
    predicted = dict(settings.get("labels") or {})
    values = reference_values(predicted, gt_names, mapping or {}, str(gt_json or labels))
    curves: dict[str, list] = {name: [] for name in predicted}
    ratios: dict[str, list] = {name: [] for name in predicted}  # predicted / reference volume
    for case, _, gt_path in tqdm(jobs, desc="calibrate", unit="scan", disable=None):
        probabilities, order = _probabilities(run, case, predictions)
        reference, _ = _read_label_map(gt_path)
        if reference.shape != probabilities.shape[1:]:
            raise TumorFMError(
                f"{gt_path}: grid {reference.shape} differs from the prediction's "
                f"{probabilities.shape[1:]}; predict the scans these labels belong to"
            )
        for name, curve in curves.items():
            if name not in order:
                raise TumorFMError(f"{case}: its probabilities hold no class '{name}'")
            counts = threshold_counts(probabilities[order.index(name)], reference == values[name])
            curve.append(_dice(*counts))
            if counts[2]:  # the reference holds the class
                ratios[name].append(counts[0] / counts[2])
    options = settings.get("options") or {}
    record = {
        "tumorfm": tumorfm.__version__,
        "bundle": str(folder),
        "plan": plan,
        "predictions": str(predictions),
        "labels": str(labels),
        "reference_values": values,
        "mirror": options.get("mirror"),
        "grid": list(GRID),
        "classes": {},
    }
    for name, curve in curves.items():
        mean = np.mean(curve, axis=0)
        chosen = best_threshold(mean)
        volume = np.median(ratios[name], axis=0) if ratios[name] else [None] * len(GRID)
        at = GRID.index(chosen), GRID.index(DEFAULT)
        record["classes"][name] = {
            "threshold": chosen,
            "cases": len(curve),
            "mean_dice": round(float(mean[at[0]]), 4),
            "mean_dice_at_0.5": round(float(mean[at[1]]), 4),
            "median_volume_ratio": _rounded(volume[at[0]]),  # None: every reference empty
            "median_volume_ratio_at_0.5": _rounded(volume[at[1]]),
            "mean_dice_per_threshold": [round(float(d), 4) for d in mean],
        }
    if write:
        extra = meta.setdefault("extra", {})
        chosen = {name: c["threshold"] for name, c in record["classes"].items()}
        extra.setdefault("thresholds", {}).setdefault(plan, {}).update(chosen)
        extra.setdefault("calibration", {}).setdefault(plan, {}).update({
            name: {k: c[k] for k in ("cases", "mean_dice", "mean_dice_at_0.5",
                                      "median_volume_ratio", "median_volume_ratio_at_0.5")}
            | {"mirror": record["mirror"]}
            for name, c in record["classes"].items()
        })  # fmt: skip
        for path, data in ((predictions / "calibration.json", record), (folder / CONFIG, meta)):
            try:
                write_json(path, data)
            except OSError as error:  # a shipped bundle in a read-only install, say
                raise TumorFMError(f"{path}: cannot write ({error.strerror})") from None
    return record
