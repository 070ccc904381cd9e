"""Segmentation metrics for one binary mask pair (arrays in z, y, x order, spacing in mm).

Dice, HD95 and NSD follow MONAI exactly (compute_dice, compute_hausdorff_distance with
percentile=95, compute_surface_dice): a mask's surface is `mask XOR binary_erosion(mask)`
(6-neighbourhood; outside the image counts as background), distances are Euclidean in mm between
surface voxel centres, HD95 is the larger of the two directed 95th percentiles (linear
interpolation) and NSD is (pred surface within the tolerance of the gt surface + gt surface within
the tolerance of the pred surface) / (pred surface + gt surface), counted in voxels. Both masks are
first cropped to the bounding box of their union grown by one voxel: surfaces and distances stay
those of the full image, but a 512x512x100 scan then costs what its lesion costs.

Empty masks. MONAI 1.6 gives NaN for HD95 when one mask is empty, and by default NaN for Dice when
both are; tumorfm gives:
- both empty: Dice 1.0; HD95 and NSD NaN (undefined; left out of means and medians).
- exactly one empty: Dice 0.0, NSD 0.0 and HD95 = the diagonal of the image extent in mm
  (size x spacing per axis), longer than any distance inside the image (BraTS' convention:
  373.13 mm for 240x240x155 voxels of 1 mm).

Lesions are connected components (26-connectivity by default). A gt lesion is detected when a
predicted voxel overlaps it; a predicted component is a true positive when it overlaps the gt.
Counts, not ratios, are returned so they can be pooled over cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

CONVENTIONS = {
    "surface": "mask XOR binary_erosion(mask), 6-neighbourhood, outside the image is background",
    "distance": "Euclidean, mm, between surface voxel centres (MONAI's)",
    "hd95": "max of the two directed 95th percentiles (linear interpolation)",
    "nsd": "surface voxels within the tolerance of the other surface / all surface voxels",
    "both_empty": "Dice 1.0; HD95 and NSD NaN (left out of means and medians)",
    "one_empty": "Dice 0.0; NSD 0.0; HD95 = diagonal of the image extent in mm",
    "lesion": "connected component; gt lesion detected if any predicted voxel overlaps it; "
    "predicted component true positive if it overlaps the gt mask",
    "patient": "positive = the class has at least one voxel",
}

CONNECTIVITY = {6: 1, 18: 2, 26: 3}  # neighbours -> scipy's connectivity rank (3D)


def union_box(pred: np.ndarray, gt: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Bounding box of pred | gt grown by `margin` voxels, clipped to the image; None if empty."""
    union = pred | gt
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=other))
        if hits.size == 0:
            return None
        stop = min(int(hits[-1]) + 1 + margin, union.shape[axis])
        box.append(slice(max(int(hits[0]) - margin, 0), stop))
    return tuple(box)


def image_diagonal_mm(shape: Sequence[int], spacing_zyx: Sequence[float]) -> float:
    """The HD95 given when exactly one mask is empty: no distance in the image is longer."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing_zyx))))


def volume_ml(mask: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    return float(np.count_nonzero(mask) * np.prod(spacing_zyx) / 1000.0)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P & G| / (|P| + |G|); 1.0 when both are empty."""
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    total = np.count_nonzero(pred) + np.count_nonzero(gt)
    return 1.0 if total == 0 else float(2.0 * np.count_nonzero(pred & gt) / total)


def _edges(mask: np.ndarray) -> np.ndarray:
    return mask ^ ndimage.binary_erosion(mask)


