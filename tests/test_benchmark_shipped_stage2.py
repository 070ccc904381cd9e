"""A second stage per dataset from the shipped bundle (benchmarks/shipped_stage2.py): which former
run it keeps, and the README's lines on it (benchmarks/report_shipped_trials.py)."""

import json

from benchmarks.report_shipped_trials import stage2_trial
from benchmarks.shipped_stage2 import finished


def test_a_former_stage_is_kept_only_if_it_ran_every_epoch_of_these_settings(tmp_path):
    out = tmp_path / "sarcoma_ct"
    assert not finished(out, 2, [48, 96, 96])  # nothing there
    (out / "last").mkdir(parents=True)
    config = {"patch_size": [48, 96, 96], "epochs": 2, "iterations_per_epoch": 50, "seed": 0}
    (out / "settings.json").write_text(json.dumps({"config": config}))
    (out / "log.jsonl").write_text(json.dumps({"epoch": 0, "seconds": 9.0}) + "\n")
    assert not finished(out, 2, [48, 96, 96])  # stopped after one epoch of two
    with open(out / "log.jsonl", "a") as log:
        log.write(json.dumps({"epoch": 1, "seconds": 9.0}) + "\n")
    assert finished(out, 2, [48, 96, 96])
    assert not finished(out, 2, [32, 128, 128])  # another patch
    assert not finished(out, 3, [48, 96, 96])  # another length


def test_the_stage_lines_pair_scans_and_say_whether_the_gain_beats_its_spread(tmp_path):
    def row(dataset, dice, shipped):
        cases = {f"c{i}": d for i, d in enumerate(dice)}
        was = {f"c{i}": d for i, d in enumerate(shipped)}
        return {
            "dataset": dataset, "config": "lowres", "patch": [48, 96, 96], "train_seconds": 600,
            "per_case_dice": cases, "dice": {"mean": sum(dice) / len(dice), "std": 0.1},
            "volume_ratio": {"median": 3.0},
            "shipped_at_0.5": {"per_case_dice": was, "dice": {"mean": sum(shipped) / len(shipped)},
                               "volume_ratio": {"median": 1.5}},
        }  # fmt: skip

    assert stage2_trial(tmp_path, {}) == []  # not run: no lines
    result = {
        "rows": [row("sarcoma_ct", [0.7, 0.5, 0.6], [0.6, 0.6, 0.6]),  # +0.1, -0.1, 0
                 row("brain_mr", [0.3, 0.4], [0.0, 0.1])],  # +0.3 both
        "settings": {"epochs": 8, "iterations_per_epoch": 50},
        "machine": {"cpu": "AMD EPYC"},
    }  # fmt: skip
    (tmp_path / "shipped_stage2.json").write_text(json.dumps(result))
    text = "\n".join(stage2_trial(tmp_path, {}))
    assert "400 iterations" in text
    assert "by scan +0.000 +- 0.100, ahead on 1 of 3 (**not larger** than its spread)" in text
    assert "paired by scan +0.300 +- 0.000, ahead on 2 of 2 (larger than its spread)" in text
    assert "the brain_mr stage gains beyond its spread but predicts 3.00x" in text
    assert "the sarcoma_ct stage gains" not in text


def test_the_card_names_the_stage_only_for_a_plan_the_bundle_has_not_learnt(tmp_path):
    from benchmarks.shipped_card import stage2_limit

    scores = {"sarcoma_ct": {"dice": {"max": 0.83}}, "brain_mr": {"dice": {"max": 0.007}}}
    assert stage2_limit(scores, tmp_path) == ""  # no stage run
    rows = [
        {"dataset": name, "iterations": 400, "config": "fullres", "patch": [32, 128, 128],
         "dice": {"mean": dice}, "volume_ratio": {"median": 7.5}}
        for name, dice in (("sarcoma_ct", 0.63), ("brain_mr", 0.116))
    ]  # fmt: skip
    (tmp_path / "shipped_stage2.json").write_text(json.dumps({"rows": rows}))
    text = stage2_limit(scores, tmp_path)
    assert text.startswith("- Fine-tuned on brain_mr's training scans alone") and "0.116" in text
    assert "sarcoma_ct" not in text and text.count("\n- ") == 0


def test_a_stage_of_no_epochs_is_refused_in_one_line(monkeypatch, capsys):
    import sys

    import pytest

    from benchmarks import shipped_stage2

    monkeypatch.setattr(sys, "argv", ["shipped_stage2", "--epochs", "0"])
    with pytest.raises(SystemExit) as stopped:
        shipped_stage2.main()
    assert stopped.value.code != 0
    assert "--epochs 0: a stage needs at least one epoch" in capsys.readouterr().err
