"""Online synthesis: a pool dataset's `synthesis` block puts tumours into training patches of a real
CT's liver, deterministically per step, marks the tumour class annotated, and trains."""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from conftest import CASES

from tumorfm.data.cache import cached_cases
from tumorfm.data.pool import load_pool
from tumorfm.data.preprocess import preprocess_pool
from tumorfm.errors import TumorFMError
from tumorfm.infer.predictor import Predictor
from tumorfm.train.config import make_config
from tumorfm.train.loader import PatchBatches, synthesis_draw
from tumorfm.train.trainer import pretrain

PATCH = (16, 48, 48)


def _abdomen(root):
    """nnU-Net raw dataset: the real CT three times, its liver (TotalSegmentator's 5) as label 1."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    seg = sitk.ReadImage(str(CASES / "totalseg_example_seg.nii.gz"))
    liver = sitk.Cast(seg == 5, sitk.sitkUInt8)
    for i in range(3):
        image = root / "imagesTr" / f"c{i}_0000.nii.gz"
        shutil.copy(CASES / "totalseg_example_ct_sm.nii.gz", image)
        sitk.WriteImage(liver, str(root / "labelsTr" / f"c{i}.nii.gz"))
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
            "numTraining": 3, "file_ending": ".nii.gz"}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _pool_file(tmp, synthesis):
    path = tmp / "pool.yaml"
    entry = {"name": "abdomen", "path": str(tmp / "Dataset900_Abdomen"), "labels": {1: "liver"}}
    path.write_text(yaml.safe_dump({"name": "p", "datasets": [{**entry, "synthesis": synthesis}]}))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("online")
    _abdomen(tmp / "Dataset900_Abdomen")
    spec = {"organ": "liver", "tumour": "liver_tumour", "probability": 1.0, "size": "small"}
    preprocess_pool(load_pool(_pool_file(tmp, spec)), tmp / "cache", progress=False)
    return tmp / "cache"


def _batches(cache, synthesis=True):
    from tumorfm.synth.online import online_specs

    pool = json.loads((cache / "pool.json").read_text())
    cases = cached_cases(cache, "abdomen")
    return PatchBatches(
        cases, [1.0] * len(cases), pool["classes"], pool["class_regions"], PATCH, 4, seed=5,
        augment=False, synthesis=online_specs(cache, pool) if synthesis else None,
    )  # fmt: skip


def test_the_pool_adds_the_tumour_class_and_the_values_it_paints(cache):
    pool = json.loads((cache / "pool.json").read_text())
    assert pool["classes"] == ["liver", "liver_tumour"]
    (dataset,) = pool["datasets"]
    assert dataset["synthesis"]["organ_value"] == 1 and dataset["synthesis"]["tumour_value"] == 2
    assert dataset["annotated"] == ["liver"]  # real labels only: synthesis annotates per sample


def test_patches_get_darker_tumours_in_the_liver_marked_annotated(cache):
    real, synthetic = _batches(cache, synthesis=False)[3], _batches(cache)[3]
    assert synthetic["case_id"] == real["case_id"]  # the case draw is untouched
    tumour = synthetic["target"][:, 1].bool()
    assert tumour.any() and synthetic["annotated"][:, 1].all()
    assert not real["annotated"][:, 1].any() and not real["target"][:, 1].any()
    liver = synthetic["target"][:, 0].bool() & ~tumour
    gap = synthetic["image"][:, 0][liver].median() - synthetic["image"][:, 0][tumour].mean()
    stats = json.loads((cache / "abdomen" / "plan.json").read_text())["intensity_properties"][0]
    assert gap * stats["std"] > 20  # in HU: the engine's CT tumours are 30-80 HU darker
    again = _batches(cache)[3]
    assert torch.equal(again["image"], synthetic["image"])  # a pure function of (seed, step)
    assert not torch.equal(_batches(cache)[4]["target"], synthetic["target"])


def test_the_samples_drawn_for_synthesis_are_the_only_ones_that_change(cache):
    """synthesis_draw is the loader's rule: benchmarks count a run's synthetic patches by it."""
    batches, real = _batches(cache), _batches(cache, synthesis=False)
    for spec in batches.synthesis.values():
        spec["probability"] = 0.5
    drawn = []
    for step in range(3):
        with_synthesis, without = batches[step], real[step]
        for i in range(4):
            drawn.append(synthesis_draw(5, step, i, 0.5)[0])
            same = torch.equal(with_synthesis["image"][i], without["image"][i])
            assert same != drawn[-1], (step, i)
    assert any(drawn) and not all(drawn)


def test_pretraining_with_synthesis_runs_and_validates_on_real_patches(cache, tmp_path):
    config = make_config("cpu", epochs=1, model="tsfm-tiny", patch_size=PATCH, batch_size=2,
                         iterations_per_epoch=2, val_every=1, val_batches=1, workers=0,
                         precision="fp32")  # fmt: skip
    row = pretrain(cache, tmp_path / "run", config, progress=False)
    assert row["epoch"] == 0 and np.isfinite(row["train_loss"])
    assert set(row["val_dice"]["abdomen"]) == {"liver"}  # validation: the real label only
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert "liver_tumour" in json.dumps(settings)
    # what it learnt from synthesis it predicts: the plan's classes include the tumour
    assert Predictor.from_bundle(tmp_path / "run" / "last").labels == {
        "liver": 1,
        "liver_tumour": 2,
    }


@pytest.mark.parametrize(
    "synthesis, problem",
    [
        ({"organ": "kidney", "tumour": "kidney_tumour"}, "organ 'kidney' is not a class"),
        ({"organ": "liver", "tumour": "liver"}, "must differ from its organ"),
        ({"organ": "liver", "tumour": "Liver Tumour"}, "synthesis.tumour"),
        ({"organ": "liver", "tumour": "t", "probability": 0}, "synthesis.probability"),
        ({"organ": "liver", "tumour": "t", "engine": "gan"}, "synthesis.engine"),
        ({"organ": "liver", "tumour": "t", "sise": "small"}, "synthesis.sise"),
        ({"organ": "liver", "tumour": "t", "shift_hu": [10, -10]}, "shift_hu [10.0, -10.0]"),
        ({"organ": "liver", "tumour": "t", "texture_hu": [-5, 10]}, "texture_hu [-5.0, 10.0]"),
        ({"organ": "liver", "tumour": "t", "shift_hu": [".nan", 1]}, "synthesis.shift_hu"),
    ],
)
def test_bad_synthesis_blocks(tmp_path, synthesis, problem):
    _abdomen(tmp_path / "Dataset900_Abdomen")
    path = _pool_file(tmp_path, synthesis)
    with pytest.raises(TumorFMError) as caught:
        load_pool(path)
    assert problem in str(caught.value) and str(path) in str(caught.value)


def _looks_file(path, **change):
    look = {"shift_hu": -5.0, "texture_hu": 12.0, "quantiles": list(range(-6, 7))}
    path.write_text(json.dumps({"cases": {"a": {**look, **change}}}))
    return path


def test_a_pool_takes_measured_looks_into_its_cache(tmp_path):
    """synthesis.looks: a `synth appearance -o` file beside the pool; the pool's synthesis (and
    so the cache's pool.json) holds the looks themselves, not the path."""
    _abdomen(tmp_path / "Dataset900_Abdomen")
    _looks_file(tmp_path / "looks.json")
    pool = load_pool(_pool_file(tmp_path, {"organ": "liver", "tumour": "t", "looks": "looks.json"}))
    (dataset,) = pool.datasets
    spec = pool.synthesis(dataset)
    assert spec["looks"] == [json.loads((tmp_path / "looks.json").read_text())["cases"]["a"]]


