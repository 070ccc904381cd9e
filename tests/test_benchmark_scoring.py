"""The benchmarks' last step (benchmarks/scoring.py): the product's predict and evaluate commands,
run as measured processes, and what a benchmark reads back from them."""

import shutil
from pathlib import Path

from benchmarks.scoring import case_scores, evaluated, predicted, stats

SARCOMA = Path(__file__).parent / "data" / "Dataset101_SarcomaCT"


def test_a_perfect_prediction_scores_dice_one_per_case(tmp_path):
    predictions, labels = tmp_path / "predictions", SARCOMA / "labelsTr"
    predictions.mkdir()
    cases = sorted(p.name for p in labels.glob("*.nii.gz"))
    for name in cases:
        shutil.copy(labels / name, predictions)
    metrics = evaluated(predictions, labels, tmp_path / "evaluate.log")
    scores = case_scores(metrics)
    assert sorted(scores) == [c.removesuffix(".nii.gz") for c in cases]
    assert len(scores) >= 2 and all(s["dice"] == 1.0 for s in scores.values())
    summary = stats([s["dice"] for s in scores.values()] + [float("nan")])  # NaN left out
    assert summary["mean"] == summary["min"] == 1.0 and summary["std"] == 0.0
    from benchmarks.shipped_card import volume_limit
    from benchmarks.shipped_model import volumes

    ratio = volumes(scores)["volume_ratio"]  # evaluate's volumes, as the shipped card reads them
    assert ratio["min"] == ratio["max"] == 1.0
    assert volume_limit({"sarcoma_ct": {"volume_ratio": ratio}}) == ""


def test_the_shipped_card_says_when_predicted_volumes_run_off():
    from benchmarks.shipped_card import volume_limit
    from benchmarks.shipped_model import volumes

    volumes_ml = {"a": (30.0, 10.0), "b": (12.0, 10.0), "c": (18.0, 10.0), "empty": (2.0, 0.0)}
    cases = {case: {"pred_ml": p, "gt_ml": g} for case, (p, g) in volumes_ml.items()}
    found = volumes(cases)
    assert found["volume_ratio"]["median"] == 1.8 and found["per_case_ml"]["a"] == [30.0, 10.0]
    line = volume_limit({"sarcoma_ct": found})
    assert "median 1.8x" in line and "1.2x - 3.0x" in line and "over-segments" in line
    under = volumes({"a": {"pred_ml": 5.0, "gt_ml": 10.0}})
    assert "under-segments" in volume_limit({"brain_mr": under})


def test_the_shipped_card_names_the_placement_only_off_nnunets_rule():
    from benchmarks.shipped_card import _placed, placement_limit

    assert _placed({"placement": "centred"}) == _placed({}) == ""  # older runs: centred
    assert "`--placement anywhere`" in _placed({"placement": "anywhere"})
    assert placement_limit({"train": {"placement": "anywhere"}}) == ""  # no centring limit


