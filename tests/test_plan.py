"""Fingerprint and plan: nnU-Net v2's rules on small hand-made inputs (no nnU-Net import)."""

import json

import numpy as np
import pytest

from tumorfm.data.plan import (
    LOWRES_COVERAGE,
    SPACING_STEP,
    CaseFingerprint,
    DatasetFingerprint,
    Plan,
    aggregate_fingerprints,
    crop_to_nonzero,
    determine_separate_z,
    determine_target_spacing,
    fingerprint_case,
    nonzero_mask,
    patch_coverage,
    plan_dataset,
    samples_per_case,
)
from tumorfm.errors import TumorFMError


def _props(num_channels):
    return {
        str(i): {
            "mean": 40.0 + i,
            "median": 38.0,
            "std": 60.0,
            "min": -1000.0,
            "max": 2000.0,
            "percentile_99_5": 300.0,
            "percentile_00_5": -150.0,
        }
        for i in range(num_channels)
    }


def _fingerprint(spacings, shapes, rel_size=1.0, channels=1):
    return DatasetFingerprint.from_dict(
        {
            "spacings": spacings,
            "shapes_after_crop": shapes,
            "foreground_intensity_properties_per_channel": _props(channels),
            "median_relative_size_after_cropping": rel_size,
        }
    )


# ------------------------------------------------------------------ target spacing / anisotropy


def test_isotropic_target_is_median():
    spacings = [[1.0, 0.8, 0.8], [1.2, 0.7, 0.7], [1.5, 0.9, 0.9], [0.9, 0.8, 0.8]]
    fp = _fingerprint(spacings, [[100, 200, 200]] * 4)
    assert determine_target_spacing(fp) == pytest.approx((1.1, 0.8, 0.8))


def test_anisotropic_spacing_and_voxels_use_10th_percentile():
    z = [2.0, 4.0] + [5.0] * 9  # 11 values: the 10th percentile is the second smallest
    fp = _fingerprint([[s, 1.0, 1.0] for s in z], [[30, 300, 300]] * 11)
    assert determine_target_spacing(fp) == pytest.approx((4.0, 1.0, 1.0))


def test_anisotropic_spacing_with_many_slices_keeps_median():
    z = [2.0, 4.0] + [5.0] * 9
    fp = _fingerprint([[s, 1.0, 1.0] for s in z], [[200, 300, 300]] * 11)  # not few slices
    assert determine_target_spacing(fp) == pytest.approx((5.0, 1.0, 1.0))


def test_10th_percentile_is_clamped_above_the_other_axes():
    z = [0.9, 1.0, 1.0] + [6.0] * 9  # 10th percentile 1.0 < in-plane 1.5
    fp = _fingerprint([[s, 1.5, 1.4] for s in z], [[20, 256, 256]] * 12)
    assert determine_target_spacing(fp) == (1.5 + 1e-5, 1.5, 1.4)


@pytest.mark.parametrize(
    "spacing, target, expected",
    [
        ((3.0, 0.5, 0.5), (1.0, 1.0, 1.0), 0),  # current spacing anisotropic: its coarse axis
        ((1.0, 1.0, 1.0), (0.5, 0.5, 3.0), 2),  # else the target's coarse axis
        ((1.0, 0.8, 0.8), (1.2, 0.8, 0.8), None),  # neither anisotropic
        ((0.24, 1.25, 1.25), (1.0, 1.0, 1.0), None),  # two coarse axes: no single z
        ((0.2, 1.0, 1.0), (3.0, 1.0, 1.0), None),  # the current spacing's tie is final
        ((3.0, 1.0, 1.0), (3.0, 1.0, 1.0), None),  # ratio exactly 3 is not "> 3"
    ],
)
def test_separate_z_rule(spacing, target, expected):
    assert determine_separate_z(spacing, target) == expected


# ------------------------------------------------------------------ cropping


