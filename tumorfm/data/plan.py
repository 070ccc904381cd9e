"""Dataset fingerprint and experiment plan, following nnU-Net v2's default planner.

Mirrors nnU-Net v2's ``DatasetFingerprintExtractor`` and ``ExperimentPlanner`` (3d_fullres,
PlainConvUNet VRAM estimate): the TSFM recipe assumes nnU-Net's spacing, patch and batch size.

Arrays are (c, z, y, x) / (z, y, x) and spacings are in array (zyx) order, like nnU-Net's
internal representation. All plan fields are in that array order; nnU-Net's own plan is in
"transposed" order (lowest-resolution axis first), which ``Plan.transpose_forward`` records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.ndimage import binary_fill_holes

ANISO_THRESHOLD = 3.0  # spacing ratio above which an axis counts as low-resolution
FOREGROUND_SAMPLES_TOTAL = 10e7  # voxels sampled for intensity statistics, whole dataset
PERCENTILES = (0.5, 50.0, 99.5)

# PlainConvUNet defaults of nnU-Net's ExperimentPlanner. The reference value was calibrated by
# nnU-Net so that its estimate for batch size 2 fits in 8 GB of GPU memory.
BASE_FEATURES = 32
MAX_FEATURES_3D = 320
CONVS_PER_STAGE = 2
MIN_FEATURE_MAP_EDGE = 4
VRAM_REFERENCE_3D = 560_000_000
VRAM_REFERENCE_BATCH = 2
VRAM_REFERENCE_GB = 8.0
MIN_BATCH_SIZE = 2
MAX_DATASET_COVERED = 0.05  # one batch may not see more than 5% of the dataset's voxels

DATA_RESAMPLING = {"order": 3, "order_z": 0}
SEG_RESAMPLING = {"order": 1, "order_z": 0}
PROBABILITY_RESAMPLING = {"order": 1, "order_z": 0}


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


def _lowres_axes(spacing) -> list[int]:
    spacing = np.asarray(spacing, dtype=float)
    return [int(i) for i in np.flatnonzero(spacing.max() / spacing == 1)]  # ratio, as nnU-Net


def determine_separate_z(
    spacing_zyx, target_spacing_zyx, threshold: float = ANISO_THRESHOLD
) -> int | None:
    """The axis to resample on its own (order_z interpolation), or None for plain 3D resampling.

    nnU-Net's rule: if the current spacing is anisotropic (max/min > 3) its coarsest axis
    decides, else the target spacing's does; if two or three axes tie for coarsest, no axis is
    singled out (e.g. (0.24, 1.25, 1.25)) and the current spacing's tie is final.
    """
    for spacing in (spacing_zyx, target_spacing_zyx):
        if max(spacing) / min(spacing) > threshold:
            axes = _lowres_axes(spacing)
            return axes[0] if len(axes) == 1 else None
    return None


def compute_new_shape(shape, spacing, new_spacing) -> tuple[int, ...]:
    """Voxel shape after resampling from ``spacing`` to ``new_spacing``."""
    return tuple(round(s / n * k) for s, n, k in zip(spacing, new_spacing, shape))


def determine_target_spacing(
    fingerprint: DatasetFingerprint, threshold: float = ANISO_THRESHOLD
) -> tuple[float, ...]:
    """Median spacing, unless one axis is much coarser in spacing *and* voxel count.

    Then the median would interpolate thick slices too aggressively, so nnU-Net uses the 10th
    percentile of that axis, but never finer than the other axes (max(other) + 1e-5).
    """
    spacings = np.vstack(fingerprint.spacings)
    target = np.percentile(spacings, 50, axis=0)
    median_shape = np.percentile(np.vstack(fingerprint.shapes_after_crop), 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    max_other_spacing = max(target[i] for i in others)
    aniso_spacing = target[worst] > threshold * max_other_spacing
    aniso_voxels = median_shape[worst] * threshold < min(median_shape[i] for i in others)
    if aniso_spacing and aniso_voxels:
        coarse = np.percentile(spacings[:, worst], 10)
        if coarse < max_other_spacing:
            coarse = max(max_other_spacing, coarse) + 1e-5
        target[worst] = coarse
    return tuple(float(s) for s in target)


def pool_and_conv_props(spacing, patch_size, min_edge: int = MIN_FEATURE_MAP_EDGE):
    """U-Net topology for a patch: pool an axis while its feature map has >= 2*min_edge voxels
    and its spacing is within 2x of the finest poolable axis; conv kernels become 3 once the
    axis's spacing is within 2x of the finest. Returns (num_pool_per_axis, strides,
    conv_kernel_sizes, patch size padded to a multiple of 2**num_pool, that multiple)."""
    dim = len(spacing)
    spacing_now, size_now = [float(s) for s in spacing], list(patch_size)
    num_pool, kernel = [0] * dim, [1] * dim
    strides, kernels = [(1,) * dim], []
    while True:
        axes = [i for i in range(dim) if size_now[i] >= 2 * min_edge]
        if not axes:
            break
        finest = min(spacing_now[i] for i in axes)
        axes = [i for i in axes if spacing_now[i] / finest < 2]
        # a lone axis keeps pooling only if its bottleneck stays comfortably large
        if len(axes) == 1 and size_now[axes[0]] < 3 * min_edge:
            break
        kernel = [
            3 if k == 3 or spacing_now[d] / min(spacing_now) < 2 else 1
            for d, k in enumerate(kernel)
        ]
        for i in axes:
            num_pool[i] += 1
            spacing_now[i] *= 2
            size_now[i] = np.ceil(size_now[i] / 2)
        strides.append(tuple(2 if i in axes else 1 for i in range(dim)))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)  # bottleneck
    divisor = tuple(2**n for n in num_pool)
    # round up to the next multiple; a size already divisible stays (sizes may be x.5 medians)
    padded = tuple(int(np.ceil(s / d)) * d for s, d in zip(patch_size, divisor))
    return tuple(num_pool), tuple(strides), tuple(kernels), padded, divisor


def features_per_stage(num_stages: int) -> tuple[int, ...]:
    return tuple(min(MAX_FEATURES_3D, BASE_FEATURES * 2**i) for i in range(num_stages))


def estimate_feature_map_size(patch_size, strides, num_classes: int) -> int:
    """nnU-Net's VRAM proxy for PlainConvUNet: voxels x channels of every conv/transposed-conv
    output, plus the (single, no deep supervision) segmentation head at full resolution."""
    features = features_per_stage(len(strides))
    sizes, size = [], list(patch_size)
    for stride in strides:
        size = [s // k for s, k in zip(size, stride)]
        sizes.append(int(np.prod(size, dtype=np.int64)))
    encoder = sum(CONVS_PER_STAGE * f * n for f, n in zip(features, sizes))
    # decoder: at every skip level, a transposed conv output plus its convs
    decoder = sum((CONVS_PER_STAGE + 1) * f * n for f, n in zip(features[:-1], sizes[:-1]))
    return encoder + decoder + num_classes * sizes[0]


@dataclass
class Plan:
    """3d_fullres plan; all per-axis fields in array (zyx) order."""

    target_spacing_zyx: tuple[float, ...]
    median_shape_after_resampling: tuple[float, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    num_pool_per_axis: tuple[int, ...]
    pool_op_kernel_sizes: tuple[tuple[int, ...], ...]  # strides per stage, first is (1, 1, 1)
    conv_kernel_sizes: tuple[tuple[int, ...], ...]
    features_per_stage: tuple[int, ...]
    shape_must_be_divisible_by: tuple[int, ...]
    normalization_schemes: list[str]  # "ct" or "zscore" per channel
    use_mask_for_norm: list[bool]
    intensity_properties: list[dict[str, float] | None]  # CT: mean/std/percentiles for clipping
    transpose_forward: tuple[int, ...]  # nnU-Net's axis order (coarsest first)
    transpose_backward: tuple[int, ...]
    anisotropy_threshold: float = ANISO_THRESHOLD
    target_lowres_axis: int | None = None  # coarsest axis of the target if anisotropic
    data_resampling: dict = field(default_factory=lambda: dict(DATA_RESAMPLING))
    seg_resampling: dict = field(default_factory=lambda: dict(SEG_RESAMPLING))
    probability_resampling: dict = field(default_factory=lambda: dict(PROBABILITY_RESAMPLING))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        def tup(x):  # JSON lists back to (nested) tuples
            return tuple(tup(i) for i in x) if isinstance(x, list) else x

        keep_lists = {"normalization_schemes", "use_mask_for_norm", "intensity_properties"}
        return cls(**{k: v if k in keep_lists else tup(v) for k, v in d.items()})


def _fit_patch(spacing, median_shape, num_cases: int, num_classes: int, vram_gb: float):
    """nnU-Net's get_plans_for_configuration (3D): start with a 256**3-voxel patch shaped like
    the physical aspect ratio, clip to the median shape, then shrink the axis that is largest
    relative to the median shape until the VRAM estimate fits; spare memory goes to batch size."""
    inv = 1 / np.asarray(spacing, dtype=float)
    initial = [round(i) for i in inv * (256**3 / np.prod(inv)) ** (1 / 3)]
    initial = [min(i, m) for i, m in zip(initial, median_shape)]
    topo = pool_and_conv_props(spacing, initial)
    reference = VRAM_REFERENCE_3D * vram_gb / VRAM_REFERENCE_GB
    estimate = estimate_feature_map_size(topo[3], topo[1], num_classes)
    # the reference holds for VRAM_REFERENCE_BATCH; we need room for MIN_BATCH_SIZE
    while estimate / VRAM_REFERENCE_BATCH * MIN_BATCH_SIZE > reference:
        patch, divisor = list(topo[3]), topo[4]
        axis = int(np.argsort([p / m for p, m in zip(patch, median_shape)])[-1])
        # step by the divisor of the *smaller* patch so that no valid size is skipped
        trial = list(patch)
        trial[axis] -= divisor[axis]
        patch[axis] -= pool_and_conv_props(spacing, trial)[4][axis]
        topo = pool_and_conv_props(spacing, patch)
        estimate = estimate_feature_map_size(topo[3], topo[1], num_classes)
    batch_size = round(reference / estimate * VRAM_REFERENCE_BATCH)
    dataset_voxels = float(np.prod(median_shape, dtype=np.float64) * num_cases)
    cap = round(dataset_voxels * MAX_DATASET_COVERED / np.prod(topo[3], dtype=np.float64))
    return topo, max(min(batch_size, cap), MIN_BATCH_SIZE)


def plan_dataset(
    fingerprint: DatasetFingerprint,
    modalities: list[str],
    num_classes: int = 2,
    vram_gb: float = 8.0,
) -> Plan:
    """The 3d_fullres plan nnU-Net's default ExperimentPlanner would make.

    ``modalities`` are dataset.json channel names ("CT" -> CT normalisation, anything else ->
    z-score); ``num_classes`` counts background (len of dataset.json "labels"), it enters the
    VRAM estimate through the segmentation head.
    """
    if len(modalities) != len(fingerprint.foreground_intensity_properties_per_channel):
        raise ValueError("one modality per fingerprint channel needed")
    if any(len(s) != 3 for s in fingerprint.spacings):
        raise ValueError("plan_dataset plans 3D data only")
    target = np.asarray(determine_target_spacing(fingerprint))
    # nnU-Net plans with the coarsest axis first; ties in the patch-shrinking loop depend on it
    coarsest = int(np.argmax(target))
    forward = (coarsest, *[i for i in range(3) if i != coarsest])
    backward = tuple(int(np.argsort(forward)[i]) for i in range(3))
    new_shapes = [
        compute_new_shape(shape, sp, target)
        for sp, shape in zip(fingerprint.spacings, fingerprint.shapes_after_crop)
    ]
    median_shape = np.median(new_shapes, axis=0)
    num_cases = len(fingerprint.spacings)
    topo, batch_size = _fit_patch(
        target[list(forward)], median_shape[list(forward)], num_cases, num_classes, vram_gb
    )
    num_pool, strides, kernels, patch, divisor = topo

    def back(axes):  # nnU-Net's transposed order -> array order
        return tuple(axes[i] for i in backward)

    schemes = ["ct" if m.casefold() == "ct" else "zscore" for m in modalities]
    use_mask = [
        s == "zscore" and fingerprint.median_relative_size_after_cropping < 3 / 4 for s in schemes
    ]
    props = fingerprint.foreground_intensity_properties_per_channel
    intensity = [
        {k: props[i][k] for k in ("mean", "std", "percentile_00_5", "percentile_99_5")}
        if s == "ct"
        else None
        for i, s in enumerate(schemes)
    ]
    target_t = tuple(float(s) for s in target)
    return Plan(
        target_spacing_zyx=target_t,
        median_shape_after_resampling=tuple(float(s) for s in median_shape),
        patch_size=tuple(int(p) for p in back(patch)),
        batch_size=int(batch_size),
        num_pool_per_axis=back(num_pool),
        pool_op_kernel_sizes=tuple(back(s) for s in strides),
        conv_kernel_sizes=tuple(back(k) for k in kernels),
        features_per_stage=features_per_stage(len(strides)),
        shape_must_be_divisible_by=tuple(int(d) for d in back(divisor)),
        normalization_schemes=schemes,
        use_mask_for_norm=use_mask,
        intensity_properties=intensity,
        transpose_forward=forward,
        transpose_backward=backward,
        target_lowres_axis=determine_separate_z(target_t, target_t),
    )
