"""Shared fixtures: the real scans copied into tests/data (see tests/data/README.md)."""

import contextlib
import locale
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
SARCOMA = DATA / "Dataset101_SarcomaCT"
BRAIN = DATA / "Task102_BrainTumour"
CASES = DATA / "cases"

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per xdist worker: no oversubscription of the cores


@pytest.fixture
def sarcoma(tmp_path) -> Path:
    """A writable copy of the real sarcoma CT cases (nnU-Net layout), for tests that damage it."""
    return Path(shutil.copytree(SARCOMA, tmp_path / SARCOMA.name))


@pytest.fixture
def brain(tmp_path) -> Path:
    """A writable copy of the real brain MR cases (MSD layout)."""
    return Path(shutil.copytree(BRAIN, tmp_path / BRAIN.name))


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m tumorfm ARGS` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "tumorfm", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        cwd=cwd,
        timeout=600,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user mistake: non-zero exit, no traceback, one error line naming the problem."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("tumorfm: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@contextlib.contextmanager
def locale_kept():
    """SimpleITK's DICOM writer (GDCM) sets the C locale to "C" and leaves it so: every later
    text file read without an encoding in that test process would then decode as ASCII."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)
