"""The distillation and interactive tables of the README: what a partial or mixed run says, and
which arm and click setting they name best."""

import json
from pathlib import Path


def test_distill_keeps_the_arms_a_run_with_its_settings_recorded_and_reports_a_partial_run(
    tmp_path,
):
    """A session may end between two arms: the results file holds what was finished, a run
    with the same settings reuses it, a run with other settings or another teacher loss not."""
    from types import SimpleNamespace

    from benchmarks import distill, seeds
    from benchmarks.report_distill import distill_table

    args = SimpleNamespace(out=tmp_path / "distill.json", student="tsfm-tiny", iterations=300,
                           per_epoch=50, alpha=0.5, temperature=2.0, seeds=[0, 1],
                           arms=["labels", "distilled"])  # fmt: skip
    assert seeds.recorded(args.out, args, distill.SAME_RUN, teacher_loss=distill.TEACHER_LOSS) == {}
    row = {"dice": 0.6, "hd95_median": 20.0, "predict_seconds_per_scan": 2.0,
           "predict_peak_mb": 600.0, "train_seconds": 100.0, "parameters": 1000}  # fmt: skip
    rows = {0: [{"arm": "labels", **row}, {"arm": "distilled", **row, "dice": 0.62}],
            1: [{"arm": "labels", **row}]}  # fmt: skip
    teacher = {"dice": 0.64, "hd95_median": 19.0, "predict_seconds_per_scan": 4.0,
               "predict_peak_mb": 900.0, "parameters": 10_000}  # fmt: skip
    partial = distill.results(args, teacher, rows, (0.0, 0.0, 0.0))
    args.out.write_text(json.dumps(partial))
    assert partial["complete"] is False and partial["dice_kept"] == 0.62 / 0.64
    again = seeds.recorded(args.out, args, distill.SAME_RUN, teacher_loss=distill.TEACHER_LOSS)
    assert again[0]["distilled"]["dice"] == 0.62 and list(again[1]) == ["labels"]
    (tmp_path / "distill.json").rename(tmp_path / "results.json")
    results = tmp_path / "results"
    results.mkdir()
    (tmp_path / "results.json").rename(results / "distill.json")
    text = "\n".join(distill_table(results))
    assert "**Incomplete run** (measured so far: seed 0: labels, distilled; seed 1: labels)" in text
    args.out = results / "distill.json"
    for change in ({"alpha": 0.7}, {"iterations": 600}):
        assert (
            seeds.recorded(args.out, SimpleNamespace(**{**vars(args), **change}), distill.SAME_RUN)
            == {}
        )
    old = json.loads(args.out.read_text())
    args.out.write_text(json.dumps({**old, "teacher_loss": "BCE"}))
    assert seeds.recorded(args.out, args, distill.SAME_RUN, teacher_loss=distill.TEACHER_LOSS) == {}
    # rows taught by other weights of the teacher: kept apart, and the table says so
    args.out.write_text(json.dumps({**old, "teacher_weights_sha256": "0" * 64}))
    other = {"teacher_loss": distill.TEACHER_LOSS, "teacher_weights_sha256": "1" * 64}
    assert seeds.recorded(args.out, args, distill.SAME_RUN, **other) == {}
    assert "earlier version of tsfm-real-lowres (weights sha256 000000000000)" in "\n".join(
        distill_table(results)
    )


