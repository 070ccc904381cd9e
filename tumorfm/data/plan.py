"""Experiment plan, following nnU-Net v2's default planner (the fingerprint is in fingerprint.py).

Mirrors nnU-Net v2's ``DatasetFingerprintExtractor`` and ``ExperimentPlanner`` (3d_fullres,
PlainConvUNet VRAM estimate): the TSFM recipe assumes nnU-Net's spacing, patch and batch size.

Arrays are (c, z, y, x) / (z, y, x) and spacings are in array (zyx) order, like nnU-Net's
internal representation. All plan fields are in that array order; nnU-Net's own plan is in
"transposed" order (lowest-resolution axis first), which ``Plan.transpose_forward`` records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from tumorfm.data.fingerprint import (  # noqa: F401  (re-exported: the planner's inputs)
    CaseFingerprint,
    DatasetFingerprint,
    aggregate_fingerprints,
    bounding_box,
    crop_to_nonzero,
    fingerprint_case,
    nonzero_mask,
    samples_per_case,
)
from tumorfm.defaults import CPU_PATCH
from tumorfm.errors import TumorFMError

ANISO_THRESHOLD = 3.0  # spacing ratio above which an axis counts as low-resolution

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

# 3d_lowres, sized for a CPU: nnU-Net coarsens the spacing until its VRAM-sized patch holds a
# quarter of the median case; a CPU patch is several times smaller, so tumorfm fixes the patch and
# coarsens until one patch holds most of the median case (the fraction along each axis, multiplied).
CONFIGS = ("fullres", "lowres")
LOWRES_PATCH = CPU_PATCH
LOWRES_COVERAGE = 0.75
SPACING_STEP = 1.03  # nnU-Net's spacing_increase_factor

DATA_RESAMPLING = {"order": 3, "order_z": 0}
SEG_RESAMPLING = {"order": 1, "order_z": 0}
PROBABILITY_RESAMPLING = {"order": 1, "order_z": 0}


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


def patch_coverage(patch_size, shape) -> float:
    """The share of a case of `shape` one patch sees: per axis min(1, patch/shape), multiplied."""
    return float(np.prod([min(1.0, p / s) for p, s in zip(patch_size, shape)]))


def lowres_spacing(spacing, median_shape, patch_size, coverage: float = LOWRES_COVERAGE):
    """A spacing at which one patch holds `coverage` of the median case (nnU-Net's 3d_lowres loop).

    Like nnU-Net, the finest axes are coarsened first (3% a step), so anisotropic data become
    less anisotropic before the thick axis is touched; an axis the patch already spans is left
    alone (nnU-Net would coarsen a 20-slice MR stack along with its planes). Returns `spacing`
    itself when the patch already holds that much at full resolution.
    """
    spacing = np.asarray(spacing, dtype=float)
    physical = spacing * np.asarray(median_shape, dtype=float)  # mm, fixed
    new = spacing.copy()
    while patch_coverage(patch_size, physical / new) < coverage:
        open_axes = [i for i in range(len(new)) if patch_size[i] < physical[i] / new[i]]
        finest = min(new[i] for i in open_axes)
        for i in open_axes:
            if new[i] <= finest * SPACING_STEP:
                new[i] *= SPACING_STEP
    return tuple(float(s) for s in new)


@dataclass
class Plan:
    """A 3d_fullres or 3d_lowres plan; all per-axis fields in array (zyx) order."""

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
    configuration: str = "3d_fullres"  # or "3d_lowres": a coarser spacing for a CPU patch
    fullres_spacing_zyx: tuple[float, ...] | None = None  # lowres: the spacing it coarsens

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
    config: str = "fullres",
    lowres_patch=LOWRES_PATCH,
) -> Plan:
    """The 3d_fullres plan nnU-Net's default ExperimentPlanner would make, or a 3d_lowres one.

    ``modalities`` are dataset.json channel names ("CT" -> CT normalisation, anything else ->
    z-score); ``num_classes`` counts background (len of dataset.json "labels"), it enters the
    VRAM estimate through the segmentation head. ``config="lowres"`` coarsens the target
    spacing until ``lowres_patch`` holds most of the median case (see ``lowres_spacing``), and
    that patch becomes the plan's; where the full resolution already does, the plan stays
    3d_fullres (its ``configuration`` says which).
    """
    if config not in CONFIGS:
        raise TumorFMError(f"configuration '{config}': choose {' or '.join(CONFIGS)}")
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
    plan = Plan(
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
    return _lowres(plan, fingerprint, lowres_patch) if config == "lowres" else plan


def _lowres(plan: Plan, fingerprint: DatasetFingerprint, patch_size) -> Plan:
    """`plan` at the coarser spacing where `patch_size` holds most of the median case."""
    patch_size = tuple(int(p) for p in patch_size)
    if len(patch_size) != 3 or min(patch_size) < 1:
        raise TumorFMError(f"lowres patch {patch_size}: three positive sizes z y x expected")
    fullres = plan.target_spacing_zyx
    spacing = lowres_spacing(fullres, plan.median_shape_after_resampling, patch_size)
    if spacing == tuple(fullres):
        return plan
    shapes = [
        compute_new_shape(shape, sp, spacing)
        for sp, shape in zip(fingerprint.spacings, fingerprint.shapes_after_crop)
    ]
    num_pool, strides, kernels, _, divisor = pool_and_conv_props(spacing, patch_size)
    return replace(
        plan,
        configuration="3d_lowres",
        fullres_spacing_zyx=tuple(fullres),
        target_spacing_zyx=spacing,
        median_shape_after_resampling=tuple(float(s) for s in np.median(shapes, axis=0)),
        patch_size=patch_size,
        batch_size=MIN_BATCH_SIZE,
        num_pool_per_axis=tuple(num_pool),
        pool_op_kernel_sizes=tuple(strides),
        conv_kernel_sizes=tuple(kernels),
        features_per_stage=features_per_stage(len(strides)),
        shape_must_be_divisible_by=tuple(int(d) for d in divisor),
        target_lowres_axis=determine_separate_z(spacing, spacing),
    )