def _ring_volume():
    """One channel with a hollow box (hole inside) in a zero background."""
    img = np.zeros((1, 8, 10, 12), np.float32)
    img[0, 2:6, 3:8, 4:11] = 5.0
    img[0, 3:5, 4:7, 5:10] = 0.0  # enclosed hole: filled by nonzero_mask
    return img


def test_nonzero_mask_fills_holes():
    mask = nonzero_mask(_ring_volume())
    assert mask[3, 5, 7] and mask.sum() == 4 * 5 * 7


def test_crop_to_nonzero_bbox_and_label():
    img = _ring_volume()
    label = np.zeros((8, 10, 12), np.uint8)
    label[3, 5, 7] = 1  # inside the hole
    cropped, seg, bbox = crop_to_nonzero(img, label)
    assert bbox == ((2, 6), (3, 8), (4, 11))
    assert cropped.shape == (1, 4, 5, 7)
    assert seg.shape == (4, 5, 7) and seg.dtype.kind == "i"  # signed: -1 must survive
    assert seg[1, 2, 3] == 1 and (seg >= 0).all()  # mask filled, so nothing outside it here
    assert label.sum() == 1  # input untouched


def test_crop_marks_background_outside_mask_and_uses_all_channels():
    img = np.zeros((2, 6, 6, 6), np.float32)
    img[0, 1:3, 1:3, 1:3] = 1.0
    img[1, 4, 4, 4] = -2.0  # second channel widens the box
    label = np.zeros((6, 6, 6), np.int16)
    label[1, 1, 1] = 2
    _, seg, bbox = crop_to_nonzero(img, label)
    assert bbox == ((1, 5), (1, 5), (1, 5))
    assert seg[0, 0, 0] == 2 and seg[3, 3, 3] == 0 and seg[2, 2, 2] == -1
    _, mask_seg, _ = crop_to_nonzero(img)  # no label: the 0 / -1 mask in its place
    assert mask_seg.dtype == np.int8 and np.array_equal(mask_seg, np.where(seg == -1, -1, 0))


def test_crop_of_empty_image_keeps_everything():
    _, _, bbox = crop_to_nonzero(np.zeros((1, 3, 4, 5)))
    assert bbox == ((0, 3), (0, 4), (0, 5))


# ------------------------------------------------------------------ fingerprint


def _ct_case(rng, shape=(20, 40, 40), tumour_value=60.0):
    img = np.full((1, *shape), -1000.0, np.float32)  # air, non-zero: nothing gets cropped
    img[0, :, 5:35, 5:35] = rng.normal(40, 20, (shape[0], 30, 30))
    label = np.zeros(shape, np.uint8)
    label[5:15, 10:25, 10:25] = 1
    img[0][label > 0] = rng.normal(tumour_value, 10, int(label.sum()))
    return img, label


def test_samples_per_case_budget():
    assert samples_per_case(36) == 2_777_777
    assert samples_per_case(1) == 100_000_000


def test_fingerprint_case_samples_foreground_only():
    rng = np.random.default_rng(0)
    img, label = _ct_case(rng)
    img[0, 0] = 0.0  # a zero slice at the edge is cropped away
    fp = fingerprint_case(img, label, (3.0, 0.8, 0.8), num_samples=500)
    assert isinstance(fp, CaseFingerprint)
    assert fp.shape_before_crop == (20, 40, 40) and fp.shape_after_crop == (19, 40, 40)
    assert fp.relative_size_after_cropping == pytest.approx(19 / 20)
    assert fp.spacing_zyx == (3.0, 0.8, 0.8)
    fg = img[0][label > 0]
    assert fp.foreground_samples[0].shape == (500,)
    assert np.isin(fp.foreground_samples[0], fg).all()
    assert fp.foreground_stats[0]["max"] == fg.max()
    again = fingerprint_case(img, label, (3.0, 0.8, 0.8), num_samples=500)
    assert np.array_equal(again.foreground_samples[0], fp.foreground_samples[0])  # seeded