def test_distill_students_of_other_settings_train_apart_and_the_table_names_the_time_floor(
    tmp_path,
):
    """A finished arm in the work folder is reused only by a run of the same student and budget;
    the table says how much of the teacher's whole-scan time lies outside any network."""
    from types import SimpleNamespace

    from benchmarks import distill
    from benchmarks.report_distill import distill_table

    args = SimpleNamespace(work=tmp_path, student="tsfm-fast", iterations=400, per_epoch=50,
                           alpha=0.5, temperature=2.0, seeds=[0], arms=["labels", "distilled"],
                           out=tmp_path / "results" / "distill.json")  # fmt: skip
    folders = {distill.students_folder(SimpleNamespace(**{**vars(args), **change}))
               for change in ({}, {"student": "tsfm-tiny"}, {"iterations": 300})}  # fmt: skip
    assert len(folders) == 3 and all(f.parent == tmp_path for f in folders)
    row = {"dice": 0.6, "hd95_median": 20.0, "predict_seconds_per_scan": 2.0,
           "predict_peak_mb": 600.0, "train_seconds": 100.0, "parameters": 1000,
           "large_scan_seconds": 3.0, "network_seconds_per_scan": 0.2,
           "large_scan_network_seconds": 0.5}  # fmt: skip
    rows = {0: [{"arm": "labels", **row}, {"arm": "distilled", **row}]}
    teacher = {"dice": 0.64, "hd95_median": 19.0, "predict_seconds_per_scan": 4.0,
               "predict_peak_mb": 900.0, "parameters": 10_000, "large_scan_seconds": 5.0,
               "large_scan_network_seconds": 2.0}  # fmt: skip
    args.out.parent.mkdir()
    args.out.write_text(json.dumps(distill.results(args, teacher, rows, (0.0, 0.0, 0.0))))
    text = "\n".join(distill_table(args.out.parent))
    assert "tsfm-fast (a strided stem: every stage at half resolution)" in text
    assert "0.60 of the teacher's time on this scan" in text  # 1 - 2.0 / 5.0
    assert "0.60 of the teacher's time (target <= 0.25: **missed**)" in text  # 3.0 / 5.0
    assert "A longer budget" not in text
    with_features = SimpleNamespace(**{**vars(args), "arms": ["labels", "distilled", "features"]})
    rows[0].append({"arm": "features", **row, "dice": 0.62})
    args.out.write_text(json.dumps(distill.results(with_features, teacher, rows, (0, 0, 0))))
    text = "\n".join(distill_table(args.out.parent))
    assert (
        "That student keeps 0.97 of the teacher's Dice (target >= 0.95: met); against labels "
        "alone +0.020 (target: ahead, met; one seed, no spread yet)" in text
    )
    rows[0].pop()
    longer = distill.results(
        SimpleNamespace(**{**vars(args), "iterations": 1600}),
        teacher,
        {0: [{"arm": "labels", **row}, {"arm": "distilled", **row, "dice": 0.608}]},
        (0.0, 0.0, 0.0),
    )
    (args.out.parent / "distill_long.json").write_text(json.dumps(longer))  # fmt: skip
    text = "\n".join(distill_table(args.out.parent))
    assert "A longer budget, 1600 iterations (tsfm-fast, seed(s) 0): Dice labels 0.600" in text
    assert "distilled 0.608, the teacher 0.640" in text
    assert "distilled keeps 0.95 of the teacher's Dice, +0.008 against labels alone" in text
    longer["rows"].append({"arm": "features", "dice": {"mean": 0.63, "std": None, "n": 1}})
    longer["per_seed"][0].append({"arm": "features", **row, "dice": 0.63})
    longer["per_seed"][1] = [{"arm": "labels", **row, "dice": 0.61},
                               {"arm": "distilled", **row, "dice": 0.60}]  # fmt: skip
    for row in longer["rows"][:2]:
        row["dice"] |= {"n": 2, "std": 0.01}
    (args.out.parent / "distill_long.json").write_text(json.dumps(longer))
    text = "\n".join(distill_table(args.out.parent))
    assert "labels 0.600 +- 0.010 (2 seed(s))" in text and "features 0.630 (1 seed(s))" in text
    # paired by seed: distilled - labels is +0.008 on seed 0 and -0.010 on seed 1
    assert (
        "distilled keeps 0.95 of the teacher's Dice, -0.001 +- 0.013 against labels alone "
        "(not larger than its spread); features keeps 0.98 of the teacher's Dice, +0.030 "
        "against labels alone (one seed, no spread yet)" in text
    )


