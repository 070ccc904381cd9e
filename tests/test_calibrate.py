"""`tumorfm model calibrate`: a class's decision threshold chosen on labelled scans, stored in the
bundle, and used by predict and the interactive session instead of 0.5."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import CASES, assert_one_line_error, ct_bundle, run_cli

from tumorfm.errors import TumorFMError
from tumorfm.eval import metrics
from tumorfm.eval.calibrate import GRID, best_threshold, calibrate, dice_per_threshold
from tumorfm.interactive import local

CT = CASES / "totalseg_example_ct_sm.nii.gz"
CASE = "totalseg_example_ct_sm"
FP32 = ("--device", "cpu", "--precision", "fp32", "--no-mirror")  # one forward a window


def test_dice_per_threshold_is_dice_at_every_threshold():
    rng = np.random.default_rng(0)
    probability = rng.random((6, 20, 20)).astype(np.float16)  # as predict saves them
    reference = rng.random((6, 20, 20)) < 0.3
    curve = dice_per_threshold(probability, reference)
    expected = [metrics.dice(probability.astype(np.float32) >= t, reference) for t in GRID]
    np.testing.assert_allclose(curve, expected, atol=1e-12)
    # nothing to find: 1 where the mask is empty too, 0 where it is not
    empty = dice_per_threshold(np.full((2, 2, 2), 0.3, np.float32), np.zeros((2, 2, 2), bool))
    assert list(empty) == [0.0 if t <= 0.3 else 1.0 for t in GRID]


def test_of_equal_thresholds_the_one_nearest_half_wins():
    curve = np.zeros(len(GRID))
    curve[[GRID.index(0.3), GRID.index(0.6), GRID.index(0.9)]] = 0.8
    assert best_threshold(curve) == 0.6
    curve[GRID.index(0.9)] = 0.81
    assert best_threshold(curve) == 0.9


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """A random-weights bundle, its probabilities on the small TotalSegmentator CT, and a
    reference that is exactly its mask at one threshold of the grid (not 0.5)."""
    root = tmp_path_factory.mktemp("calibrate")
    bundle = ct_bundle(root / "bundle", 1, {})
    out = root / "pred"
    run_cli("predict", "-i", CT, "-o", out, "-m", bundle, "--save-probabilities", *FP32)
    probability = np.load(out / f"{CASE}_probabilities.npz")["probabilities"][0]
    p = probability.astype(np.float32)
    counts = [np.count_nonzero(p >= t) for t in GRID]
    distinct = [
        t for i, t in enumerate(GRID[1:-1], 1)
        if counts[i - 1] > counts[i] > counts[i + 1] > 0 and t != 0.5
    ]  # fmt: skip
    assert distinct, f"random weights gave too narrow probabilities: {counts}"
    chosen = distinct[-1]
    labels = root / "labels"
    labels.mkdir()
    image = sitk.ReadImage(str(CT))
    reference = sitk.GetImageFromArray((p >= chosen).astype(np.uint8))
    reference.CopyInformation(image)
    sitk.WriteImage(reference, str(labels / f"{CASE}.nii.gz"))
    return bundle, out, labels, chosen, p


def test_calibrate_stores_the_threshold_and_predict_uses_it(predicted, tmp_path):
    bundle, out, labels, chosen, p = predicted
    bundle = shutil.copytree(bundle, tmp_path / "bundle")
    run = out.parent / "pred-here"
    shutil.copytree(out, run, dirs_exist_ok=True)
    record = json.loads((run / "predict.json").read_text())
    record["settings"]["bundle"] = str(bundle)  # this test's copy of the bundle
    (run / "predict.json").write_text(json.dumps(record))

    dry = calibrate(run, labels, write=False)
    assert dry["classes"]["tumour"]["threshold"] == chosen
    assert "thresholds" not in json.loads((bundle / "config.json").read_text())["extra"]
    assert not (run / "calibration.json").exists()

    result = run_cli("model", "calibrate", run, labels)
    assert result.returncode == 0, result.stderr
    assert f"threshold {chosen:.2f}, mean Dice 1.000 over 1 scan(s)" in result.stdout
    extra = json.loads((bundle / "config.json").read_text())["extra"]
    assert extra["thresholds"] == {"ct_site": {"tumour": chosen}}
    assert extra["calibration"]["ct_site"]["tumour"]["mean_dice"] == 1.0
    written = json.loads((run / "calibration.json").read_text())["classes"]["tumour"]
    assert written["mean_dice_at_0.5"] < 1.0 and len(written["mean_dice_per_threshold"]) == 19
    assert written["median_volume_ratio"] == 1.0 != written["median_volume_ratio_at_0.5"]

    again = tmp_path / "again"
    run_cli("predict", "-i", CT, "-o", again, "-m", bundle, *FP32)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(again / f"{CASE}.nii.gz")))
    sure = np.abs(p - chosen) > 1e-3  # p is float16 as saved; predict cut its float32 values
    assert ((label > 0) == (p >= chosen))[sure].all()
    assert ((label > 0) != (p >= 0.5)).sum() > 0.01 * label.size
    settings = json.loads((again / "predict.json").read_text())["settings"]
    assert settings["thresholds"] == {"tumour": chosen}

    from tumorfm.interactive import Session

    session = Session.from_bundle(bundle, device="cpu", precision="fp32")
    assert session.threshold == chosen


def test_local_clicks_start_from_the_threshold():
    probability = np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10)
    assert (local.refine(probability, [], threshold=0.7) == (probability >= 0.7)).all()
    assert (local.refine(probability, []) == (probability >= 0.5)).all()


def test_calibrate_refuses_what_it_cannot_use(predicted, tmp_path):
    _, out, labels, chosen, _ = predicted
    plain = shutil.copytree(out, tmp_path / "plain")
    record = json.loads((plain / "predict.json").read_text())
    record["settings"]["outputs"]["probabilities"] = False  # as predict without the flag writes
    (plain / "predict.json").write_text(json.dumps(record))
    with pytest.raises(TumorFMError, match="--save-probabilities"):
        calibrate(plain, labels, write=False)
    with pytest.raises(TumorFMError, match="no predict.json"):
        calibrate(labels, labels, write=False)
    named = tmp_path / "named"
    shutil.copytree(labels, named)
    (named / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    result = run_cli("model", "calibrate", out, named, "--dry-run")
    assert_one_line_error(result, "'tumour'", "--map tumour=")
    found = calibrate(out, named, {"tumour": "liver"}, write=False)
    assert found["classes"]["tumour"]["threshold"] == chosen
    with pytest.raises(TumorFMError, match="--map organ"):
        calibrate(out, named, {"organ": "liver"}, write=False)
    bundle = shutil.copytree(predicted[0], tmp_path / "bundle")
    blocked = shutil.copytree(out, tmp_path / "blocked")  # moved: its files are found beside it
    record = json.loads((blocked / "predict.json").read_text())
    record["settings"]["bundle"] = str(bundle)
    (blocked / "predict.json").write_text(json.dumps(record))
    (blocked / "calibration.json").mkdir()
    before = (bundle / "config.json").read_text()
    with pytest.raises(TumorFMError, match="calibration.json: cannot write"):
        calibrate(blocked, labels)
    assert (bundle / "config.json").read_text() == before  # nothing half-written


@pytest.mark.parametrize("bad", [1.5, 0, "high", float("nan"), True, {"organ": 0.6}, [0.6]])
def test_a_damaged_threshold_in_a_bundle_is_refused(bad):
    from tumorfm.infer.predictor import stored_thresholds

    stored = bad if isinstance(bad, (dict, list)) else {"tumour": bad}
    with pytest.raises(TumorFMError, match="extra.thresholds.ct_site"):
        stored_thresholds({"thresholds": {"ct_site": stored}}, "ct_site", ["tumour"], Path("b"))
    assert stored_thresholds({}, "ct_site", ["tumour"], Path("b")) == {}


def test_predict_with_a_damaged_threshold_says_so_in_one_line(predicted, tmp_path):
    bundle = shutil.copytree(predicted[0], tmp_path / "bundle")
    config = json.loads((bundle / "config.json").read_text())
    config["extra"]["thresholds"] = {"ct_site": {"tumour": 1.5}}
    (bundle / "config.json").write_text(json.dumps(config))
    result = run_cli("predict", "-i", CT, "-o", tmp_path / "out", "-m", bundle, *FP32)
    assert_one_line_error(result, "extra.thresholds.ct_site.tumour", "1.5")
    assert not (tmp_path / "out" / f"{CASE}.nii.gz").exists()


def test_a_threshold_given_to_predict_overrides_the_stored_one(predicted, tmp_path):
    from tumorfm.infer.predictor import PredictOptions, Predictor

    bundle = shutil.copytree(predicted[0], tmp_path / "bundle")
    config = json.loads((bundle / "config.json").read_text())
    config["extra"]["thresholds"] = {"ct_site": {"tumour": 0.7}}
    (bundle / "config.json").write_text(json.dumps(config))
    assert Predictor.from_bundle(bundle, PredictOptions(device="cpu")).thresholds == {"tumour": 0.7}
    options = PredictOptions(device="cpu", thresholds={"tumour": 0.3})
    assert Predictor.from_bundle(bundle, options).thresholds == {"tumour": 0.3}


@pytest.mark.parametrize(
    "given, fragment",
    [("tumour=high", "not a number"), ("tumour=nan", "between 0 and 1"),
     ("organ=0.6", "not a class of the bundle")],
)  # fmt: skip
def test_a_bad_threshold_option_is_a_one_line_error(predicted, tmp_path, given, fragment):
    out = tmp_path / "out"
    result = run_cli("predict", "-i", CT, "-o", out, "-m", predicted[0], "--threshold", given)
    assert_one_line_error(result, "--threshold", fragment)
    assert not (out / f"{CASE}.nii.gz").exists()
