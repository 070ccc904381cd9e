"""What the commands print (issue 18): help texts as written, the last line of `preprocess` and
`pretrain`, `--resume` beside options it would ignore, and figures the README quotes from a
command."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli
from typer.testing import CliRunner

from tumorfm.cli import app
from tumorfm.cli.train import _pretrained
from tumorfm.data.phantom import DEFAULT_SITES, write_phantom_pool
from tumorfm.workflows.demo import write_pool_file

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--profile", "cpu", "--patch", "16", "32", "32", "--batch", "2", "--iterations", "2"]
TINY += ["--workers", "0", "--precision", "fp32", "--val-every", "1"]


def _bracketed_help() -> list[tuple[list[str], str]]:
    """(command path, help text) of every option or argument whose help holds `[`."""
    import typer

    found = []

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
        for param in command.params:
            text = (getattr(param, "help", None) or "").replace("\\[", "[")
            if "[" in text:
                found.append((path, text))

    walk(typer.main.get_command(app), [])
    return found


def test_help_prints_square_brackets_as_written():
    """Rich read "[default: PRED/evaluation]" as a style tag: `evaluate --help` printed
    "Output folder ."."""
    found = _bracketed_help()
    assert {" ".join(path) for path, _ in found} >= {"evaluate", "predict", "synth tumours"}
    runner = CliRunner()
    for path, text in found:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        shown = " ".join(result.output.replace("│", " ").split())
        assert text in shown, (path, text)


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("messages")
    folders = write_phantom_pool(
        root / "raw", cases_per_site=3, shape_zyx=(20, 40, 40), sites=(DEFAULT_SITES[0],)
    )
    return write_pool_file(folders, root / "pool.yaml")


def test_preprocess_ends_with_one_plain_sentence(pool_file, tmp_path):
    out = tmp_path / "cache"  # a folder named cache gave "cache .../cache ready"
    result = run_cli("preprocess", pool_file, "-o", out)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"preprocessed into {re.escape(str(out))} in \d+\.\d s", last), last
    with_relative_name = run_cli("preprocess", pool_file.resolve(), "-o", "cache", cwd=tmp_path)
    last = with_relative_name.stdout.strip().splitlines()[-1]
    assert not re.search(r"\b(\w+) \1\b", last), last


def test_pretrain_says_where_the_bundles_are_and_refuses_options_on_resume(pool_file, tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert run_cli("preprocess", pool_file, "-o", cache).returncode == 0
    result = run_cli("pretrain", cache, "-o", run, "--epochs", "2", *TINY)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, lines  # one line (torchrun's tests count them), no JSON
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert lines[0].startswith(f"{run}: epoch 2 of 2 done")
    assert f"validation pseudo-Dice (mean over classes) {last['val_mean_dice']:.3f}" in lines[0]
    assert f"Bundles: {run / 'best'} (best validation) and {run / 'last'}." in lines[0]

    before = (run / "log.jsonl").read_text()
    refused = run_cli("pretrain", "--resume", run, "--epochs", "4", "--lr", "0.1", "-o", run)
    assert_one_line_error(refused, "--out --epochs --lr: cannot be changed on resume")
    flag = run_cli("pretrain", "--resume", run, "--no-checkpointing")
    assert_one_line_error(flag, "--checkpointing: cannot be changed on resume")
    assert (run / "log.jsonl").read_text() == before

    again = run_cli("pretrain", cache, "--resume", run)  # the cache may be named: it is checked
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == lines[0]  # nothing left to train: the same summary


def _fake_run(folder: Path, rows: list, best: bool) -> Path:
    folder.mkdir()
    (folder / "settings.json").write_text(json.dumps({"config": {"epochs": 5}}))
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if best:
        (folder / "best").mkdir()
        (folder / "best" / "config.json").write_text("{}")
    return folder


def test_the_pretrain_summary_names_the_first_best_epoch_and_a_missing_best(tmp_path):
    rows = [
        {"epoch": 0, "train_loss": 2.0, "val_mean_dice": 0.2},
        {"epoch": 1, "train_loss": 1.5, "val_mean_dice": 0.6},
        {"epoch": 2, "train_loss": 1.2, "val_mean_dice": 0.6},
        {"epoch": 3, "train_loss": 1.1, "val_mean_dice": 0.5},
    ]
    run = _fake_run(tmp_path / "a", rows, best=True)
    with open(run / "log.jsonl", "a") as stream:
        stream.write('{"epoch": 4, "train_lo')  # a killed run's half line
    text = _pretrained(run, rows[-1])
    assert text.startswith(f"{run}: epoch 4 of 5 done, train loss 1.1000")
    assert "0.500 at epoch 4, best 0.600 at epoch 2" in text
    unscored = [{"epoch": 0, "train_loss": 2.0, "val_mean_dice": float("nan")}]
    text = _pretrained(_fake_run(tmp_path / "b", unscored, best=False), {})
    last = tmp_path / "b" / "last"
    assert text.endswith(f"Bundle: {last} (no validation score, so no best bundle).")


def test_readme_quotes_the_model_summary_of_tsfm_1_6b():
    """The README's figures for tsfm-1.6b are what `tumorfm model summary tsfm-1.6b` prints
    (its defaults: the paper's patch, one channel, one class)."""
    from tumorfm.defaults import PAPER_PATCH
    from tumorfm.model import preset_config
    from tumorfm.model.summary import summarize

    summary = summarize(preset_config("tsfm-1.6b", 1, 1, PAPER_PATCH))
    readme = " ".join((ROOT / "README.md").read_text().split())
    quoted = re.search(
        r"tsfm-1\.6b at the paper's patch: ([\d.]+) T multiply-adds per forward, ([\d.]+) GiB "
        r"of saved activations per sample in float32, ([\d.]+) GiB with checkpointing",
        readme,
    )
    assert quoted, "the README's model summary sentence changed: update this test"
    assert quoted.groups() == (
        f"{summary['macs_per_forward'] / 1e12:.1f}",
        f"{summary['activation_bytes'] / 2**30:.1f}",
        f"{summary['activation_bytes_checkpointed'] / 2**30:.1f}",
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_makefile_takes_torch_from_torch_index_only_when_set():
    """`make -n -B` prints the recipe without running it (nothing is installed)."""

    def torch_line(*variables):
        result = subprocess.run(
            ["make", "-n", "-B", ".venv/.done", *variables],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return next(x for x in result.stdout.splitlines() if '"torch==' in x)

    assert "--index-url" not in torch_line()
    cpu = "https://download.pytorch.org/whl/cpu"
    assert f'--index-url "{cpu}" "torch==2.13.0"' in torch_line(f"TORCH_INDEX={cpu}")
