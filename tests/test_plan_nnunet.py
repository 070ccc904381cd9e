"""The plan against nnU-Net v2's planner: topology, patch, batch and normalisation of its
ExperimentPlanner for hand-made fingerprints, the expected values taken from nnU-Net itself."""

import json

import numpy as np
import pytest
from test_plan import _fingerprint

from tumorfm.data.plan import (
    Plan,
    estimate_feature_map_size,
    plan_dataset,
    pool_and_conv_props,
)

# ------------------------------------------------------------------ topology and plan


def test_pool_and_conv_props_anisotropic():
    num_pool, strides, kernels, patch, divisor = pool_and_conv_props(
        (3.0, 0.8, 0.8), (20, 150, 150)
    )
    assert strides[:3] == ((1, 1, 1), (1, 2, 2), (2, 2, 2))  # z joins once in-plane is coarse
    assert kernels[0] == (1, 3, 3) and kernels[-1] == (3, 3, 3)
    assert divisor == tuple(2**n for n in num_pool)
    assert all(p % d == 0 and p >= s for p, d, s in zip(patch, divisor, (20, 150, 150)))


# Expected values from nnU-Net v2 itself: PlainConvUNet(...).compute_conv_feature_map_size
# (dynamic_network_architectures 0.4.4, in .venv-bench), for the Dataset101 topology and for
# the 7-stage "aniso_ct" topology below with 3 classes.
def test_vram_estimate_matches_nnunet_network():
    strides = [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 4
    assert estimate_feature_map_size((64, 160, 192), strides, 2) == 526556160
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]] + [[1, 2, 2]] * 3
    assert estimate_feature_map_size((28, 256, 256), strides, 3) == 495437824


def _synthetic_fingerprints():
    """Synthetic fingerprints (zyx) with channel names and number of labels."""
    fps = {}
    z = [5.0, 4.0, 6.0, 2.5, 3.0, 5.0, 5.0, 4.5, 7.5, 5.0, 3.5, 5.0]
    fps["aniso_ct"] = (  # thick-slice CT: 10th-percentile rule, patch shrinking loop
        [[s, 0.78 + 0.02 * (i % 3), 0.78 + 0.02 * (i % 3)] for i, s in enumerate(z)],
        [[int(150 / s), 480 + 7 * i, 500 - 5 * i] for i, s in enumerate(z)],
        0.95,
        ["CT"],
        2,
    )
    z = [0.9, 1.0, 1.0] + [6.0] * 9
    fps["aniso_clamp"] = (  # 10th percentile clamped to max(other) + 1e-5; z-score with mask
        [[s, 1.5, 1.4] for s in z],
        [[20, 256, 256] for _ in z],
        0.6,
        ["T2", "ADC"],
        3,
    )
    fps["iso_ct"] = (  # large isotropic CT: several shrinking steps
        [[1.0 + 0.05 * (i % 4), 0.9, 0.9] for i in range(10)],
        [[310 + 3 * i, 280 - 2 * i, 300] for i in range(10)],
        1.0,
        ["ct"],
        2,
    )
    fps["small_mr"] = (  # small volumes, many cases: batch size above 2
        [[1.2, 1.0, 1.0]] * 300,
        [[40 + i % 5, 48, 56 + i % 3] for i in range(300)],
        0.5,
        ["T1"],
        2,
    )
    fps["small_capped"] = (  # batch size capped: one batch <= 5% of the dataset's voxels
        [[1.2, 1.0, 1.0]] * 60,
        [[40, 48, 56]] * 60,
        0.9,
        ["CT"],
        2,
    )
    fps["x_coarse"] = (  # coarsest axis is x: nnU-Net transposes it to the front
        [[1.0, 0.8, 2.5]] * 8,
        [[200 + i, 240, 90] for i in range(8)],
        1.0,
        ["CT"],
        4,
    )
    return fps


