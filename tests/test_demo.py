import json
from pathlib import Path

from conftest import BRAIN, SARCOMA, assert_shipped_prediction, run_cli

from tumorfm.data.cache import cached_cases
from tumorfm.data.io import read_volume
from tumorfm.model.bundle import models_folder


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = run_cli(
        "demo", "-o", out, "--workers", "1", "--cases", "3", "--test-cases", "2",
        "--epochs", "1", "--finetune-epochs", "1", "--iterations", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "demo.json").read_text())
    names = [d["name"] for d in summary["pretrain"]["pool"]["datasets"]]
    assert names == ["phantom_kidney", "phantom_pancreas", "phantom_multi_organ"]
    for name in names:
        assert len(cached_cases(out / "cache" / "pretrain", name)) == 3
    assert [d["name"] for d in summary["finetune"]["pool"]["datasets"]] == ["phantom_liver"]
    assert summary["finetune"]["last_epoch"]["step"] == 2
    # fine-tuning started from the pretrained weights, liver's head channel included
    init = json.loads((out / "finetune" / "settings.json").read_text())["init"]
    assert init["classes_from_pretrained"] == ["liver"] and init["new_classes"] == ["liver_tumour"]
    assert init["skipped_tensors"] == []
    # the unseen test cases were segmented in their own geometry and scored
    for case in ("liver_000", "liver_001"):
        pred = read_volume(out / "predictions" / f"{case}.nii.gz")
        gt = read_volume(out / "test" / "Dataset901_PhantomLiver" / "labelsTr" / f"{case}.nii.gz")
        assert pred.geometry.close_to(gt.geometry) and pred.array.shape == gt.array.shape
    assert set(summary["dice"]) == {"liver", "liver_tumour"}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "liver_tumour" in html
    assert "demo finished" in result.stdout and "report.html" in result.stdout
    steps = summary["step_seconds"]  # each step timed, the seven adding up to the whole
    assert list(steps) == ["phantoms", "check", "pretrain", "finetune", "predict",
                           "evaluate_and_report", "real_scans"]  # fmt: skip
    assert all(v >= 0 for v in steps.values()) and steps["pretrain"] > 0
    assert abs(sum(steps.values()) - summary["seconds"]) < 1.0
    assert "steps: phantoms " in result.stdout
    # then the shipped model segmented tests/data's real scans, which it never trained on
    real = summary["real_scans"]
    assert real["model"] == "tsfm-real-lowres"
    assert set(real["dice"]) == {"sarcoma_ct", "brain_mr"}
    assert real["dice"]["sarcoma_ct"]["soft_tissue_sarcoma"] > 0.4  # measured 0.49
    for page in real["reports"].values():
        assert Path(page).read_text().count("data:image/png;base64,") >= 2
    # each real scan in its own geometry, its label named and numbered as in the bundle, at the
    # bundle's calibrated threshold (the CLI on a sarcoma: test_shipped)
    config = json.loads((models_folder() / real["model"] / "config.json").read_text())
    for plan, folder in (("sarcoma_ct", SARCOMA), ("brain_mr", BRAIN)):
        predicted = out / "real" / plan
        assert_shipped_prediction(config, plan, predicted)
        assert json.loads((predicted / "predict.json").read_text())["settings"]["mirror"] is False
        truths = sorted((folder / "labelsTr").iterdir())
        assert sorted(p.name for p in predicted.glob("*.nii.gz")) == [t.name for t in truths]
        for truth in truths:
            pred = read_volume(predicted / truth.name)
            assert pred.geometry.close_to(read_volume(truth).geometry), truth.name
