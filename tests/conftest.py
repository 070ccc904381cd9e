"""Shared fixtures: the real scans copied into tests/data (see tests/data/README.md)."""

import contextlib
import json
import locale
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

DATA = Path(__file__).parent / "data"
SARCOMA = DATA / "Dataset101_SarcomaCT"
BRAIN = DATA / "Task102_BrainTumour"
CASES = DATA / "cases"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per xdist worker, and per command it starts (run_cli, torchrun): with more
    # threads than cores, torch's OpenMP threads wait on each other at every operation, and a
    # command measured 10-20x slower beside a busy worker than alone.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


PROMPT_PATCH = (16, 32, 32)  # the tiny bundles of the interactive tests


def ct_bundle(folder, channels: int, extra: dict, bias=None, classes=("tumour",)) -> Path:
    """A tsfm-tiny bundle with random weights for the 3 mm CT case (plan 'ct_site'): `channels`
    = the CT plus that many of the prompt channels; `bias`: a head answering it everywhere."""
    from tumorfm.data.fingerprint import DatasetFingerprint
    from tumorfm.data.plan import plan_dataset
    from tumorfm.interactive import PROMPT_CHANNELS
    from tumorfm.model import create_model
    from tumorfm.model.bundle import save_bundle

    torch.manual_seed(0)
    model = create_model(
        "tsfm-tiny", in_channels=channels, num_classes=len(classes), patch_size=PROMPT_PATCH
    )
    if bias is not None:
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.fill_(bias)
    ct = {"mean": 40.0, "std": 200.0, "percentile_00_5": -500.0, "percentile_99_5": 800.0}
    fingerprint = DatasetFingerprint([(4.0, 3.0, 3.0)] * 3, [(40, 80, 80)] * 3, [ct], 1.0)
    plan = {"datasets": {"ct_site": plan_dataset(fingerprint, ["CT"], 2).to_dict()}}
    modalities = ["CT", *PROMPT_CHANNELS][:channels]
    return save_bundle(folder, model.eval(), list(classes), modalities, "tsfm-tiny", plan,
                       extra=extra)  # fmt: skip


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


def assert_shipped_prediction(config: dict, plan: str, out: Path) -> None:
    """A shipped bundle's predictions for `plan` in `out`: the plan's own class named and numbered
    as in the bundle, predicted at the bundle's calibrated threshold for it (0.5 when none)."""
    (name,) = config["extra"]["annotated"][plan]
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    assert labels == {"background": 0, name: config["classes"].index(name) + 1}
    stored = config["extra"].get("thresholds", {}).get(plan, {}).get(name, 0.5)
    settings = json.loads((out / "predict.json").read_text())["settings"]
    assert settings["thresholds"] == {name: stored}


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


def write_dicom_series(volume, folder: Path, modality: str = "CT") -> None:
    """A real scan written as a DICOM series, one file per slice, the way scanners store it. File
    names run against the slice order, so only sorting by geometry (as SimpleITK does) gets it
    right."""
    folder.mkdir()
    image = volume.geometry.apply_to(sitk.GetImageFromArray(volume.array.astype(np.int16)))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    orientation = "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7])))
    uid = "1.2.826.0.1.3680043.2.1125.1.54321"
    depth = image.GetDepth()
    for z in range(depth):
        slice_ = image[:, :, z]
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        for tag, value in [
            ("0008|0060", modality),
            ("0010|0020", "TUMORFM-TEST"),
            ("0020|000e", uid),
            ("0020|000d", uid + ".9"),
            ("0020|0052", uid + ".8"),  # frame of reference
            ("0020|0011", "3"),
            ("0008|0018", f"{uid}.{z + 1}"),
            ("0020|0037", orientation),
            ("0020|0032", "\\".join(map(str, position))),
            ("0020|0013", str(z + 1)),
            ("0018|0050", str(image.GetSpacing()[2])),
            ("0028|0030", f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}"),
        ]:
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"im{depth - z:03d}.dcm"))
        with locale_kept():
            writer.Execute(slice_)
