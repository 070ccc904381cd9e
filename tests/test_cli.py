import os
import subprocess
import sys

import pytest
import typer
from conftest import assert_one_line_error, run_cli

import tumorfm
from tumorfm.cli import app


def _commands(command=None, path=()) -> list[str]:
    """Every command and sub-command the app registers, e.g. 'model summary'."""
    command = command or typer.main.get_command(app)
    found = [" ".join(path)] if path else []
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands()


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"tumorfm {tumorfm.__version__}"


def test_info_lists_versions_threads_and_devices():
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    for field in ("tumorfm", "torch", "threads", "SimpleITK", "devices", "cpu"):
        assert field in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = run_cli(*command.split(), "--help")
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_unknown_option_is_a_usage_error():
    result = run_cli("preprocess", "--frobnicate")
    assert result.returncode == 2
    assert_one_line_error(result, "No such option: --frobnicate", "tumorfm preprocess --help")


def test_a_number_out_of_range_is_one_line_naming_the_option():
    """Usage errors are one line like every other error, not a Rich panel."""
    result = run_cli("predict", "-i", "x", "-o", "y", "-m", "m", "--min-lesion-ml", "nan")
    assert_one_line_error(result, "--min-lesion-ml")
    assert len(result.stderr.strip().splitlines()) == 1


def test_phantom_into_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run_cli("phantom", "-o", blocker / "out"), "cannot write output")


def test_phantom_cli_writes_sites(tmp_path):
    result = run_cli("phantom", "-o", tmp_path, "--cases", "1", "--shape", "16", "24", "24")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 4 and all(
        (tmp_path / n).is_dir() for n in result.stdout.split()
    )


def test_help_texts_flow_as_paragraphs():
    """A docstring wrapped at 100 columns printed ragged in rich's box: each paragraph is one line
    for rich to wrap, and indented lines and list items keep theirs."""
    from tumorfm.cli.app import reflow

    text = "First line\nof one paragraph.\n\nAnother:\n  indented\n- an item\n- another"
    assert (
        reflow(text) == "First line of one paragraph.\n\nAnother:\n  indented\n- an item\n- another"
    )
    wide = {**os.environ, "COLUMNS": "250"}
    shown = subprocess.run([sys.executable, "-m", "tumorfm", "synth", "--help"], env=wide,
                           capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    assert "differ from their tissue (mean HU shift, texture, HU distribution), for" in shown