# Reference: the same fingerprints (written as dataset_fingerprint.json, with a dataset.json
# carrying the channel names and labels) were planned ONCE with nnU-Net v2.8.1's own
# ExperimentPlanner(...).plan_experiment() in .venv-bench; these are its 3d_fullres values,
# in nnU-Net's transposed axis order: (transpose_forward, spacing, patch_size, batch_size,
# strides, conv kernel sizes, use_mask_for_norm).
NNUNET_3D_FULLRES = {
    "aniso_ct": (
        [0, 1, 2],
        [3.05, 0.8, 0.8],
        [28, 256, 256],
        2,
        [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2], [1, 2, 2]],
        [[1, 3, 3]] + [[3, 3, 3]] * 6,
        [False],
    ),
    "aniso_clamp": (
        [0, 1, 2],
        [1.50001, 1.5, 1.4],
        [64, 192, 192],
        2,
        [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
        [[3, 3, 3]] * 6,
        [True, True],
    ),
    "iso_ct": (
        [0, 1, 2],
        [1.05, 0.9, 0.9],
        [128, 128, 128],
        2,
        [[1, 1, 1]] + [[2, 2, 2]] * 5,
        [[3, 3, 3]] * 6,
        [False],
    ),
    "small_mr": (
        [0, 1, 2],
        [1.2, 1.0, 1.0],
        [48, 48, 64],
        12,
        [[1, 1, 1]] + [[2, 2, 2]] * 3,
        [[3, 3, 3]] * 4,
        [True],
    ),
    "small_capped": (
        [0, 1, 2],
        [1.2, 1.0, 1.0],
        [40, 48, 56],
        3,
        [[1, 1, 1]] + [[2, 2, 2]] * 3,
        [[3, 3, 3]] * 4,
        [False],
    ),
    "x_coarse": (
        [2, 0, 1],
        [2.5, 1.0, 0.8],
        [64, 160, 192],
        2,
        [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 4,
        [[1, 3, 3]] + [[3, 3, 3]] * 5,
        [False],
    ),
}


def _plan(name):
    spacings, shapes, rel, modalities, num_labels = _synthetic_fingerprints()[name]
    fp = _fingerprint(spacings, shapes, rel, channels=len(modalities))
    return fp, plan_dataset(fp, modalities, num_classes=num_labels)


@pytest.mark.parametrize("name", sorted(NNUNET_3D_FULLRES))
def test_plan_matches_nnunet_planner(name):
    forward, spacing, patch, batch, strides, kernels, mask = NNUNET_3D_FULLRES[name]
    _, plan = _plan(name)

    def t(axes):  # our array order -> nnU-Net's transposed order
        return [axes[i] for i in forward]

    assert list(plan.transpose_forward) == forward
    assert t(plan.target_spacing_zyx) == spacing  # exact, including the 1e-5 clamp
    assert t(plan.patch_size) == patch
    assert plan.batch_size == batch
    assert [t(s) for s in plan.pool_op_kernel_sizes] == strides
    assert [t(k) for k in plan.conv_kernel_sizes] == kernels
    assert plan.use_mask_for_norm == mask


@pytest.mark.parametrize("name", sorted(NNUNET_3D_FULLRES))
def test_patch_is_divisible_and_bounded_by_median_shape(name):
    _, plan = _plan(name)
    for p, d, m in zip(
        plan.patch_size, plan.shape_must_be_divisible_by, plan.median_shape_after_resampling
    ):
        assert p % d == 0
        # nnU-Net clips to the median shape, then pads up to the divisor (so small images can
        # get a patch slightly above the median, as nnU-Net's own plans do)
        assert p <= int(np.ceil(m / d)) * d
    if name in ("aniso_ct", "iso_ct", "x_coarse"):  # large images: patch within the median
        assert all(p <= m for p, m in zip(plan.patch_size, plan.median_shape_after_resampling))


def test_plan_normalisation_and_round_trip():
    fp, plan = _plan("aniso_clamp")
    assert plan.normalization_schemes == ["zscore", "zscore"]
    assert plan.intensity_properties == [None, None]
    fp, plan = _plan("aniso_ct")
    assert plan.normalization_schemes == ["ct"] and plan.use_mask_for_norm == [False]
    props = fp.foreground_intensity_properties_per_channel[0]
    assert plan.intensity_properties[0] == {
        k: props[k] for k in ("mean", "std", "percentile_00_5", "percentile_99_5")
    }
    assert plan.target_lowres_axis == 0
    assert plan.data_resampling == {"order": 3, "order_z": 0}
    assert plan.seg_resampling == {"order": 1, "order_z": 0}
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