def _directed(source: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance in mm from each `source` surface voxel to the nearest `target` surface voxel."""
    if not target.any():
        return np.full(np.count_nonzero(source), np.inf)
    return ndimage.distance_transform_edt(~target, sampling=spacing)[source]


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """(pred surface -> gt surface, gt surface -> pred surface) distances in mm.

    An empty mask has no surface: its own array is empty and the other one is all inf (MONAI's).
    """
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    box = union_box(pred, gt)
    if box is None:
        return np.zeros(0), np.zeros(0)
    edges_pred, edges_gt = _edges(pred[box]), _edges(gt[box])
    spacing = [float(s) for s in spacing_zyx]
    return _directed(edges_pred, edges_gt, spacing), _directed(edges_gt, edges_pred, spacing)


def surface_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_zyx: Sequence[float],
    tolerance_mm: float,
    empty_penalty_mm: float | None = None,
) -> tuple[float, float]:
    """(HD95, NSD) from one distance computation; `empty_penalty_mm` defaults to the diagonal."""
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return math.nan, math.nan
    if not has_pred or not has_gt:
        penalty = empty_penalty_mm
        return (image_diagonal_mm(pred.shape, spacing_zyx) if penalty is None else penalty), 0.0
    to_gt, to_pred = surface_distances(pred, gt, spacing_zyx)
    hd = max(np.percentile(to_gt, 95), np.percentile(to_pred, 95))
    within = np.count_nonzero(to_gt <= tolerance_mm) + np.count_nonzero(to_pred <= tolerance_mm)
    return float(hd), float(within / (to_gt.size + to_pred.size))


def hd95(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_zyx: Sequence[float],
    empty_penalty_mm: float | None = None,
) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (MONAI's; see the module docstring)."""
    return surface_metrics(pred, gt, spacing_zyx, 0.0, empty_penalty_mm)[0]


def nsd(
    pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float], tolerance_mm: float
) -> float:
    """Normalised surface Dice at `tolerance_mm` (MONAI's compute_surface_dice)."""
    return surface_metrics(pred, gt, spacing_zyx, tolerance_mm)[1]


@dataclass
class LesionCounts:
    """Lesion-wise detection counts of one class; add them over cases, then take the ratios."""

    gt_lesions: int = 0
    detected: int = 0
    pred_lesions: int = 0
    true_positive_pred: int = 0

    def __add__(self, other: LesionCounts) -> LesionCounts:
        return LesionCounts(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, int, int, int]:
        return self.gt_lesions, self.detected, self.pred_lesions, self.true_positive_pred

    @property
    def sensitivity(self) -> float:
        return self.detected / self.gt_lesions if self.gt_lesions else math.nan

    @property
    def precision(self) -> float:
        return self.true_positive_pred / self.pred_lesions if self.pred_lesions else math.nan

    @property
    def f1(self) -> float:
        """2PR/(P+R); 0.0 when only one side has lesions, NaN when neither has any."""
        if not self.gt_lesions and not self.pred_lesions:
            return math.nan
        p = self.precision if self.pred_lesions else 0.0
        r = self.sensitivity if self.gt_lesions else 0.0
        return 2 * p * r / (p + r) if p + r else 0.0

    def summary(self) -> dict:
        ratios = {"sensitivity": self.sensitivity, "precision": self.precision, "f1": self.f1}
        return asdict(self) | ratios


def _components(mask: np.ndarray, structure: np.ndarray, min_voxels: float) -> tuple:
    """Labelled components of `mask` (those smaller than `min_voxels` removed) and their count."""
    labels, count = ndimage.label(mask, structure)
    if min_voxels > 0 and count:
        keep = np.bincount(labels.ravel(), minlength=count + 1) >= min_voxels
        keep[0] = False
        labels = (np.cumsum(keep) * keep)[labels]
        count = int(keep.sum())
    return labels, count


def lesion_counts(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_zyx: Sequence[float] | None = None,
    connectivity: int = 26,
    min_volume_ml: float = 0.0,
) -> LesionCounts:
    """Lesion-wise detection counts; components under `min_volume_ml` are dropped from both."""
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity must be one of {sorted(CONNECTIVITY)}, got {connectivity}")
    if min_volume_ml > 0 and spacing_zyx is None:
        raise ValueError("min_volume_ml needs spacing_zyx")
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    box = union_box(pred, gt)
    if box is None:
        return LesionCounts()
    structure = ndimage.generate_binary_structure(pred.ndim, CONNECTIVITY[connectivity])
    min_voxels = min_volume_ml * 1000.0 / float(np.prod(spacing_zyx)) if min_volume_ml > 0 else 0
    gt_labels, n_gt = _components(gt[box], structure, min_voxels)
    pred_labels, n_pred = _components(pred[box], structure, min_voxels)
    detected = np.unique(gt_labels[pred_labels > 0])
    hits = np.unique(pred_labels[gt_labels > 0])
    return LesionCounts(n_gt, int(np.count_nonzero(detected)), n_pred, int(np.count_nonzero(hits)))


def patient_detection(gt_positive: Sequence[bool], pred_positive: Sequence[bool]) -> dict:
    """Case-level detection (DiffTumor's): is the class there at all? Sensitivity, specificity."""
    gt_pos, pred_pos = np.asarray(gt_positive, bool), np.asarray(pred_positive, bool)
    tp, fn = int(np.sum(gt_pos & pred_pos)), int(np.sum(gt_pos & ~pred_pos))
    tn, fp = int(np.sum(~gt_pos & ~pred_pos)), int(np.sum(~gt_pos & pred_pos))
    return {
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
        "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
    }


def score(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_zyx: Sequence[float],
    tolerance_mm: float,
    empty_penalty_mm: float | None = None,
    connectivity: int = 26,
    min_lesion_ml: float = 0.0,
) -> dict:
    """Every per-case number of one class: Dice, HD95, NSD, volumes (ml), lesion counts."""
    pred, gt = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    hd, surface_dice = surface_metrics(pred, gt, spacing_zyx, tolerance_mm, empty_penalty_mm)
    lesions = lesion_counts(pred, gt, spacing_zyx, connectivity, min_lesion_ml)
    return {
        "dice": dice(pred, gt),
        "hd95": hd,
        "nsd": surface_dice,
        "tolerance_mm": tolerance_mm,
        "pred_ml": volume_ml(pred, spacing_zyx),
        "gt_ml": volume_ml(gt, spacing_zyx),
    } | asdict(lesions)


def _stats(values: list[float]) -> dict:
    """Mean, std (population), median over the defined values, and how many were defined."""
    kept = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if kept.size == 0:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "n": 0}
    mean, std, median = kept.mean(), kept.std(), np.median(kept)
    return {"mean": float(mean), "std": float(std), "median": float(median), "n": int(kept.size)}


def summarize(rows: list[dict]) -> dict:
    """One class over cases, from `score` rows: Dice/HD95/NSD statistics (NaN left out), pooled
    lesion-wise detection and patient-level detection."""
    lesions = sum(
        (LesionCounts(*(r[f.name] for f in fields(LesionCounts))) for r in rows), LesionCounts()
    )
    tolerance = rows[0]["tolerance_mm"] if rows else math.nan
    return {
        "cases": len(rows),
        "dice": _stats([r["dice"] for r in rows]),
        "hd95": _stats([r["hd95"] for r in rows]),
        "nsd": _stats([r["nsd"] for r in rows]) | {"tolerance_mm": tolerance},
        "lesions": lesions.summary(),
        "patient": patient_detection(
            [r["gt_ml"] > 0 for r in rows], [r["pred_ml"] > 0 for r in rows]
        ),
    }