def test_predicted_reports_the_stages_predict_json_records(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    scan = sorted((SARCOMA / "imagesTr").glob("*.nii.gz"))[0]
    (images / scan.name).symlink_to(scan)
    out = tmp_path / "out"
    (out / "stale").mkdir(parents=True)  # a former run's folder is emptied first
    flags = ["--plan", "sarcoma_ct", "--fast"]
    timing = predicted("tsfm-real-lowres", images, out, tmp_path / "predict.log", flags)
    assert timing["scans"] == 1 and not (out / "stale").exists()
    assert {"preprocess", "network", "export"} <= set(timing["stage_seconds"])
    assert 0 < timing["stage_seconds"]["network"] < timing["wall_seconds"]


def test_an_nnunet_row_is_scored_as_the_transfer_study_scores_its_rows(tmp_path):
    from argparse import Namespace

    from benchmarks.common import BIN
    from benchmarks.transfer_nnunet import SARCOMA as FOLDER
    from benchmarks.transfer_nnunet import nnunet_row

    data = tmp_path / "data"
    shutil.copytree(SARCOMA, data / FOLDER)
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    held = sorted(p.name.removesuffix(".nii.gz") for p in (SARCOMA / "labelsTr").glob("*.nii.gz"))
    for case in held[:2]:  # nnU-Net predicted the two held-out cases perfectly
        shutil.copy(SARCOMA / "labelsTr" / f"{case}.nii.gz", predictions)
    args = Namespace(data=data, tumorfm=BIN / "tumorfm", timeout=600)
    reference = {"split": {"train": held[2:], "val": held[:2]}, "predictions": str(predictions)}
    row = nnunet_row(args, tmp_path / "work", 0, reference)
    assert row["arm"] == "nnunet" and row["epochs"] is None and row["mean_dice"] == 1.0
    assert {"sarcoma_dice", "sarcoma_hd95", "sarcoma_nsd"} <= set(row)


def test_the_position_probe_puts_the_tumour_where_it_is_asked_and_pads_with_zeros():
    import numpy as np

    from benchmarks.patch_position import OFFSETS, patch_around, summary

    image = np.ones((1, 20, 60, 50), np.float32)
    label = np.zeros((20, 60, 50), np.int16)
    label[8:13, 50:55, 2:7] = 1  # near two borders: the patch runs past them
    for offset in OFFSETS:
        patch, truth = patch_around(image, label, (48, 96, 96), offset)
        assert patch.shape == (1, 48, 96, 96) and truth.shape == (48, 96, 96)
        assert truth.sum() == label.sum()  # the whole tumour, moved
        where = np.nonzero(truth)
        centre = [(int(w.min()) + int(w.max())) // 2 for w in where]
        assert centre == [p // 2 + o for p, o in zip((48, 96, 96), offset)]
        assert patch.min() == 0.0 and patch.max() == 1.0  # outside the scan: zeros
    per_offset = {str(list(o)): {"a": {"dice": 0.8 if o == (0, 0, 0) else 0.4}} for o in OFFSETS}
    s = summary(per_offset)
    assert s["dice_centre"] == 0.8 and abs(s["dice_off_centre"] - 0.4) < 1e-9
    assert abs(s["kept_off_centre"] - 0.5) < 1e-9


def test_a_resumed_shipped_run_records_its_first_command_and_its_whole_time(tmp_path, monkeypatch):
    import json
    from argparse import Namespace

    from benchmarks import shipped_model

    work = tmp_path / "shipped"
    (work / "run").mkdir(parents=True)
    log = [{"epoch": e, "seconds": 100.0} for e in range(3)]  # the part a session's end stopped
    (work / "run" / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    ran = []

    def fake_run(command, env, log_file, timeout, what, interval):
        ran.append(command)
        with (work / "run" / "log.jsonl").open("a") as f:  # the resumed part: two more epochs
            f.write(json.dumps({"epoch": 3, "seconds": 90.0}) + "\n")
            f.write(json.dumps({"epoch": 4, "seconds": 90.0}) + "\n")
        return {"wall_seconds": 200.0}

    monkeypatch.setattr(shipped_model, "run", fake_run)
    monkeypatch.setattr(shipped_model, "fixed_split", lambda data: {})
    args = Namespace(work=work, data=tmp_path, placement="centred", more=0, resume=True)
    shipped_model.train(args)
    info = json.loads((work / "train.json").read_text())
    assert len(ran) == 1 and "--resume" in ran[0]  # nothing preprocessed again
    pretrain = info["pretrain"]
    assert "--epochs 36" in pretrain["command"] and "--resume" in pretrain["resumed_with"]
    assert pretrain["resumed_after_seconds"] == 300.0 and pretrain["epoch_seconds"] == 480.0
    assert pretrain["wall_seconds"] == 500.0  # the card's training time counts both parts
    assert (
        "preprocess" in info["preprocess"]["command"] and "wall_seconds" not in info["preprocess"]
    )
