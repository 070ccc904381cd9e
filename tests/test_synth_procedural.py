"""Procedural tumour synthesis on real scans: a CT liver (TotalSegmentator's example, label 5) and
a glioblastoma MR brain. Every guarantee of tumorfm.synth.procedural is checked here."""

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import BRAIN, CASES
from scipy import ndimage

from tumorfm.errors import TumorFMError
from tumorfm.synth import SIZES, reach_mm, synthesise
from tumorfm.synth.procedural import CT_SHIFT_HU, MR_SHIFT

LIVER = 5  # TotalSegmentator's class list: 1 spleen, 2-3 kidneys, 4 gallbladder, 5 liver


def _read(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(image.GetSpacing())[::-1]


@pytest.fixture(scope="module")
def ct():
    image, spacing = _read(CASES / "totalseg_example_ct_sm.nii.gz")
    labels, _ = _read(CASES / "totalseg_example_seg.nii.gz")
    return image, labels == LIVER, spacing


@pytest.fixture(scope="module")
def mr():
    """The first MR case of the dataset, its brain made by thresholding (> 10th percentile of
    the non-zero voxels) and eroding."""
    dataset = json.loads((BRAIN / "dataset.json").read_text())
    assert dataset["modality"]["0"] == "T1"
    image, spacing = _read(BRAIN / dataset["training"][0]["image"])
    brain = ndimage.binary_erosion(image > np.percentile(image[image > 0], 10), iterations=2)
    return image, brain, spacing


def _far(tumour, spacing, mass_effect):
    """Voxels farther than reach_mm from every tumour voxel."""
    return ndimage.distance_transform_edt(~tumour, sampling=spacing) > reach_mm(mass_effect)


@pytest.mark.parametrize("size", list(SIZES))
def test_ct_tumour_lies_in_the_liver_darker_by_the_documented_shift(ct, size):
    image, liver, spacing = ct
    out = synthesise(image, liver, spacing, seed=3, size=size)
    (record,) = out.tumours
    assert out.image.shape == image.shape and out.image.dtype == image.dtype  # int16 stays int16
    assert out.tumour.dtype == bool and out.tumour.any()
    assert not (out.tumour & ~liver).any()
    assert record.size == size and record.voxels == out.tumour.sum()
    assert out.tumour[record.centre_zyx] and liver[record.centre_zyx]
    low, high = SIZES[size]
    assert all(low <= r <= high for r in record.radii_mm)
    # the tumour's mean HU sits below the liver's median by the shift, within CT_SHIFT_HU
    below = np.median(image[liver]) - out.image[out.tumour].astype(float).mean()
    assert CT_SHIFT_HU[0] - 0.5 <= below <= CT_SHIFT_HU[1] + 0.5  # 0.5: rounding to int16
    assert below == pytest.approx(-record.intensity_shift, abs=0.5)
    # it has texture: not a constant blob (tiny tumours at 3 mm have too few voxels to tell)
    if record.voxels > 20:
        assert out.image[out.tumour].std() > 3


def test_the_seed_alone_decides_and_the_inputs_are_untouched(ct):
    image, liver, spacing = ct
    kept_image, kept_liver = image.copy(), liver.copy()
    args = dict(seed=11, count=3, size="mixed", mass_effect=True)
    first = synthesise(image, liver, spacing, **args)
    again = synthesise(image, liver, spacing, **args)
    other = synthesise(image, liver, spacing, **{**args, "seed": 12})
    assert np.array_equal(first.image, again.image) and np.array_equal(first.tumour, again.tumour)
    assert first.tumours == again.tumours
    assert not np.array_equal(first.image, other.image)
    assert not np.array_equal(first.tumour, other.tumour)
    assert np.array_equal(image, kept_image) and np.array_equal(liver, kept_liver)
    assert first.image is not image and not np.shares_memory(first.image, image)


@pytest.mark.parametrize("mass_effect", [False, True])
def test_only_liver_voxels_near_a_tumour_change(ct, mass_effect):
    image, liver, spacing = ct
    out = synthesise(image, liver, spacing, seed=5, count=4, size="mixed", mass_effect=mass_effect)
    changed = out.image != image
    far = _far(out.tumour, spacing, mass_effect)
    assert far.sum() > 0.9 * image.size  # the check below covers most of the scan
    assert not (changed & far).any()
    assert not (changed & ~liver).any()
    assert (changed & ~out.tumour).any()  # the soft edge reaches outside the mask


def test_mass_effect_moves_only_the_surroundings_and_pushes_them_outward(ct):
    """Same seed with and without: the same tumours, the mass effect changes more voxels. On a
    phantom whose intensity rises along x, tissue pushed away from the centre shows values from
    closer to it: lower on the +x side, higher on the -x side."""
    image, liver, spacing = ct
    plain = synthesise(image, liver, spacing, seed=8, size="large")
    pushed = synthesise(image, liver, spacing, seed=8, size="large", mass_effect=True)
    assert np.array_equal(plain.tumour, pushed.tumour) and plain.tumours == pushed.tumours
    assert (pushed.image != image).sum() > (plain.image != image).sum()

    x = np.arange(100, dtype=np.float32)
    ramp = np.broadcast_to(x, (100, 100, 100)).copy()
    organ = np.zeros(ramp.shape, dtype=bool)
    organ[10:90, 10:90, 10:90] = True
    out = synthesise(ramp, organ, (1.0, 1.0, 1.0), seed=0, size="large", mass_effect=True)
    dist = ndimage.distance_transform_edt(~out.tumour)
    ring = (dist > 7) & (dist < 9.5) & organ  # past the soft edge (<= 6.5 mm here), in the zone
    side = np.sign(x - out.tumours[0].centre_zyx[2])
    moved = (out.image - ramp)[ring] * np.broadcast_to(side, ramp.shape)[ring]
    # linear interpolation of a linear ramp is exact: each value is its voxel's x minus the push
    assert (moved <= 1e-4).all() and moved.min() < -0.1


def test_mr_shift_is_set_from_the_organs_percentiles(mr):
    image, brain, spacing = mr
    p5, p50, p95 = np.percentile(image[brain], [5, 50, 95])
    sides = set()
    for seed in range(4):
        out = synthesise(image, brain, spacing, seed=seed, modality="MR", size="small")
        (record,) = out.tumours
        assert out.image.dtype == image.dtype
        assert not (out.tumour & ~brain).any()
        assert not ((out.image != image) & _far(out.tumour, spacing, False)).any()
        shift = out.image[out.tumour].astype(float).mean() - p50
        assert shift == pytest.approx(record.intensity_shift, rel=1e-3)
        # a fraction MR_SHIFT of the way from the median to the 95th (brighter) or 5th percentile
        fraction = shift / (p95 - p50) if shift > 0 else -shift / (p50 - p5)
        assert MR_SHIFT[0] - 0.01 <= fraction <= MR_SHIFT[1] + 0.01
        sides.add(shift > 0)
    assert len(sides) == 2  # both darker and brighter tumours occur over these seeds


def test_mixed_draws_only_the_sizes_the_organ_can_hold(mr):
    """The brain slab is 24 mm thick: its deepest voxel is < 12 mm from its edge."""
    image, brain, spacing = mr
    out = synthesise(image, brain, spacing, seed=1, modality="MR", count=4, size="mixed")
    assert {t.size for t in out.tumours} <= {"tiny", "small"}
    with pytest.raises(TumorFMError, match="'medium'"):
        synthesise(image, brain, spacing, seed=1, modality="MR", size="medium")


def test_well_under_a_second_per_tumour(ct):
    """CPU seconds (the machine may be busy): the real CT, and a 160^3 1 mm scan whose organ
    spans ~140 mm, with large tumours, the slowest."""
    image, liver, spacing = ct
    start = time.process_time()
    synthesise(image, liver, spacing, seed=0, count=4, size="mixed", mass_effect=True)
    assert (time.process_time() - start) / 4 < 0.25
    z, y, x = np.ogrid[:160, :160, :160]
    organ = (z - 80) ** 2 / 70**2 + (y - 80) ** 2 / 60**2 + (x - 80) ** 2 / 75**2 <= 1
    rng = np.random.default_rng(0)
    scan = (np.where(organ, 60.0, -100.0) + rng.normal(0, 15, organ.shape)).astype(np.float32)
    start = time.process_time()
    synthesise(scan, organ, (1.0, 1.0, 1.0), seed=0, count=2, size="large", mass_effect=True)
    assert (time.process_time() - start) / 2 < 0.7


def _bad(ct, **change):
    image, liver, spacing = ct
    args = {"image": image, "organ": liver, "spacing_zyx": spacing, "seed": 0, **change}
    with pytest.raises(TumorFMError) as error:
        synthesise(**args)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_bad_input_is_named_in_one_line(ct):
    image, liver, _ = ct
    assert "empty" in _bad(ct, organ=np.zeros_like(liver))
    assert "(30, 101, 121)" in _bad(ct, organ=liver[:, :, :-1])
    nan = image.astype(np.float32)
    nan[5, 50, 60] = np.nan
    assert "1 NaN" in _bad(ct, image=nan)
    inf = image.astype(np.float32)
    inf[0, 0, 0] = np.inf
    assert "infinite" in _bad(ct, image=inf)
    for spacing in [(0.0, 3.0, 3.0), (3.0, -1.0, 3.0), (3.0, 3.0, float("inf"))]:
        message = _bad(ct, spacing_zyx=spacing)
        assert f"spacing {spacing}" in message and "positive and finite" in message
    assert "three numbers" in _bad(ct, spacing_zyx=(3.0, 3.0))
    message = _bad(ct, size="huge")
    assert "'huge'" in message and all(name in message for name in [*SIZES, "mixed"])
    message = _bad(ct, modality="PET")
    assert "'PET'" in message and "CT" in message and "MR" in message
    assert "count 0" in _bad(ct, count=0)
    assert "seed -1" in _bad(ct, seed=-1)


def test_an_organ_too_small_for_the_size_names_size_and_extent(ct):
    image, liver, spacing = ct
    small = np.zeros_like(liver)
    small[10:14, 40:46, 50:58] = True  # 12 x 18 x 24 mm at 3 mm: room for tiny ones only
    message = _bad(ct, organ=small, size="medium")
    assert "'medium'" in message and "12 x 18 x 24 mm" in message
    out = synthesise(image, small, spacing, seed=0, size="tiny")
    assert out.tumours[0].size == "tiny" and not (out.tumour & ~small).any()
    dot = np.zeros_like(liver)
    dot[0, 0, 0] = True  # one voxel on the scan's edge: no room at all
    assert "'tiny'" in _bad(ct, organ=dot)
