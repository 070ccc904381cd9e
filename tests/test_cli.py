import pytest
from conftest import assert_one_line_error, run_cli

import tumorfm

COMMANDS = ["info", "check", "pool", "pool show", "preprocess", "pretrain", "phantom", "predict"]
COMMANDS += ["evaluate", "demo", "model list", "model summary"]


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
    assert result.returncode == 2 and "No such option" in result.stderr


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
