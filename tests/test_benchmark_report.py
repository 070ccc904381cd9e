"""The README's results section is generated from benchmarks/results/*.json: it must match them
(no figure typed by hand), and a benchmark that has not run shows as not measured."""

import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(report)


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
    assert "Not measured yet: `.venv-bench/bin/python benchmarks/accuracy.py`" in section


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
