"""The plan grid: a scan cropped to its non-zero box, normalised, and resampled to the plan's
spacing, and the way back. Training (preprocess) and prediction (infer.predictor) both go
through `to_plan_grid`, so the network sees at prediction what it saw in training; the steps and
their order are nnU-Net's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tumorfm.data.fingerprint import crop_to_nonzero
from tumorfm.data.plan import Plan, compute_new_shape, determine_separate_z
from tumorfm.data.resample import resample_image, resample_labels, resample_probabilities


@dataclass(frozen=True)
class GridMap:
    """Where a scan went on its way to the plan grid: what the way back needs."""

    shape_before_cropping: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...]  # the non-zero box, (start, stop) per axis
    shape_after_cropping: tuple[int, ...]
    spacing: list[float]  # the scan's, z y x
    target_spacing: list[float]
    shape_after_resampling: tuple[int, ...]
    separate_axis: int | None  # resampled on its own (anisotropic scans), as nnU-Net does

    @property
    def region(self) -> tuple[slice, ...]:
        """The crop box in the scan."""
        return tuple(slice(lo, hi) for lo, hi in self.bbox)

    def back(self, probability: np.ndarray) -> np.ndarray:
        """One class's (Z, Y, X) probabilities on the plan grid -> on the cropped scan's grid."""
        return resample_probabilities(probability, self.shape_after_cropping, self.separate_axis)

    def properties(self) -> dict:
        """The cache's record of the way (tumorfm.data.cache.PROPERTIES)."""
        return {
            "shape_before_cropping": list(self.shape_before_cropping),
            "bbox_used_for_cropping": [list(b) for b in self.bbox],
            "shape_after_cropping": list(self.shape_after_cropping),
            "spacing": list(self.spacing),
            "target_spacing": list(self.target_spacing),
            "shape_after_resampling": list(self.shape_after_resampling),
            "separate_z_axis": self.separate_axis,
        }


def to_plan_grid(
    image: np.ndarray, spacing_zyx, plan: Plan, label: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, GridMap]:
    """(C, Z, Y, X) float32 scan (and its label map, global values) -> the network's input on
    the plan grid (and the label map there, int16), with the map of the way. The normalisation
    mask is nnU-Net's: inside the non-zero box, or labelled."""
    spacing = [float(s) for s in spacing_zyx]
    cropped, seg, bbox = crop_to_nonzero(image, label)
    normalised = normalise(cropped, seg >= 0, plan)
    target = [float(s) for s in plan.target_spacing_zyx]
    shape = tuple(compute_new_shape(cropped.shape[1:], spacing, target))
    separate_axis = determine_separate_z(spacing, target)
    grid = GridMap(
        tuple(image.shape[1:]), bbox, tuple(cropped.shape[1:]), spacing, target, shape,
        separate_axis,
    )  # fmt: skip
    del cropped  # a view; the normalised copy is what goes on
    resampled = resample_image(normalised, shape, separate_axis)
    del normalised
    if label is None:
        return resampled, None, grid
    resampled_label = resample_labels(np.maximum(seg, 0).astype(np.int16), shape, separate_axis)
    return resampled, resampled_label, grid


def ct_normalise(hu: np.ndarray, stats: dict, out: np.ndarray | None = None) -> np.ndarray:
    """nnU-Net's CT scheme: clip to the dataset's foreground 0.5-99.5th percentiles, z-score
    with its mean and std (tumorfm.synth.online undoes it and applies it again). The numbers
    as Python floats: a numpy float64 (a plan fresh from the fingerprint) would turn a float32
    scan's arithmetic to float64, and prediction (a plan read from JSON) would differ in the
    last bit. `out` (float32, `hu`'s shape): computed there in place, the same numbers with
    no temporaries (a 512x512 CT's are 100 MB each)."""
    low, high = float(stats["percentile_00_5"]), float(stats["percentile_99_5"])
    mean, std = float(stats["mean"]), max(float(stats["std"]), 1e-8)
    if out is None:
        return (np.clip(hu, low, high) - mean) / std
    np.clip(hu, low, high, out=out)
    out -= mean
    out /= std
    return out


def normalise(image: np.ndarray, mask: np.ndarray, plan: Plan) -> np.ndarray:
    """Per channel by modality: CT clip + dataset z-score; others per-image z-score."""
    out = np.empty_like(image, dtype=np.float32)
    for c, scheme in enumerate(plan.normalization_schemes):
        channel = image[c].astype(np.float32, copy=False)
        if scheme == "ct":
            ct_normalise(channel, plan.intensity_properties[c], out=out[c])
        elif plan.use_mask_for_norm[c]:
            inside = channel[mask]
            out[c] = 0.0
            out[c][mask] = (inside - inside.mean()) / max(float(inside.std()), 1e-8)
        else:
            out[c] = (channel - channel.mean()) / max(float(channel.std()), 1e-8)
    return out