@pytest.mark.parametrize(
    "synthesis, looks, problem",
    [
        ({"looks": "looks.json", "shift_hu": [0, 1]}, {}, "not both"),
        ({"looks": "looks.json", "engine": "diffusion", "model": "m"}, {}, "procedural engine"),
        ({"looks": "missing.json"}, {}, "missing.json: missing"),
        ({"looks": "looks.json"}, {"quantiles": [1, 0]}, "non-decreasing"),
    ],
)
def test_bad_looks_in_a_pool(tmp_path, synthesis, looks, problem):
    _abdomen(tmp_path / "Dataset900_Abdomen")
    _looks_file(tmp_path / "looks.json", **looks)
    path = _pool_file(tmp_path, {"organ": "liver", "tumour": "t", **synthesis})
    with pytest.raises(TumorFMError) as caught:
        load_pool(path)
    assert problem in str(caught.value) and str(path) in str(caught.value)


def test_finetune_synth_puts_sarcomas_into_soft_tissue(tmp_path):
    """--synth HU=LOW,HIGH:CLASS: tumours of a class the dataset annotates, in unlabelled tissue."""
    from conftest import SARCOMA, assert_one_line_error, run_cli

    from tumorfm.model.bundle import save_bundle
    from tumorfm.model.presets import create_model
    from tumorfm.synth.online import online_specs

    torch.manual_seed(0)
    model = create_model("tsfm-tiny", 1, 1, (16, 32, 32), deep_supervision=True)
    bundle = save_bundle(tmp_path / "bundle", model, ["sarcoma"], ["CT"], "tsfm-tiny")
    args = ["finetune", SARCOMA, "--from", bundle, "--epochs", "1", "--iterations", "2",
            "--patch", "16", "32", "32", "--precision", "fp32", "--workers", "1"]  # fmt: skip
    run = tmp_path / "run"
    result = run_cli(*args, "-o", run, "--synth", "HU=-20,100:sarcoma")
    assert result.returncode == 0, result.stderr
    spec = yaml.safe_load((run / "pool.yaml").read_text())["datasets"][0]["synthesis"]
    assert spec == {"organ_hu": [-20.0, 100.0], "tumour": "sarcoma"}
    pool = json.loads((run / "cache" / "pool.json").read_text())
    assert pool["classes"] == ["sarcoma"]
    cases = cached_cases(run / "cache", pool["datasets"][0]["name"])

    def sarcoma_voxels(synthesis):
        batches = PatchBatches(
            cases, [1.0] * len(cases), pool["classes"], pool["class_regions"], PATCH, 4, seed=2,
            augment=False, oversample_foreground=0.0, synthesis=synthesis,
        )  # fmt: skip
        return sum(int(batches[step]["target"].sum()) for step in range(3))

    assert sarcoma_voxels(online_specs(run / "cache", pool)) > sarcoma_voxels(None)
    for synth, problem in [
        ("sarcoma", "expected ORGAN:TUMOUR"),
        ("HU=a,b:sarcoma", "expected HU=LOW,HIGH"),
        ("liver:liver_tumour", "organ 'liver' is not a class this dataset annotates"),
    ]:
        result = run_cli(*args, "-o", tmp_path / synth.replace(":", "-"), "--synth", synth)
        assert_one_line_error(result, problem)
