"""Training patches: shapes, determinism, rank slicing, oversampling, weights, targets, errors."""

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml

from tumorfm.data.augment import AugmentConfig, Augmenter
from tumorfm.data.cache import CachedCase, cached_cases
from tumorfm.data.phantom import DEFAULT_SITES, write_phantom_pool
from tumorfm.data.pool import load_pool
from tumorfm.data.preprocess import preprocess_pool
from tumorfm.errors import TumorFMError
from tumorfm.train.loader import PatchBatches, crop, make_loader
from tumorfm.workflows.demo import write_pool_file

LIVER, KIDNEY, MULTI = "phantom_liver", "phantom_kidney", "phantom_multi_organ"
PATCH = (16, 24, 24)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Tiny phantom cache: liver and kidney sites (organ + tumour, 24x32x32), multi-organ 32x40x40.

    Parents make liver the region liver + liver_tumour, kidney_left the region with kidney_tumour.
    """
    tmp = tmp_path_factory.mktemp("loader")
    liver, kidney, multi = DEFAULT_SITES[0], DEFAULT_SITES[1], DEFAULT_SITES[3]
    folders = write_phantom_pool(tmp / "raw", 3, (24, 32, 32), seed=1, sites=(liver, kidney))
    folders += write_phantom_pool(tmp / "raw", 2, (32, 40, 40), seed=1, sites=(multi,))
    path = write_pool_file(folders, tmp / "raw" / "pool.yaml")
    data = yaml.safe_load(path.read_text())
    data["parents"] = {"liver_tumour": "liver", "kidney_tumour": "kidney_left"}
    path.write_text(yaml.safe_dump(data))
    preprocess_pool(load_pool(path), tmp / "cache", workers=1, progress=False)
    summary = json.loads((tmp / "cache" / "pool.json").read_text())
    cases = {d["name"]: cached_cases(tmp / "cache", d["name"]) for d in summary["datasets"]}
    return summary, cases


def batches(pool, datasets=(LIVER, KIDNEY, MULTI), weights=None, **overrides):
    summary, by_name = pool
    cases = [case for name in datasets for case in by_name[name]]
    args = {
        "cases": cases,
        "weights": weights or [1.0] * len(cases),
        "classes": summary["classes"],
        "class_regions": summary["class_regions"],
        "patch_size": PATCH,
        "batch_size": 4,
        "seed": 7,
        **overrides,
    }
    return PatchBatches(**args)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_shapes_and_dtypes(pool):
    k = len(pool[0]["classes"])
    batch = batches(pool)[0]
    assert batch["image"].shape == (4, 1, *PATCH) and batch["image"].dtype == torch.float32
    assert batch["target"].shape == (4, k, *PATCH) and batch["target"].dtype == torch.uint8
    assert set(batch["target"].unique().tolist()) <= {0, 1}
    assert batch["annotated"].shape == (4, k) and batch["annotated"].dtype == torch.bool
    assert len(batch["case_id"]) == len(batch["dataset"]) == 4


def test_cases_smaller_than_the_patch_are_padded(pool):
    patch = (28, 36, 36)  # only the 32x40x40 multi-organ cases hold it
    loader = batches(pool, datasets=(LIVER, MULTI), patch_size=patch, augment=False)
    seen = set()
    for step in range(6):
        batch = loader[step]
        assert batch["image"].shape == (4, 1, *patch)
        for image, dataset in zip(batch["image"], batch["dataset"]):
            seen.add(dataset)
            if dataset == LIVER:  # 24x32x32 in a 28x36x36 patch: zero planes on some side
                ends = [image.movedim(axis, 0)[end] for axis in (1, 2, 3) for end in (0, -1)]
                assert any((plane == 0).all() for plane in ends)
    assert seen == {LIVER, MULTI}


def test_placement_of_a_case_and_of_the_foreground_voxel(pool):
    """nnU-Net's rule centres a case smaller than the patch, and a forced sample's voxel; the
    option puts the voxel anywhere in the patch, with the patch hanging out of the case by up to
    half its size. With augmentation, as training runs: the enlarged crop must not pin it back."""
    summary, by_name = pool
    case = by_name[LIVER][0]
    shape = np.array(case.label().shape)  # 24x32x32 under a 28x36x36 patch
    patch = np.array((28, 36, 36))
    placed = {}
    for placement in ("centred", "anywhere"):
        loader = batches(pool, datasets=(LIVER,), patch_size=tuple(patch), placement=placement)
        margin = (np.array(loader.crop_size) - patch) // 2
        assert (margin > 0).all()  # the augmented path: a crop larger than the patch
        voxels, starts = [], set()
        for i in range(60):
            rng = np.random.default_rng(i)
            start, value = loader._location(shape, case, rng)
            inside = start + margin  # where the patch starts in the case
            label = crop(case.label()[None], inside, tuple(patch), np.int16)
            assert (label == value).any()  # a forced sample holds its label
            where = np.argwhere(label[0] == value)
            voxels.append(where.mean(0))
            free, _ = loader._location(shape, None, rng)
            assert (free + margin < shape).all() and (free + margin + patch > 0).all()  # overlaps
            starts.add(tuple(free))
        placed[placement] = (np.ptp(np.array(voxels), axis=0), starts)
    assert placed["centred"][1] == {tuple(-((np.array(loader.crop_size) - shape) // 2))}
    assert len(placed["anywhere"][1]) > 20
    # the label's centre in the patch: a narrow band centred, most of the patch anywhere
    assert (placed["anywhere"][0][1:] > 0.5 * patch[1:]).all(), placed
    assert (placed["anywhere"][0] > 2 * placed["centred"][0]).all(), placed
    with pytest.raises(ValueError, match="placement 'middle'"):
        batches(pool, placement="middle")


def test_same_step_is_identical_and_steps_differ(pool):
    first, again = batches(pool), batches(pool)  # a new instance stands for a resumed run
    assert_same(first[3], first[3])
    assert_same(first[3], again[3])
    assert not torch.equal(first[3]["image"], first[4]["image"])
    assert not torch.equal(first[3]["image"], batches(pool, seed=8)[3]["image"])


def test_workers_and_resuming_do_not_change_batches(pool):
    loader = batches(pool)
    uninterrupted = list(make_loader(loader, 0, 6, workers=0))
    resumed = list(make_loader(loader, 3, 3, workers=2))
    assert len(resumed) == 3
    for a, b in zip(uninterrupted[3:], resumed):
        assert_same(a, b)


def test_ranks_slice_the_global_batch(pool):
    whole = batches(pool)[5]
    parts = [batches(pool, rank=r, world_size=2)[5] for r in (0, 1)]
    for key, value in whole.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(torch.cat([parts[0][key], parts[1][key]]), value), key
        else:
            assert parts[0][key] + parts[1][key] == value, key
    with pytest.raises(ValueError, match="divisible"):
        batches(pool, batch_size=5, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        batches(pool, rank=2, world_size=2)


def test_forced_samples_hold_their_class_and_reach_rare_tumours(pool):
    summary, by_name = pool
    loader = batches(pool, datasets=(LIVER, KIDNEY), batch_size=6, augment=False)
    present = {v for n in (LIVER, KIDNEY) for c in by_name[n] for v in c.class_locations()}
    assert summary["classes"].index("kidney_tumour") + 1 in present  # a handful of voxels
    forced_seen = set()
    for step in range(60):
        batch = loader[step]
        labels = batch["forced_label"].tolist()
        assert labels[:4] == [0] * 4  # round(6 * 0.67) = 4: samples 4 and 5 are forced
        for sample in (4, 5):
            label = labels[sample]
            assert label > 0
            assert batch["target"][sample, label - 1].any()  # the class region holds the label
            forced_seen.add(label)
    assert forced_seen == present


def test_sampling_weights(pool):
    _, by_name = pool
    n_liver, n_kidney = len(by_name[LIVER]), len(by_name[KIDNEY])
    weights = [1.0] * n_liver + [3.0 * n_liver / n_kidney] * n_kidney  # datasets 1:3
    loader = batches(pool, (LIVER, KIDNEY), weights, batch_size=8, augment=False)
    drawn = [d for step in range(100) for d in loader[step]["dataset"]]
    assert 0.70 < drawn.count(KIDNEY) / len(drawn) < 0.80


def test_targets_use_class_regions(pool):
    classes = pool[0]["classes"]
    liver, tumour = classes.index("liver"), classes.index("liver_tumour")
    left, right, kidney_tumour = (
        classes.index(n) for n in ("kidney_left", "kidney_right", "kidney_tumour")
    )
    loader = batches(pool, datasets=(LIVER, KIDNEY), batch_size=6, augment=False)
    tumour_voxels = 0
    for step in range(20):
        target = loader[step]["target"]
        assert (target[:, liver] >= target[:, tumour]).all()  # the organ includes its tumour
        assert (target[:, left] >= target[:, kidney_tumour]).all()
        assert not (target[:, right] & target[:, kidney_tumour]).any()  # no parent: apart
        tumour_voxels += int(target[:, tumour].sum())
    assert tumour_voxels > 0


def test_annotated_follows_the_dataset(pool):
    summary, _ = pool
    annotated = {d["name"]: d["annotated"] for d in summary["datasets"]}
    batch = batches(pool, batch_size=8)[2]
    assert len(set(batch["dataset"])) > 1
    for mask, dataset in zip(batch["annotated"], batch["dataset"]):
        assert 0 < int(mask.sum()) < len(summary["classes"])
        assert {c for c, a in zip(summary["classes"], mask) if a} == set(annotated[dataset])


def test_mirroring_moves_image_and_target_together(pool):
    plain = batches(pool, batch_size=8, augment=False)
    mirrored = batches(pool, batch_size=8, augment_config=AugmentConfig.mirror_only())
    changed = 0
    for step in range(3):
        a, b = plain[step], mirrored[step]
        assert a["case_id"] == b["case_id"]  # same draws: only the flips differ
        for i in range(8):
            flips = [
                axes
                for n in range(4)
                for axes in itertools.combinations((1, 2, 3), n)
                if torch.equal(a["image"][i].flip(axes), b["image"][i])
            ]
            assert flips, f"step {step} sample {i}: augmented image is not a flip of the patch"
            assert torch.equal(a["target"][i].flip(flips[0]), b["target"][i])
            changed += flips[0] != ()
    assert changed > 0


def test_rotation_and_scaling_move_image_and_labels_together(pool):
    """An image that is its own label mask must still match the label after resampling."""
    label = np.asarray(pool[1][MULTI][0].label())
    spatial = AugmentConfig.mirror_only()
    spatial = replace(spatial, p_rotation=1.0, p_scaling=1.0, label_interpolation="nearest")
    augment = Augmenter(PATCH, spatial)
    crop = np.zeros(augment.crop_size, dtype=np.int16)
    box = tuple(slice(0, min(a, b)) for a, b in zip(crop.shape, label.shape))
    crop[box] = label[box]
    for seed in range(4):
        image, moved = augment((crop > 0).astype(np.float32)[None], crop, seed)
        assert moved.shape == PATCH and (moved > 0).any()
        a, b = image[0] > 0.5, moved > 0
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9  # Dice of image mask vs labels


def test_default_augmentation_changes_images_but_keeps_forced_labels(pool):
    plain = batches(pool, batch_size=6, augment=False)
    augmented = batches(pool, batch_size=6)
    changed, kept, forced = 0, 0, 0
    for step in range(8):
        a, b = plain[step], augmented[step]
        changed += sum(not torch.equal(x, y) for x, y in zip(a["image"], b["image"]))
        for i, label in enumerate(b["forced_label"].tolist()):
            if label:
                forced += 1
                kept += bool(b["target"][i, label - 1].any())
    assert changed > 8 * 6 // 2
    assert kept >= 0.8 * forced


def test_elastic_and_nearest_labels_run(pool):
    config = replace(AugmentConfig(), p_elastic=1.0, p_rotation=1.0, label_interpolation="nearest")
    batch = batches(pool, augment_config=config)[0]
    assert batch["image"].shape == (4, 1, *PATCH)
    assert set(batch["target"].unique().tolist()) <= {0, 1}


def test_patch_far_larger_than_every_case_is_one_line_error(pool):
    with pytest.raises(
        TumorFMError,
        match=r"^patch 72x64x64 is more than twice every case along an axis "
        r"\(largest case 32x40x40\); choose a smaller --patch$",
    ):
        batches(pool, patch_size=(72, 64, 64))


def test_patch_somewhat_larger_than_every_case_is_padded_with_a_note(pool, capsys):
    batch = batches(pool, patch_size=(48, 40, 40))[0]  # as nnU-Net pads thin scans
    assert batch["image"].shape[2:] == (48, 40, 40)
    assert "patch 48x40x40 is larger than every case (largest case 32x40x40)" in (
        capsys.readouterr().err
    )


def test_channel_counts_must_agree(pool):
    _, by_name = pool
    case = by_name[LIVER][0]
    shape = case.properties["image_shape"]
    brain = CachedCase(
        case.folder, {**case.properties, "dataset": "brain", "image_shape": [4, *shape[1:]]}
    )
    with pytest.raises(
        TumorFMError, match=r"'phantom_liver' \(1 channel\) and 'brain' \(4 channels\)"
    ):
        PatchBatches(
            [case, brain], [1.0, 1.0], pool[0]["classes"], pool[0]["class_regions"], PATCH, 2, 0
        )


def test_augmentation_leaves_global_generators_alone(pool):
    loader = batches(pool)
    torch.manual_seed(123)
    np.random.seed(123)
    loader[0]
    after_torch, after_numpy = torch.rand(1), np.random.rand()
    torch.manual_seed(123)
    np.random.seed(123)
    assert torch.equal(after_torch, torch.rand(1)) and after_numpy == np.random.rand()