def test_fingerprint_case_without_foreground():
    img, _ = _ct_case(np.random.default_rng(1))
    fp = fingerprint_case(img, np.zeros(img.shape[1:], np.uint8), (1, 1, 1), num_samples=10)
    assert fp.foreground_samples[0].size == 0 and np.isnan(fp.foreground_stats[0]["mean"])


def test_aggregate_and_round_trip():
    rng = np.random.default_rng(2)
    cases = [
        fingerprint_case(*_ct_case(rng, (16 + i, 40, 40)), (3.0, 0.8, 0.8), 1000) for i in range(3)
    ]
    fp = aggregate_fingerprints(cases)
    pooled = np.concatenate([c.foreground_samples[0] for c in cases])
    stats = fp.foreground_intensity_properties_per_channel[0]
    assert stats["mean"] == pytest.approx(pooled.mean())
    assert stats["std"] == pytest.approx(pooled.std())
    assert stats["percentile_99_5"] == pytest.approx(np.percentile(pooled, 99.5))
    assert stats["percentile_00_5"] == pytest.approx(np.percentile(pooled, 0.5))
    assert fp.shapes_after_crop == [(16, 40, 40), (17, 40, 40), (18, 40, 40)]
    back = DatasetFingerprint.from_dict(json.loads(json.dumps(fp.to_dict())))
    assert back == fp


