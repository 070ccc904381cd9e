"""tumorfm.eval.metrics against MONAI (the reference), and the conventions MONAI leaves open."""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import CASES
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from tumorfm.data.io import read_volume, write_volume
from tumorfm.eval import metrics
from tumorfm.eval.evaluate import evaluate

SPACING = (3.0, 0.8, 0.7)  # anisotropic, z-y-x
TOLERANCES = (2.0, 4.5)  # no voxel distance at this spacing equals either (no ties at the edge)


def blobs(rng, shape, count=3, grow=3):
    """A few random lumpy blobs (dilated seeds minus speckle)."""
    mask = np.zeros(shape, bool)
    for _ in range(count):
        mask[tuple(rng.integers(0, shape))] = True
    mask = ndimage.binary_dilation(mask, iterations=int(rng.integers(1, grow + 1)))
    return mask & (rng.random(shape) > 0.15)


def monai_scores(pred, gt, spacing, tolerance):
    """MONAI's (Dice, HD95, NSD) on one-hot (batch, channel, z, y, x) tensors."""

    def onehot(mask):
        x = torch.from_numpy(np.asarray(mask, bool)).float()[None, None]
        return torch.cat([1 - x, x], dim=1)

    p, g = onehot(pred), onehot(gt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks
        dice = compute_dice(p, g, include_background=False, ignore_empty=False).item()
        hd = compute_hausdorff_distance(p, g, percentile=95, spacing=list(spacing)).item()
        nsd = compute_surface_dice(p, g, [tolerance], spacing=list(spacing)).item()
    return dice, hd, nsd


def assert_like_monai(pred, gt, spacing=SPACING, tolerance=2.0):
    dice, hd, nsd = monai_scores(pred, gt, spacing, tolerance)
    ours_hd, ours_nsd = metrics.surface_metrics(pred, gt, spacing, tolerance)
    assert metrics.dice(pred, gt) == pytest.approx(dice, abs=1e-6)
    assert metrics.hd95(pred, gt, spacing) == pytest.approx(ours_hd, abs=0)
    assert metrics.nsd(pred, gt, spacing, tolerance) == pytest.approx(ours_nsd, abs=0)
    assert ours_hd == pytest.approx(hd, abs=1e-3)
    assert ours_nsd == pytest.approx(nsd, abs=1e-3)
    return ours_hd, ours_nsd


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tolerance", TOLERANCES)
def test_random_blobs_match_monai(seed, tolerance):
    rng = np.random.default_rng(seed)
    gt = blobs(rng, (16, 40, 36))
    shift = tuple(int(s) for s in rng.integers(-2, 3, size=3))
    moved = np.roll(gt, shift, axis=(0, 1, 2)) & (rng.random(gt.shape) > 0.1)
    pred = moved | blobs(rng, gt.shape, count=1)  # plus a stray blob
    hd, nsd = assert_like_monai(pred, gt, tolerance=tolerance)
    assert hd > 0 and 0 < nsd < 1  # a real disagreement, not a trivial case


def test_overlapping_blobs_match_monai():
    rng = np.random.default_rng(7)
    gt = blobs(rng, (20, 48, 48), count=2, grow=5)
    pred = ndimage.binary_dilation(gt) & (rng.random(gt.shape) > 0.05)
    _, nsd = assert_like_monai(pred, gt)
    assert nsd > 0.5


def test_masks_touching_the_border_match_monai():
    gt = np.zeros((12, 30, 30), bool)
    gt[:5, :10, 20:] = True  # touches three faces of the image
    pred = np.zeros_like(gt)
    pred[2:, :14, 25:] = True
    assert_like_monai(pred, gt)
    assert_like_monai(np.ones_like(gt), gt)  # the whole image is one mask


def test_masks_far_apart_match_monai():
    pred, gt = np.zeros((20, 60, 60), bool), np.zeros((20, 60, 60), bool)
    pred[1:3, 2:6, 2:5] = True
    gt[16:19, 50:57, 52:58] = True
    hd, nsd = assert_like_monai(pred, gt)
    assert nsd == 0 and hd > 50


def test_one_voxel_masks_match_monai():
    pred, gt = np.zeros((8, 10, 12), bool), np.zeros((8, 10, 12), bool)
    pred[3, 4, 5], gt[4, 6, 5] = True, True
    hd, _ = assert_like_monai(pred, gt)
    assert hd == pytest.approx(math.hypot(3.0, 2 * 0.8))
    assert metrics.surface_metrics(pred, pred, SPACING, 2.0) == (0.0, 1.0)


def test_cropping_keeps_the_metrics_of_a_large_volume():
    """A lesion pair in a 100x512x512 scan scores like the same pair in a small image."""
    rng = np.random.default_rng(3)
    pred, gt = blobs(rng, (10, 30, 30)), blobs(rng, (10, 30, 30))
    big_pred, big_gt = np.zeros((100, 512, 512), bool), np.zeros((100, 512, 512), bool)
    big_pred[40:50, 200:230, 300:330], big_gt[40:50, 200:230, 300:330] = pred, gt
    small = metrics.surface_metrics(pred, gt, SPACING, 2.0, empty_penalty_mm=1.0)
    assert metrics.surface_metrics(big_pred, big_gt, SPACING, 2.0, 1.0) == small
    assert metrics.dice(big_pred, big_gt) == metrics.dice(pred, gt)


def test_empty_mask_conventions():
    empty, mask = np.zeros((10, 20, 30), bool), np.zeros((10, 20, 30), bool)
    mask[4:6, 5:9, 10:12] = True
    diagonal = math.sqrt((10 * 3.0) ** 2 + (20 * 0.8) ** 2 + (30 * 0.7) ** 2)
    assert metrics.image_diagonal_mm(empty.shape, SPACING) == pytest.approx(diagonal)
    assert metrics.dice(empty, empty) == 1.0
    assert all(math.isnan(v) for v in metrics.surface_metrics(empty, empty, SPACING, 2.0))
    for pred, gt in ((mask, empty), (empty, mask)):
        assert metrics.dice(pred, gt) == 0.0
        assert metrics.nsd(pred, gt, SPACING, 2.0) == 0.0
        assert metrics.hd95(pred, gt, SPACING) == pytest.approx(diagonal)
        assert metrics.hd95(pred, gt, SPACING, empty_penalty_mm=99.0) == 99.0
        # MONAI agrees on NSD and gives NaN where tumorfm gives the diagonal
        _, hd, nsd = monai_scores(pred, gt, SPACING, 2.0)
        assert nsd == 0.0 and math.isnan(hd)


def test_lesion_counts_on_a_hand_built_case():
    gt, pred = np.zeros((10, 30, 30), bool), np.zeros((10, 30, 30), bool)
    gt[2:4, 2:6, 2:6] = True  # lesion A: found
    gt[6:9, 20:25, 20:25] = True  # lesion B: missed
    pred[3:5, 4:8, 4:8] = True  # overlaps A by a corner
    pred[7:9, 2:4, 25:28] = True  # a false positive
    counts = metrics.lesion_counts(pred, gt)
    assert counts == metrics.LesionCounts(
        gt_lesions=2, detected=1, pred_lesions=2, true_positive_pred=1
    )
    assert (counts.sensitivity, counts.precision, counts.f1) == (0.5, 0.5, 0.5)
    pooled = counts + metrics.LesionCounts(1, 1, 1, 1)
    assert (pooled.sensitivity, pooled.precision) == (2 / 3, 2 / 3)  # pooled, not averaged


def test_lesion_connectivity_and_minimum_volume():
    gt = np.zeros((6, 10, 10), bool)
    gt[1, 1, 1] = gt[2, 2, 2] = True  # touch by a corner only
    gt[3:5, 5:9, 5:9] = True  # 32 voxels
    assert metrics.lesion_counts(gt, gt).gt_lesions == 2  # 26-connected: one lesion + the block
    assert metrics.lesion_counts(gt, gt, connectivity=6).gt_lesions == 3
    # at 1 mm, 0.01 ml = 10 voxels: only the block is left, in gt and pred alike
    counts = metrics.lesion_counts(gt, gt, (1.0, 1.0, 1.0), min_volume_ml=0.01)
    assert counts == metrics.LesionCounts(1, 1, 1, 1)
    with pytest.raises(ValueError, match="connectivity"):
        metrics.lesion_counts(gt, gt, connectivity=8)


def test_lesion_f1_edge_cases():
    assert math.isnan(metrics.LesionCounts().f1)
    assert metrics.LesionCounts(gt_lesions=2).f1 == 0.0  # everything missed
    assert metrics.LesionCounts(pred_lesions=3).f1 == 0.0  # only false positives


def test_patient_detection():
    gt = [True, True, True, False, False]
    pred = [True, True, False, True, False]
    result = metrics.patient_detection(gt, pred)
    assert (result["tp"], result["fn"], result["tn"], result["fp"]) == (2, 1, 1, 1)
    assert result["sensitivity"] == 2 / 3 and result["specificity"] == 0.5
    assert math.isnan(metrics.patient_detection([True], [True])["specificity"])


def test_real_label_map_through_evaluate_matches_monai(tmp_path):
    """TotalSegmentator's 41-class output vs a perturbed copy, class by class."""
    volume = read_volume(CASES / "totalseg_example_seg.nii.gz")
    gt = volume.array
    pred = gt.copy()
    pred[ndimage.binary_dilation(gt == 5, iterations=2)] = 5  # grow one organ over its neighbours
    pred[ndimage.binary_erosion(gt == 2) != (gt == 2)] = 0  # peel another
    pred[gt == 18] = 0  # miss one class entirely
    write_volume(pred, volume.geometry, tmp_path / "case.nii.gz")
    result = evaluate(
        tmp_path / "case.nii.gz",
        CASES / "totalseg_example_seg.nii.gz",
        default_tolerance_mm=3.0,
        progress=False,
    )
    scores = result["cases"][0]["scores"]
    values = sorted(set(np.unique(gt)) - {0})
    assert list(scores) == [str(v) for v in values]
    spacing = volume.geometry.spacing_zyx
    diagonal = metrics.image_diagonal_mm(gt.shape, spacing)
    changed = [v for v in values if ((pred == v) != (gt == v)).any()]
    assert len(changed) >= 5 and all(
        scores[str(v)]["dice"] == 1.0 for v in values if v not in changed
    )
    for value in changed + values[:3]:  # MONAI takes 0.1 s a class: the changed ones and a few more
        dice, hd, nsd = monai_scores(pred == value, gt == value, spacing, 3.0)
        ours = scores[str(value)]
        assert ours["dice"] == pytest.approx(dice, abs=1e-6)
        assert ours["nsd"] == pytest.approx(nsd, abs=1e-3)
        one_empty = (pred == value).any() != (gt == value).any()
        assert ours["hd95"] == pytest.approx(diagonal if one_empty else hd, abs=1e-3)
    assert scores["18"]["dice"] == 0 and scores["18"]["hd95"] == diagonal
