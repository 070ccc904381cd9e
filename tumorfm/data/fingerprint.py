"""Dataset fingerprint, as nnU-Net v2's DatasetFingerprintExtractor makes it: crop to the
non-zero region, then spacings, shapes and the foreground intensity statistics that CT
normalisation needs.

Arrays are (c, z, y, x) / (z, y, x) and spacings are in array (zyx) order, like nnU-Net's
internal representation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import binary_fill_holes

FOREGROUND_SAMPLES_TOTAL = 10e7  # voxels sampled for intensity statistics, whole dataset
PERCENTILES = (0.5, 50.0, 99.5)


def nonzero_mask(images: np.ndarray) -> np.ndarray:
    """Voxels where any channel is non-zero, holes filled: the body region nnU-Net crops to."""
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (C, Z, Y, X) or (C, Y, X), got shape {images.shape}")
    return binary_fill_holes(np.any(images != 0, axis=0))


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Half-open bounding box of a mask; the whole array if the mask is empty (as nnU-Net)."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append((int(hits[0]), int(hits[-1]) + 1) if hits.size else (0, mask.shape[axis]))
    return tuple(box)


def crop_to_nonzero(
    images: np.ndarray, label: np.ndarray | None = None, outside_value: int = -1
) -> tuple[np.ndarray, np.ndarray | None, tuple[tuple[int, int], ...]]:
    """Crop images (and label) to the bounding box of ``nonzero_mask``, like nnU-Net.

    The returned label has ``outside_value`` (-1) where it was background and outside the
    non-zero mask: preprocessing uses ``label >= 0`` as the mask for ``use_mask_for_norm``.
    Without a label, that 0 / -1 mask is returned in its place (int8), as nnU-Net does at
    inference. The input label is not modified.
    """
    mask = nonzero_mask(images)
    bbox = bounding_box(mask)
    region = tuple(slice(lo, hi) for lo, hi in bbox)
    mask = mask[region]
    cropped = images[(slice(None), *region)]
    if label is None:
        return cropped, np.where(mask, np.int8(0), np.int8(outside_value)), bbox
    # a signed dtype so that -1 survives (uint8 labels would wrap)
    out = label[region].astype(np.result_type(label.dtype, np.int8), copy=True)
    out[(out == 0) & ~mask] = outside_value
    return cropped, out, bbox


def samples_per_case(num_cases: int) -> int:
    """Foreground voxels to sample per case: 10e7 over the whole dataset (nnU-Net's budget)."""
    return int(FOREGROUND_SAMPLES_TOTAL // num_cases)


def _intensity_stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return dict.fromkeys(
            ["mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5"],
            float("nan"),
        )
    p00_5, median, p99_5 = np.percentile(values, PERCENTILES)
    return {
        "mean": float(np.mean(values)),
        "median": float(median),
        "std": float(np.std(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "percentile_99_5": float(p99_5),
        "percentile_00_5": float(p00_5),
    }


@dataclass
class CaseFingerprint:
    """What nnU-Net's fingerprint extractor records for one training case (after cropping)."""

    spacing_zyx: tuple[float, ...]
    shape_before_crop: tuple[int, ...]
    shape_after_crop: tuple[int, ...]
    relative_size_after_cropping: float
    bbox: tuple[tuple[int, int], ...]
    foreground_samples: list[np.ndarray]  # per channel, sampled with replacement
    foreground_stats: list[dict[str, float]]  # per channel, over all foreground voxels
    # per channel (lowest value, counts per integer value) when intensities are integers (CT);
    # such a channel draws no samples: its statistics come from every foreground voxel
    foreground_histograms: list[tuple[int, np.ndarray] | None] = field(default_factory=list)
    num_samples: int = 0


def _integer_histogram(pixels: np.ndarray) -> tuple[int, np.ndarray] | None:
    """Counts per value when every intensity is an integer (CT in HU) over a modest range."""
    if pixels.size == 0 or not np.array_equal(pixels, np.round(pixels)):
        return None
    low, high = int(pixels.min()), int(pixels.max())
    if high - low > 1 << 20:
        return None
    return low, np.bincount((pixels - low).astype(np.int64), minlength=high - low + 1)


def fingerprint_case(
    images: np.ndarray,
    label: np.ndarray,
    spacing_zyx,
    num_samples: int,
    seed: int = 1234,
    exact_integers: bool = True,
) -> CaseFingerprint:
    """Crop, then sample foreground (label > 0) intensities per channel, like nnU-Net.

    Images are taken as float32 because nnU-Net's readers hand float32 to the extractor; with
    the same seed and sampling call the samples are then the very ones nnU-Net draws. With
    ``exact_integers``, integer-valued channels (CT) are counted instead of sampled: the
    statistics then weigh every case equally, as nnU-Net's equal per-case samples do, but without
    sampling noise and without shipping 10e7 samples between processes.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or label.shape != images.shape[1:]:
        raise ValueError(
            f"need images (C, Z, Y, X) and label (Z, Y, X); got {images.shape}, {label.shape}"
        )
    if np.isnan(images).any() or np.isnan(label).any():
        raise ValueError("images or label contain NaN")
    cropped, cropped_label, bbox = crop_to_nonzero(images, label)
    foreground = cropped_label > 0
    rng = np.random.RandomState(seed)  # nnU-Net's generator, so samples match its own
    samples, stats, histograms = [], [], []
    for channel in cropped:
        pixels = channel[foreground]
        histograms.append(_integer_histogram(pixels) if exact_integers else None)
        draw = pixels.size and histograms[-1] is None
        samples.append(
            rng.choice(pixels, num_samples, replace=True) if draw else np.empty(0, np.float32)
        )
        stats.append(_intensity_stats(pixels))
    return CaseFingerprint(
        spacing_zyx=tuple(float(s) for s in spacing_zyx),
        shape_before_crop=tuple(int(s) for s in images.shape[1:]),
        shape_after_crop=tuple(int(s) for s in cropped.shape[1:]),
        relative_size_after_cropping=float(np.prod(cropped.shape[1:]) / np.prod(images.shape[1:])),
        bbox=bbox,
        foreground_samples=samples,
        foreground_stats=stats,
        foreground_histograms=histograms,
        num_samples=num_samples,
    )


@dataclass
class DatasetFingerprint:
    """What planning needs; ``to_dict`` has the layout of nnU-Net's dataset_fingerprint.json."""

    spacings: list[tuple[float, ...]]
    shapes_after_crop: list[tuple[int, ...]]
    foreground_intensity_properties_per_channel: list[dict[str, float]]
    median_relative_size_after_cropping: float

    def to_dict(self) -> dict:
        props = self.foreground_intensity_properties_per_channel
        return {
            "spacings": [list(s) for s in self.spacings],
            "shapes_after_crop": [list(s) for s in self.shapes_after_crop],
            "foreground_intensity_properties_per_channel": {
                str(i): dict(p) for i, p in enumerate(props)
            },
            "median_relative_size_after_cropping": self.median_relative_size_after_cropping,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DatasetFingerprint:
        """Also reads nnU-Net's own dataset_fingerprint.json."""
        props = d["foreground_intensity_properties_per_channel"]
        if isinstance(props, dict):
            props = [props[k] for k in sorted(props, key=int)]
        return cls(
            [tuple(float(x) for x in s) for s in d["spacings"]],
            [tuple(int(x) for x in s) for s in d["shapes_after_crop"]],
            [{k: float(v) for k, v in p.items()} for p in props],
            float(d["median_relative_size_after_cropping"]),
        )


def _weighted_histogram_stats(
    histograms: list[tuple[int, np.ndarray]], per_case: int
) -> dict[str, float]:
    """nnU-Net's statistics of a sample of `per_case` voxels per case, computed exactly from
    counts: every case's histogram is scaled to `per_case` voxels (equal weight per case), and
    percentiles follow numpy's linear rule over the N = per_case * cases ordered values."""
    low = min(offset for offset, _ in histograms)
    high = max(offset + len(counts) - 1 for offset, counts in histograms)
    weights = np.zeros(high - low + 1, dtype=np.float64)
    for offset, counts in histograms:
        weights[offset - low : offset - low + len(counts)] += counts * (per_case / counts.sum())
    values = np.arange(low, high + 1, dtype=np.float64)
    total = weights.sum()
    mean = float((weights * values).sum() / total)
    std = float(np.sqrt((weights * (values - mean) ** 2).sum() / total))
    cumulative = np.cumsum(weights)
    present = values[weights > 0]

    def order_statistic(k: float) -> float:  # the k-th smallest (0-based) of the N values
        return float(
            values[min(int(np.searchsorted(cumulative, k, side="right")), len(values) - 1)]
        )

    def percentile(q: float) -> float:
        position = (total - 1) * q / 100
        below = np.floor(position)
        low_value, high_value = order_statistic(below), order_statistic(below + 1)
        return low_value + (position - below) * (high_value - low_value)

    p00_5, median, p99_5 = (percentile(q) for q in PERCENTILES)
    return {
        "mean": mean,
        "median": median,
        "std": std,
        "min": float(present[0]),
        "max": float(present[-1]),
        "percentile_99_5": p99_5,
        "percentile_00_5": p00_5,
    }


def _channel_stats(cases: list[CaseFingerprint], channel: int) -> dict[str, float]:
    histograms = [
        c.foreground_histograms[channel] if c.foreground_histograms else None for c in cases
    ]
    counted = [h for h in histograms if h is not None]
    sampled = [c.foreground_samples[channel] for c, h in zip(cases, histograms) if h is None]
    if counted and not any(s.size for s in sampled):
        return _weighted_histogram_stats(counted, max(c.num_samples for c in cases))
    # mixed: turn counts into a sample of the same size, as sampling with replacement would
    rng = np.random.RandomState(1234)
    for case, histogram in zip(cases, histograms):
        if histogram is not None:
            offset, counts = histogram
            draws = rng.multinomial(case.num_samples, counts / counts.sum())
            sampled.append(
                np.repeat(np.arange(offset, offset + len(counts), dtype=np.float32), draws)
            )
    return _intensity_stats(np.concatenate(sampled))


def aggregate_fingerprints(cases: list[CaseFingerprint]) -> DatasetFingerprint:
    """Pool the per-case samples per channel and summarise them (nnU-Net's dataset statistics)."""
    if not cases:
        raise ValueError("no cases to aggregate")
    num_channels = len(cases[0].foreground_samples)
    properties = [_channel_stats(cases, i) for i in range(num_channels)]
    return DatasetFingerprint(
        spacings=[c.spacing_zyx for c in cases],
        shapes_after_crop=[c.shape_after_crop for c in cases],
        foreground_intensity_properties_per_channel=properties,
        median_relative_size_after_cropping=float(
            np.median([c.relative_size_after_cropping for c in cases])
        ),
    )