def test_interactive_table_names_the_best_arm_and_checks_it_against_the_classic_one(tmp_path):
    from benchmarks.report_interactive import interactive_table

    def row(arm, values):
        cells = {f"dice_after_{n}": {"mean": v, "std": 0.1} for n, v in zip((0, 1, 5), values)}
        return {"arm": arm, **cells}

    rows = [row("local, first box", (0.7, 0.75, 0.81)), row("classic, first box", (0.6, 0.7, 0.8)),
            row("promptable, first box", (0.66, 0.65, 0.64))]  # fmt: skip
    rows[2]["git_commit"] = "c789bcb0"  # an arm kept from an earlier run names its commit
    timing = {"first": {"mean": 0.01}, "following": {"mean": 0.02}, "prepare": {"mean": 6.0}}
    entry = {
        "settings": {"epochs": "10", "iterations": "50", "seed": "0"}, "rows": rows,
        "per_case": {r["arm"]: {"a": [0.5]} for r in rows}, "git_commit": "1234567",
        "seconds_per_click": {"local": timing},
        "corrective_clicks": {"local": {"count": 10, "honoured": 1.0, "repeated": 0.0}},
        "peak_memory_mb": 900.0, "command": "x", "machine": {"cpu": "cpu"},
    }  # fmt: skip
    results = {"datasets": {"sarcoma_ct": entry}, "targets": {"dice_after_5": 0.8,
                                                             "seconds_per_click": 2.0}}  # fmt: skip
    (tmp_path / "interactive.json").write_text(json.dumps(results))
    text = "\n".join(interactive_table(tmp_path))
    assert "| promptable bundle, first box (commit c789bcb) |" in text
    assert (
        "0.810 (automatic bundle, clicks as local thresholds, first box; target >= 0.8: met" in text
    )
    assert "ahead of the classic baseline at every click count: met" in text
    assert "after 6.0 s to prepare the scan" in text and "100% left the mask agreeing" in text
    rows[1]["dice_after_1"]["mean"] = 0.76  # the classic baseline ahead after one click
    (tmp_path / "interactive.json").write_text(json.dumps(results))
    assert "every click count: **missed**" in "\n".join(interactive_table(tmp_path))


def test_the_click_settings_line_says_whether_the_default_is_the_best_setting(tmp_path):
    from benchmarks.report_interactive import tuning_lines

    assert "not tuned yet" in tuning_lines(tmp_path)[0]

    def row(margin, reach, dice, **fade):
        return {"margin": margin, "reach_mm": reach, "dice_after_5": {"mean": dice}, **fade}

    rows = [row(0.05, 30.0, 0.7), row(0.1, 15.0, 0.8), row(0.1, 15.0, 0.9, box_fade=1.5)]
    result = {"cases": ["A", "B"], "rows": rows, "minutes": 3, "minutes_before": 9,
              "command": "python -m benchmarks.interactive_tune"}  # fmt: skip
    (tmp_path / "interactive_tune.json").write_text(json.dumps(result))
    (line,) = tuning_lines(tmp_path, (0.05, 30.0, 0.0))
    assert "(3 settings over 12 min," in line  # rows without a box fade ran without one
    assert "best margin 0.1, reach 15 mm, box fade 1.5 (0.900)" in line
    assert "default, margin 0.05, reach 30 mm, box fade 0 (0.700), is not the best" in line
    best = tuning_lines(tmp_path, (0.1, 15.0, 1.5))[0]
    assert "box fade 1.5 (0.900), is the best setting" in best
    assert "box fade 2) was not tried" in tuning_lines(tmp_path, (0.1, 15.0, 2.0))[0]


def test_the_tuner_refuses_a_box_fade_it_cannot_use():
    import subprocess
    import sys

    for fade in ("0.5", "nan"):
        done = subprocess.run([sys.executable, "-m", "benchmarks.interactive_tune", "--box-fades",
                               fade], capture_output=True, text=True,
                              cwd=Path(__file__).parents[1])  # fmt: skip
        assert done.returncode == 2
        assert f"--box-fades {fade}: each must be above 1, or 0 for no fade" in done.stderr
