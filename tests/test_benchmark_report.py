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
