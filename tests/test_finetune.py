"""Fine-tuning a pretrained bundle on a new dataset: weights carried over, modes, bad input."""

import json
import shutil

import pytest
import torch
from conftest import BRAIN, SARCOMA, assert_one_line_error, run_cli
from safetensors.torch import load_file

from tumorfm.data.classes import class_name
from tumorfm.errors import TumorFMError
from tumorfm.eval.model import evaluate_model
from tumorfm.infer.predict import predict
from tumorfm.infer.predictor import PredictOptions
from tumorfm.model import create_model
from tumorfm.model.bundle import save_bundle
from tumorfm.train.finetune import finetune
from tumorfm.train.logs import read_rows
from tumorfm.workflows.study import ARMS, transfer_study

QUICK = dict(
    iterations_per_epoch=2,
    patch_size=(16, 32, 32),
    batch_size=2,
    val_every=1,
    val_batches=1,
    precision="fp32",
)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A 'pretrained' tsfm-tiny that knows the sarcoma class among others (random weights)."""
    torch.manual_seed(0)
    model = create_model("tsfm-tiny", 1, 3, (32, 32, 32), deep_supervision=True)
    folder = tmp_path_factory.mktemp("pretrained") / "bundle"
    return save_bundle(folder, model, ["liver", "sarcoma", "kidney"], ["CT"], "tsfm-tiny")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("finetune-cache") / "cache"


def _run(pretrained, cache, out, mode, **changes):
    settings = {**QUICK, **changes}
    return finetune(SARCOMA, pretrained, out, 1, mode, cache=cache, workers=1, **settings)


def test_full_finetune_gives_a_bundle_predict_uses(pretrained, cache, tmp_path):
    _run(pretrained, cache, tmp_path / "run", "full", warmup_epochs=0)
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["classes"] == ["sarcoma"]
    assert settings["init"]["classes_from_pretrained"] == ["sarcoma"]
    assert settings["trainable_parameters"] == settings["parameters"]
    meta = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert list(meta["plan"]["datasets"]) == ["sts_ct"] and meta["classes"] == ["sarcoma"]
    case = next((SARCOMA / "imagesTr").iterdir())
    options = PredictOptions(fast=True, precision="fp32")
    results = predict(case, tmp_path / "run" / "last", None, options, progress=False)
    (result,) = results.values()
    assert result.labels == {"sarcoma": 1} and result.label.ndim == 3


@pytest.mark.parametrize("mode", ["head", "decoder", "adapter", "lora"])
def test_modes_train_only_their_parameters(pretrained, cache, tmp_path, mode, capfd):
    _run(pretrained, cache, tmp_path / mode, mode, lr=0.5)
    settings = json.loads((tmp_path / mode / "settings.json").read_text())
    assert 0 < settings["trainable_parameters"] < settings["parameters"]
    counts = f"{settings['trainable_parameters']:,} of {settings['parameters']:,}"
    assert f"mode {mode}: {counts} parameters train" in capfd.readouterr().err
    before = load_file(str(pretrained / "model.safetensors"))
    after = load_file(str(tmp_path / mode / "last" / "model.safetensors"))
    assert torch.equal(before["stem.weight"], after["stem.weight"])  # the encoder is frozen
    # the sarcoma head channel (pretrained channel 1) trained in every mode
    assert not torch.equal(after["head.weight"][0], before["head.weight"][1])
    decoder = "decoder.0.blocks.0.conv1.weight"
    moved = not torch.equal(before[decoder], after[decoder])
    assert moved == (mode == "decoder")
    if mode in ("adapter", "lora"):
        assert any(("adapter" in k or "lora" in k) for k in after)


def test_warmup_trains_heads_first(pretrained, cache, tmp_path):
    _run(pretrained, cache, tmp_path / "warm", "full", warmup_epochs=1)
    settings = json.loads((tmp_path / "warm" / "settings.json").read_text())
    assert settings["trainable_parameters"] < settings["parameters"] / 10  # heads only
    before = load_file(str(pretrained / "model.safetensors"))
    after = load_file(str(tmp_path / "warm" / "last" / "model.safetensors"))
    assert torch.equal(before["stem.weight"], after["stem.weight"])


def test_class_names_and_mapping(pretrained, tmp_path):
    assert class_name("Liver tumor") == "liver_tumor" and class_name("2nd") == "class_2nd"
    other = tmp_path / "other"
    shutil.copytree(SARCOMA, other)
    meta = json.loads((other / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "mass": 1}
    (other / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(TumorFMError, match="--map NAME=BUNDLE_CLASS"):
        finetune(other, pretrained, tmp_path / "r1", 1, "full", workers=1, **QUICK)
    with pytest.raises(TumorFMError, match="'tumour' is not a class"):
        finetune(other, pretrained, tmp_path / "r2", 1, "full", {"tumour": "x"}, workers=1)


def test_bad_input_is_one_line(pretrained, tmp_path):
    args = ["finetune", SARCOMA, "--from", pretrained, "-o", tmp_path / "r"]
    assert_one_line_error(run_cli(*args, "--mode", "prompt"), "mode 'prompt'", "lora")
    assert_one_line_error(run_cli(*args, "--map", "sarcoma"), "NAME=VALUE")
    empty = tmp_path / "empty"
    shutil.copytree(SARCOMA, empty)
    for label in (empty / "labelsTr").iterdir():
        label.unlink()
    result = run_cli("finetune", empty, "--from", pretrained, "-o", tmp_path / "r3")
    assert_one_line_error(result, "no labelled case")
    result = run_cli("finetune", SARCOMA, "--from", tmp_path / "nothing", "-o", tmp_path / "r4")
    assert_one_line_error(result, "bundle not found")


@pytest.fixture(scope="module")
def finetuned(pretrained, cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("finetuned") / "run"
    _run(pretrained, cache, run, "full")
    return run


def test_evaluate_model_scores_held_out_cases(finetuned, tmp_path):
    val = json.loads((finetuned / "split.json").read_text())["sts_ct"]["val"]
    options = PredictOptions(fast=True, precision="fp32")
    result = evaluate_model(finetuned / "last", SARCOMA, tmp_path / "ev", val, None, options)
    assert [case["case"] for case in result["cases"]] == val
    assert list(result["aggregates"]) == ["sarcoma"]
    assert (tmp_path / "ev" / "evaluation" / "metrics.csv").is_file()
    assert (tmp_path / "ev" / "predictions" / f"{val[0]}.nii.gz").is_file()


def test_zero_shot_matches_classes_by_name(finetuned, tmp_path):
    args = ["evaluate-model", finetuned / "last", BRAIN, "-o", tmp_path / "z", "--fast"]
    assert_one_line_error(run_cli(*args), "none of its classes (tumour)", "--map")
    result = run_cli(*args, "--map", "tumour=sarcoma")
    assert result.returncode == 0, result.stderr
    assert "| tumour |" in result.stdout  # scored under the dataset's own name


def test_transfer_study_writes_table_csv_and_plot(pretrained, tmp_path):
    quick = {k: v for k, v in QUICK.items() if k not in ("iterations_per_epoch", "patch_size")}
    quick["plan_config"] = "lowres"  # a few windows per held-out scan, not hundreds
    study = tmp_path / "study"
    rows = transfer_study(
        SARCOMA, pretrained, study, [1], 2, (16, 32, 32), workers=1, progress=False, **quick
    )
    assert [(r["arm"], r["epochs"], r["iterations"]) for r in rows] == [
        ("pretrained", 1, 2),
        ("scratch", 1, 2),
    ]
    init = [json.loads((study / f"{arm}-1" / "settings.json").read_text())["init"] for arm in ARMS]
    assert init[0]["classes_from_pretrained"] == ["sarcoma"] and init[1] is None
    assert "| pretrained | 1 | 2 |" in (study / "transfer.md").read_text()
    assert (study / "transfer.csv").read_text().startswith("arm,epochs,iterations,sarcoma_dice")
    assert (study / "transfer.svg").read_text().count("<polyline") == 2
    # finished runs are reused (same numbers, no training); a reference row scores a folder of
    # predictions of the same cases: here the pretrained run's own, so its scores must agree
    own = study / "pretrained-1" / "evaluation" / "predictions"
    again = transfer_study(
        SARCOMA, pretrained, study, [1], 2, (16, 32, 32), workers=1, progress=False,
        references={"copy": own}, **quick,
    )  # fmt: skip
    assert again[:2] == rows
    assert again[2]["arm"] == "copy" and again[2]["iterations"] is None
    assert again[2]["sarcoma_dice"] == pytest.approx(rows[0]["sarcoma_dice"], abs=1e-9)
    assert "| copy | - | - |" in (study / "transfer.md").read_text()
    assert "stroke-dasharray" in (study / "transfer.svg").read_text()


def test_transfer_study_k_folds_hold_out_every_case_once(pretrained, tmp_path):
    quick = {k: v for k, v in QUICK.items() if k not in ("iterations_per_epoch", "patch_size")}
    quick["plan_config"] = "lowres"  # a few windows per held-out scan, not hundreds
    study = tmp_path / "study"
    rows = transfer_study(
        SARCOMA, pretrained, study, [1], 2, (16, 32, 32), workers=1, progress=False, folds=2,
        **quick,
    )  # fmt: skip
    assert [r["arm"] for r in rows] == list(ARMS)
    held = [
        next(iter(json.loads((study / f"scratch-1-fold{f}" / "split.json").read_text()).values()))
        for f in range(2)
    ]
    assert not set(held[0]["val"]) & set(held[1]["val"])  # disjoint hold-outs ...
    every = sorted(p.name.split(".")[0] for p in (SARCOMA / "labelsTr").iterdir())
    assert sorted(held[0]["val"] + held[1]["val"]) == every  # ... covering every case
    scored = json.loads((study / "scratch-1-folds" / "evaluation" / "metrics.json").read_text())
    assert sorted(c["case"] for c in scored["cases"]) == every
    with pytest.raises(TumorFMError, match="--folds 1"):
        transfer_study(SARCOMA, pretrained, study, [1], 2, folds=1)


def test_an_interrupted_study_run_is_resumed_not_scored_half_trained(pretrained, tmp_path):
    """A run killed after its first of two epochs holds a last/ bundle: the study must resume it
    (not score a half-trained model), and restart one killed before its first epoch."""
    from tumorfm.workflows.study import _train

    quick = {k: v for k, v in QUICK.items() if k != "iterations_per_epoch"}
    args = dict(dataset=SARCOMA, bundle=pretrained, cache=tmp_path / "cache", workers=1,
                iterations_per_epoch=2, new_head=True, **quick)  # fmt: skip
    killed = tmp_path / "pretrained-2"
    finetune(out=killed, epochs=2, progress=False, stop_after_epoch=0, **args)
    assert [r["epoch"] for r in read_rows(killed)] == [0] and (killed / "last").is_dir()
    early = tmp_path / "scratch-2"  # killed during its first epoch: settings written, no state
    early.mkdir()
    shutil.copy(killed / "settings.json", early / "settings.json")
    for run in (killed, early):
        _train(run, 2, False, **args)
        assert [r["epoch"] for r in read_rows(run)] == [0, 1], run  # one epoch on, or both
    stamp = (killed / "log.jsonl").stat().st_mtime_ns
    _train(killed, 2, False, **args)  # finished: kept as it is
    assert (killed / "log.jsonl").stat().st_mtime_ns == stamp


def test_finetune_plans_as_the_bundle_was_planned(tmp_path):
    """A bundle trained on 3d_lowres plans fine-tunes at lowres, sized for its own patch."""
    torch.manual_seed(0)
    model = create_model("tsfm-tiny", 1, 1, (16, 32, 32), deep_supervision=True)
    plan = {"datasets": {"other": {"configuration": "3d_lowres"}}}
    bundle = save_bundle(tmp_path / "low", model, ["sarcoma"], ["CT"], "tsfm-tiny", plan=plan)
    quick = {k: v for k, v in QUICK.items() if k != "patch_size"}
    finetune(SARCOMA, bundle, tmp_path / "run", 1, "full", workers=1, progress=False, **quick)
    meta = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    (run_plan,) = meta["plan"]["datasets"].values()
    assert run_plan["configuration"] == "3d_lowres" and run_plan["patch_size"] == [16, 32, 32]
    assert meta["model"]["patch_size"] == [16, 32, 32]
    full = finetune(SARCOMA, bundle, tmp_path / "run2", 1, "full", workers=1, progress=False,
                    plan_config="fullres", **QUICK)  # fmt: skip
    assert full["step"] == 2
    meta = json.loads((tmp_path / "run2" / "last" / "config.json").read_text())
    assert next(iter(meta["plan"]["datasets"].values()))["configuration"] == "3d_fullres"
