"""The README's results section is generated from benchmarks/results/*.json: it must match them
(no figure typed by hand), and a benchmark that has not run shows as not measured."""

import json
import re
import shutil
from pathlib import Path

from benchmarks import report
from benchmarks.seeds import merge, paired_difference

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_section_matches_the_results_files():
    readme = (ROOT / "README.md").read_text()
    assert report.START in readme and report.END in readme
    assert report.render(readme) == readme, "run `python -m benchmarks.report`"


def test_ratios_are_computed_from_the_files_and_missing_benchmarks_say_so(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(ROOT / "benchmarks" / "results" / "preprocess.json", results)
    data = json.loads((results / "preprocess.json").read_text())
    n = data["median_seconds"]["nnunet"]
    data["median_seconds"]["tumorfm"] = 2 * n  # tumorfm twice as slow: the target is missed
    (results / "preprocess.json").write_text(json.dumps(data))
    section = report.section(results)
    row = next(line for line in section.splitlines() if line.startswith("| preprocess"))
    assert "| 2.00 |" in row and "**no**" in row
    assert "| train: not measured |" in section
    assert "Not measured yet: `.venv-bench/bin/python -m benchmarks.accuracy`" in section


def test_render_replaces_only_the_section(tmp_path):
    readme = f"# title\n\nbefore\n\n{report.START}\nold figures\n{report.END}\n\nafter\n"
    rendered = report.render(readme, tmp_path)
    assert rendered.startswith("# title\n\nbefore\n\n") and rendered.endswith("\n\nafter\n")
    assert "old figures" not in rendered and "not measured" in rendered
    assert report.render(rendered, tmp_path) == rendered  # idempotent


def test_each_windows_per_call_setting_gets_its_own_predict_rows(tmp_path):
    results = tmp_path / "results"
    results.mkdir()

    def row(tool, seconds, windows=None):
        extra = {} if windows is None else {"precision": "bf16", "windows_per_call": windows}
        return {"input": "lung1", "mirror": False, "tool": tool, "wall_seconds": seconds,
                "peak_mb": 1000.0, **extra}  # fmt: skip

    predict = {
        "targets_tumorfm_vs_nnunet": {"time": 0.25, "memory": 0.5},
        "inputs": {"lung1": {"size_xyz": [512, 512, 48]}},
        "rows": [row("nnunet", 40.0), row("tumorfm", 20.0, 4), row("tumorfm_windows1", 8.0, 1)],
    }
    (results / "predict.json").write_text(json.dumps(predict))
    lines = report.section(results).splitlines()
    four = next(line for line in lines if "4 windows per call" in line)
    one = next(line for line in lines if "1 window per call" in line)
    assert "| 0.50 |" in four and "**no**" in four
    assert "| 0.20 |" in one and "| yes |" in one


def _transfer_seeds(rows_per_seed: dict) -> dict:
    rows = merge(rows_per_seed, ("arm", "epochs", "iterations"), ["mean_dice"])
    for row in rows:
        row["sarcoma_hd95"] = row["sarcoma_nsd"] = None
    gap = paired_difference(
        rows_per_seed, {"arm": "pretrained", "epochs": 2}, {"arm": "scratch", "epochs": 2},
        "mean_dice",
    )  # fmt: skip
    return {
        "settings": {"seeds": list(rows_per_seed), "config": "lowres", "patch": [48, 96, 96],
                     "model": "tsfm-tiny"},
        "command": "transfer.py",
        "pretrain": {"iterations": 1000},
        "studies": {s: {"validation_cases": ["a"] * 7} for s in rows_per_seed},
        "rows": rows,
        "targets": {"pretrained_minus_scratch_at_smallest_budget": gap,
                    "meets_gap_0.15": gap["mean"] >= 0.15 and gap["beats_spread"]},
    }  # fmt: skip


def test_transfer_over_seeds_reports_mean_spread_and_paired_gap(tmp_path):
    def rows(pretrained, scratch):
        row = {"epochs": 2, "iterations": 100}
        return [{**row, "arm": "pretrained", "mean_dice": pretrained},
                {**row, "arm": "scratch", "mean_dice": scratch}]  # fmt: skip

    # a steady gap of ~0.2 on splits of very different difficulty: the paired gap beats its spread
    steady = _transfer_seeds({0: rows(0.7, 0.5), 1: rows(0.4, 0.2), 2: rows(0.62, 0.4)})
    gap = steady["targets"]["pretrained_minus_scratch_at_smallest_budget"]
    assert abs(gap["mean"] - 0.2067) < 1e-3 and gap["beats_spread"] and gap["n"] == 3
    (tmp_path / "transfer.json").write_text(json.dumps(steady))
    text = "\n".join(report.transfer_table(tmp_path))
    assert "| tumorfm tsfm-tiny, pretrained | 100 | 0.573 +- 0.155 | n/a | n/a |" in text
    assert "0.207 +- 0.012 over seeds, larger than its spread" in text and ": met)" in text
    # the same means, but the gap flips sign on one seed: not larger than its spread
    noisy = _transfer_seeds({0: rows(0.9, 0.3), 1: rows(0.3, 0.5), 2: rows(0.6, 0.4)})
    (tmp_path / "transfer.json").write_text(json.dumps(noisy))
    text = "\n".join(report.transfer_table(tmp_path))
    assert "**not larger**" in text and "**missed**" in text


def test_accuracy_over_seeds_reports_mean_and_spread(tmp_path):
    def row(seed, model, dice):
        return {"seed": seed, "dataset": "sarcoma_ct", "model": model, "cases": 7,
                "iterations": 400, "parameters": 1.3e6, "dice": dice, "hd95": 20.0 + seed,
                "nsd": 0.5, "train_seconds": 60.0, "predict_seconds": 5.0}  # fmt: skip

    rows = [row(s, m, d) for s, m, d in [(0, "tumorfm", 0.7), (1, "tumorfm", 0.8),
                                           (0, "nnU-Net", 0.6), (1, "nnU-Net", None)]]  # fmt: skip
    merged = merge({s: [r for r in rows if r["seed"] == s] for s in (0, 1)},
                   ("dataset", "model", "cases", "iterations", "parameters"),
                   ["dice", "hd95", "nsd", "train_seconds", "predict_seconds"])  # fmt: skip
    settings = {"seeds": [0, 1], "patch": [48, 96, 96], "batch": 2, "budget": 1, "config": "lowres"}
    result = {"settings": settings, "command": "accuracy.py", "rows": merged}
    (tmp_path / "accuracy.json").write_text(json.dumps(result))
    text = "\n".join(report.accuracy_table(tmp_path))
    assert "| tumorfm | 1.30M | 400 | 2 | 0.750 +- 0.071 | 20.5 +- 0.7 | 0.500 +- 0.000 |" in text
    assert "| nnU-Net | 1.30M | 400 | 1 | 0.600 |" in text  # one seed known: no spread claimed
    assert "sessions" not in text and "Not measured yet" not in text
    assert text.startswith("The lowres plan with patch 48x96x96; batch 2")
    result["settings"]["plans"] = {
        "sarcoma_ct": {"config": "lowres", "patch": [48, 96, 96]},
        "brain_mr": {"config": "fullres", "patch": [32, 128, 128]},
    }
    (tmp_path / "accuracy.json").write_text(json.dumps(result))
    text = "\n".join(report.accuracy_table(tmp_path))
    assert text.startswith(
        "Every model of sarcoma_ct at the lowres plan with patch 48x96x96, "
        "brain_mr at the fullres plan with patch 32x128x128; batch 2"
    )

    def per_seed(seed, dataset, arm, dice):
        return {"seed": seed, "dataset": dataset, "arm": arm, "dice": dice}

    result["rows_per_seed"] = [  # tumorfm on 3 seeds of both; nnU-Net on 2 of the sarcomas'
        *(per_seed(s, d, "tumorfm", 0.7 + 0.1 * s) for s in range(3) for d in ("sarcoma", "brain")),
        per_seed(0, "sarcoma", "nnunet", 0.6), per_seed(1, "sarcoma", "nnunet", 0.6),
    ]  # fmt: skip
    (tmp_path / "accuracy.json").write_text(json.dumps(result))
    text = "\n".join(report.accuracy_table(tmp_path))
    assert (
        "Not measured yet at these settings: nnU-Net v2 on sarcoma seed 2; "
        "nnU-Net v2 on brain; MONAI SwinUNETR." in text
    )
    # paired by seed: +0.1 and +0.2, mean 0.15 +- 0.071: larger than its spread
    assert "sarcoma, tumorfm - nnU-Net v2 0.150 +- 0.071 over 2 seed(s) (larger than" in text
    result["rows_per_seed"][-1]["dice"] = 0.9  # +0.1 and -0.1: not larger
    (tmp_path / "accuracy.json").write_text(json.dumps(result))
    text = "\n".join(report.accuracy_table(tmp_path))
    assert "0.000 +- 0.141 over 2 seed(s) (**not larger** than its spread)" in text
    result["rows_per_seed"].pop()  # one seed: no spread
    (tmp_path / "accuracy.json").write_text(json.dumps(result))
    text = "\n".join(report.accuracy_table(tmp_path))
    assert "0.100 over 1 seed(s) (one seed: no spread yet)" in text
    assert "nnU-Net v2 on sarcoma seeds 1, 2; nnU-Net v2 on brain;" in text
    result["sessions"] = [{"command": "accuracy --seeds 0", "cpu": "AMD EPYC"},
                          {"command": "accuracy --seeds 1", "cpu": "Intel Xeon"}]  # fmt: skip
    (tmp_path / "accuracy.json").write_text(json.dumps(result))
    text = "\n".join(report.accuracy_table(tmp_path))
    assert "Measured by 2 runs" in text and "`accuracy --seeds 1` on Intel Xeon" in text
    assert "; the runs named below. Mean" in text and "`accuracy.py`" not in text  # not the last
    result["sessions"].append({"command": "accuracy --seeds 1", "cpu": "Intel Xeon"})  # a restart
    (tmp_path / "accuracy.json").write_text(json.dumps(result))
    text = "\n".join(report.accuracy_table(tmp_path))
    assert "Measured by 3 runs" in text and "on Intel Xeon (2 times)." in text
    assert text.count("`accuracy --seeds 1`") == 1
    # the seeds span machines: each model's rows name theirs, and each session its own
    bf16 = {"cpu": "AMD EPYC", "avx512_bf16": True, "amx_bf16": False}
    result["machine"] = plain = {"cpu": "AMD EPYC", "avx512_bf16": False, "amx_bf16": False}
    for r in result["rows_per_seed"]:
        r["machine"] = bf16
    result["sessions"] = [{"command": "accuracy --seeds 0", **bf16}, {"command": "x", **plain}]
    (tmp_path / "accuracy.json").write_text(json.dumps(result))
    text = "\n".join(report.accuracy_table(tmp_path))
    assert "no mirroring; AMD EPYC, AVX-512 bf16; the runs" in text
    assert "`accuracy --seeds 0` on AMD EPYC, AVX-512 bf16; `x` on AMD EPYC, no bf16." in text
    result["rows_per_seed"][-1]["machine"] = plain  # nnU-Net's one row ran elsewhere
    (tmp_path / "accuracy.json").write_text(json.dumps(result))
    text = "\n".join(report.accuracy_table(tmp_path))
    assert (
        "no mirroring; tumorfm on AMD EPYC, AVX-512 bf16; nnU-Net v2 on AMD EPYC, no bf16; the "
        "runs named below" in text
    )


def test_the_shipped_bundle_against_nnunet_says_met_missed_or_stale(tmp_path):
    from benchmarks.report_accuracy import shipped_table

    results = tmp_path / "results"
    results.mkdir()
    shipped = json.loads((ROOT / "benchmarks" / "results" / "shipped_model.json").read_text())
    (results / "shipped_model.json").write_text(json.dumps(shipped))
    assert "not measured yet" in "\n".join(shipped_table(results))

    def dice(mean):
        return {"mean": mean, "std": 0.1}

    comparison = {
        "tumorfm": {"bundle": shipped["name"], "dice": dice(0.7)},
        "nnunet": {"dice": dice(0.6), "iterations": 900, "parameters": 11.5e6},
        "budget_seconds": shipped["pretrain"]["cpu_seconds"] / 2,
        "bundle_pretrain_wall_seconds": shipped["pretrain"]["wall_seconds"],
        "mirror": False,
        "dice_difference": 0.1,
    }
    for difference, verdict in ((0.1, "met"), (-0.1, "**missed**")):
        (results / "shipped_nnunet.json").write_text(
            json.dumps({**comparison, "dice_difference": difference})
        )
        text = "\n".join(shipped_table(results))
        assert f"a difference of {difference:+.3f} (target: ahead, {verdict})" in text
    comparison["bundle_pretrain_wall_seconds"] += 60  # the bundle was trained again since
    (results / "shipped_nnunet.json").write_text(json.dumps(comparison))
    assert "earlier training of the bundle" in "\n".join(shipped_table(results))


def test_a_calibrated_bundle_says_its_thresholds_and_compares_at_them(tmp_path):
    from benchmarks.report_accuracy import shipped_table

    shipped = json.loads((ROOT / "benchmarks" / "results" / "shipped_model.json").read_text())
    scores = shipped["scores"]
    shipped["scores_at_0.5"] = json.loads(json.dumps(scores))
    scores["sarcoma_ct"]["per_case_dice"] = {"a": 0.8, "b": 0.6, "c": 0.7}
    shipped["calibration"] = {
        "sarcoma_ct": {"class": "soft_tissue_sarcoma", "threshold": 0.75, "cases": 29,
                       "mean_dice_at_0.5": 0.779, "mean_dice": 0.791, "mirror": False,
                       "median_volume_ratio_at_0.5": 1.2, "median_volume_ratio": 1.02}
    }  # fmt: skip
    (tmp_path / "shipped_model.json").write_text(json.dumps(shipped))
    comparison = {
        "tumorfm": {"bundle": shipped["name"], "dice": {"mean": 0.6, "std": 0.1}},
        "nnunet": {"dice": {"mean": 0.6, "std": 0.1}, "iterations": 900, "parameters": 11.5e6,
                   "per_case_dice": {"a": 0.7, "b": 0.7, "c": 0.5}},
        "budget_seconds": 100.0, "mirror": False, "dice_difference": 0.0,
        "bundle_pretrain_wall_seconds": shipped["pretrain"]["wall_seconds"],
        "per_case_difference": {"a": 0.1, "b": -0.1, "c": 0.0},
        "machine": {"cpu": "AMD EPYC"},
    }  # fmt: skip
    (tmp_path / "shipped_nnunet.json").write_text(json.dumps(comparison))
    text = "\n".join(shipped_table(tmp_path))
    assert "sarcoma_ct 0.75 (on its 29 training scans, mean Dice 0.779 at 0.5" in text
    assert "median volume 1.20x and 1.02x the reference" in text
    assert "sarcoma Dice (at threshold 0.5) 0.600" in text
    assert (
        "At its calibrated threshold (0.75) the bundle scores 0.700 on the same 3 scans: "
        "+0.067 +- 0.153 against nnU-Net, ahead on 2 of 3." in text
    )


def test_commands_show_as_modules_also_where_a_results_file_recorded_the_script(tmp_path):
    assert not re.search(r"benchmarks/\w+\.py", report.section())  # `python -m benchmarks.NAME`
    result = {"settings": {"patch": [48, 96, 96], "batch": 2, "budget": 0.5}, "rows": [],
              "command": ".venv-bench/bin/python benchmarks/accuracy.py --budget 0.5"}  # fmt: skip
    (tmp_path / "accuracy.json").write_text(json.dumps(result))
    text = "\n".join(report.accuracy_table(tmp_path))
    assert "`.venv-bench/bin/python -m benchmarks.accuracy --budget 0.5`" in text


def test_transfer_seeds_are_kept_across_runs_of_the_same_settings(tmp_path, monkeypatch):
    """A run of three seeds outlasts a session: the results file written after a seed is what a
    later run of the same settings starts from, and a run of other settings starts afresh."""
    from argparse import Namespace

    from benchmarks import transfer

    settings = {k: None for k in transfer.SAME_RUN} | {"budgets": [2, 4], "iterations": 50}
    settings |= {"model": "tsfm-tiny", "patch": [48, 96, 96], "config": "lowres"}
    args = Namespace(**settings, seeds=[0, 1, 2], out=tmp_path / "transfer.json")
    row = {"epochs": 2, "iterations": 100, "sarcoma_hd95": 20.0, "sarcoma_nsd": 0.3}
    rows = {seed: [{**row, "arm": "pretrained", "mean_dice": 0.6 + seed / 100},
                   {**row, "arm": "scratch", "mean_dice": 0.3}] for seed in (0, 1)}  # fmt: skip
    studies = {seed: {"validation_cases": ["a"] * 7} for seed in rows}
    pretrained = {seed: {"iterations": 1000, "weights_sha256": "ab"} for seed in rows}
    result = transfer.summarise(args, (0, 0, 0), pretrained, studies, {}, rows)
    gap = result["targets"]["pretrained_minus_scratch_at_smallest_budget"]
    assert gap["n"] == 2 and abs(gap["mean"] - 0.305) < 1e-9 and result["targets"]["meets_gap_0.15"]
    args.out.write_text(json.dumps(result))
    kept = transfer.recorded(args.out, args)
    assert sorted(kept["rows_per_seed"]) == [0, 1]
    assert [r | {"machine": None} for r in kept["rows_per_seed"][1]] == [
        r | {"machine": None} for r in rows[1]
    ]
    text = "\n".join(report.transfer_table(tmp_path))
    assert (
        "| 0.605 +- 0.007 | 20.0 +- 0.0 |" in text and " 2 seed(s) " in text
    )  # measured, not asked
    assert transfer.recorded(args.out, Namespace(**{**vars(args), "budgets": [1, 2]})) == {}
    # rows recorded before rows named their CPU ran on the file's; nnU-Net's may run elsewhere
    result["machine"] = {"cpu": "Xeon", "avx512_bf16": True, "platform": "Linux"}
    args.out.write_text(json.dumps(result))
    kept = transfer.recorded(args.out, args)
    assert kept["rows_per_seed"][0][0]["machine"] == {"cpu": "Xeon", "avx512_bf16": True}
    epyc = {"cpu": "EPYC", "avx512_bf16": False}
    nnunet = {"arm": "nnunet", "epochs": None, "iterations": None, "mean_dice": 0.5,
              "sarcoma_hd95": 9.0, "sarcoma_nsd": 0.2, "machine": epyc}  # fmt: skip
    kept["rows_per_seed"][0].append(nnunet)
    monkeypatch.setattr(transfer, "version", lambda name: "2.6")  # nnU-Net lives in .venv-bench
    result = transfer.summarise(args, (0, 0, 0), pretrained, studies, {0: {"iterations": 1000}},
                                kept["rows_per_seed"])  # fmt: skip
    args.out.write_text(json.dumps(result | {"machine": epyc}))
    text = "\n".join(report.transfer_table(tmp_path))
    assert "without the sarcoma set; Xeon, AVX-512 bf16; `" in text
    assert "nnU-Net v2 trained on seed(s) 0's splits, 1000 iterations at tumorfm's lowres " in text
    assert "spacing, fp32; EPYC, no bf16." in text and "not measured yet for seed(s) 1 (" in text