def test_end_to_end_on_synthetic_ct():
    rng = np.random.default_rng(3)
    cases = []
    for i in range(3):
        img, label = _ct_case(rng, (20 + 2 * i, 48, 48), tumour_value=50.0)
        cases.append(fingerprint_case(img, label, (3.0, 0.7, 0.7), samples_per_case(3) // 1000))
    fp = aggregate_fingerprints(cases)
    plan = plan_dataset(fp, ["CT"])
    assert plan.target_spacing_zyx == (3.0, 0.7, 0.7)
    assert plan.median_shape_after_resampling == (22.0, 48.0, 48.0)
    assert all(p % d == 0 for p, d in zip(plan.patch_size, plan.shape_must_be_divisible_by))
    assert plan.batch_size >= 2 and plan.normalization_schemes == ["ct"]
    assert fp.foreground_intensity_properties_per_channel[0]["mean"] == pytest.approx(50.0, abs=1)


# ------------------------------------------------ exact statistics for integer intensities (CT)


def _case_with_foreground(values, seed):
    """A case whose foreground (label 1) holds exactly `values`, with a non-zero background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 5, size=(1, 10, 10, len(values) // 10 + 2)).astype(np.float32)
    label = np.zeros(image.shape[1:], dtype=np.uint8)
    flat_image, flat_label = image[0].reshape(-1), label.reshape(-1)
    flat_image[: len(values)] = values
    flat_label[: len(values)] = 1
    return image, label


def test_integer_intensities_give_exact_equal_weight_statistics():
    """Counting instead of sampling: with foregrounds of exactly `num_samples` voxels, every
    case weighs one voxel once, so the statistics must be numpy's over all voxels."""
    rng = np.random.default_rng(3)
    a = rng.integers(-200, 300, size=1000).astype(np.float32)
    b = rng.integers(-50, 900, size=1000).astype(np.float32)
    cases = [
        fingerprint_case(*_case_with_foreground(v, i), (1.0, 1.0, 1.0), num_samples=1000)
        for i, v in enumerate((a, b))
    ]
    assert all(c.foreground_samples[0].size == 0 for c in cases)  # nothing sampled
    stats = aggregate_fingerprints(cases).foreground_intensity_properties_per_channel[0]
    values = np.concatenate([a, b]).astype(np.float64)
    expected = dict(
        zip(
            ("percentile_00_5", "median", "percentile_99_5"), np.percentile(values, (0.5, 50, 99.5))
        )
    )
    expected.update(mean=values.mean(), std=values.std(), min=values.min(), max=values.max())
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def test_unequal_foregrounds_are_weighted_per_case_like_nnunet():
    """A small case counts as much as a big one, as with nnU-Net's equal per-case samples."""
    small = np.full(100, 10.0, dtype=np.float32)
    big = np.full(10000, 20.0, dtype=np.float32)
    cases = [
        fingerprint_case(*_case_with_foreground(v, i), (1.0, 1.0, 1.0), num_samples=500)
        for i, v in enumerate((small, big))
    ]
    stats = aggregate_fingerprints(cases).foreground_intensity_properties_per_channel[0]
    assert stats["mean"] == pytest.approx(15.0) and stats["std"] == pytest.approx(5.0)


def test_float_intensities_are_sampled_and_mixed_cases_combine():
    rng = np.random.default_rng(4)
    mr = fingerprint_case(
        *_case_with_foreground(rng.normal(size=1000).astype(np.float32), 0),
        (1.0, 1.0, 1.0),
        num_samples=800,
    )
    assert mr.foreground_samples[0].size == 800 and mr.foreground_histograms[0] is None
    ct = fingerprint_case(
        *_case_with_foreground(np.full(1000, 5.0, np.float32), 1), (1.0, 1.0, 1.0), num_samples=800
    )
    stats = aggregate_fingerprints([mr, ct]).foreground_intensity_properties_per_channel[0]
    assert stats["max"] == 5.0 and stats["percentile_00_5"] < -2.0
    assert 2.0 < stats["mean"] < 3.0  # half the 1600 values are 5, half are ~N(0, 1)


# ------------------------------------------------ 3d_lowres sized for a CPU patch


def test_lowres_coarsens_the_fine_axes_until_the_patch_holds_most_of_a_case():
    # the sarcoma set: 3.27 x 0.98 x 0.98 mm, 64 x 186 x 188 voxels after cropping
    fp = _fingerprint([(3.27, 0.977, 0.977)] * 5, [(64, 186, 188)] * 5)
    full = plan_dataset(fp, ["CT"])
    low = plan_dataset(fp, ["CT"], config="lowres", lowres_patch=(48, 96, 96))
    assert (full.configuration, low.configuration) == ("3d_fullres", "3d_lowres")
    assert low.fullres_spacing_zyx == full.target_spacing_zyx
    assert low.target_spacing_zyx[0] == full.target_spacing_zyx[0]  # the thick axis stays
    assert 1.85 < low.target_spacing_zyx[1] == low.target_spacing_zyx[2] < 2.05
    assert patch_coverage((48, 96, 96), low.median_shape_after_resampling) >= LOWRES_COVERAGE
    # one 3% step finer and the patch would not hold enough of the case
    finer = np.array(low.target_spacing_zyx) / [1, SPACING_STEP, SPACING_STEP]
    shape = np.array(full.median_shape_after_resampling) * full.target_spacing_zyx / finer
    assert patch_coverage((48, 96, 96), shape) < LOWRES_COVERAGE
    assert low.patch_size == (48, 96, 96) and low.batch_size == 2
    assert Plan.from_dict(json.loads(json.dumps(low.to_dict()))) == low


def test_lowres_leaves_an_axis_the_patch_already_spans():
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 3, [(20, 256, 256)] * 3)  # a thin MR stack
    low = plan_dataset(fp, ["MR"], config="lowres", lowres_patch=(48, 96, 96))
    assert low.target_spacing_zyx[0] == 1.0 and low.target_spacing_zyx[1] > 2.0


def test_lowres_equal_to_fullres_stays_fullres_and_bad_names_are_refused():
    fp = _fingerprint([(1.0, 1.0, 1.0)] * 3, [(40, 80, 80)] * 3)
    plan = plan_dataset(fp, ["CT"], config="lowres", lowres_patch=(48, 96, 96))
    assert plan == plan_dataset(fp, ["CT"])
    with pytest.raises(TumorFMError, match="configuration 'low': choose fullres or lowres"):
        plan_dataset(fp, ["CT"], config="low")
