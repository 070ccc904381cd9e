"""`tumorfm check`: every problem reported, one line each, non-zero exit; data never modified."""

import hashlib
import json

import numpy as np
import SimpleITK as sitk
from conftest import BRAIN, SARCOMA, run_cli
from test_formats import _write_msd_4d

from tumorfm.data.check import check_dataset


def _digest(folder):
    return {
        p.name: hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _rewrite(path, change):
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    out = change(array, image)
    if isinstance(out, sitk.Image):
        sitk.WriteImage(out, str(path))
        return
    new = sitk.GetImageFromArray(out)
    if new.GetDimension() == image.GetDimension():
        new.CopyInformation(image)
    sitk.WriteImage(new, str(path))


def test_real_datasets_are_clean():
    assert check_dataset(SARCOMA) == []
    assert check_dataset(BRAIN, workers=2) == []


def test_every_problem_is_reported_once_per_line(sarcoma):
    before = _digest(SARCOMA)
    # label with an undeclared value
    _rewrite(sarcoma / "labelsTr" / "STS_008.nii.gz", lambda a, _: np.where(a > 0, 3, a))

    # label on another grid (spacing off by 10%)
    def respaced(array, image):
        image.SetSpacing([s * 1.1 for s in image.GetSpacing()])
        return image

    _rewrite(sarcoma / "labelsTr" / "STS_019.nii.gz", respaced)
    # image without label, label without image, undeclared channel
    (sarcoma / "labelsTr" / "STS_999.nii.gz").write_bytes(
        (sarcoma / "labelsTr" / "STS_025.nii.gz").read_bytes()
    )
    (sarcoma / "imagesTr" / "STS_500_0000.nii.gz").write_bytes(
        (sarcoma / "imagesTr" / "STS_025_0000.nii.gz").read_bytes()
    )
    (sarcoma / "imagesTr" / "STS_008_0001.nii.gz").write_bytes(
        (sarcoma / "imagesTr" / "STS_008_0000.nii.gz").read_bytes()
    )
    # NaN in an image
    _rewrite(
        sarcoma / "imagesTr" / "STS_025_0000.nii.gz",
        lambda a, _: np.where(a > 200, np.nan, a.astype(np.float32)),
    )
    problems = check_dataset(sarcoma, workers=2)
    text = "\n".join(problems)
    assert all("\n" not in p for p in problems)
    assert "STS_008.nii.gz: label value(s) [3] not declared" in text
    assert "STS_019.nii.gz: geometry differs from its image" in text
    assert "STS_025_0000.nii.gz: " in text and "NaN/Inf" in text
    assert "STS_999.nii.gz: label without image" in text
    assert "STS_500_0000.nii.gz: image without label" in text
    assert "STS_008_0001.nii.gz: channel 0001 not declared" in text
    assert len(problems) == 6, text
    assert _digest(SARCOMA) == before  # the originals are never touched


def test_msd_problems(tmp_path):
    root = _write_msd_4d(tmp_path / "Task998_Bad", cases=3)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append(dict(meta["training"][0]))  # duplicate case id
    meta["modality"]["2"] = "MR2"  # declares 3 channels, files hold 2
    (root / "dataset.json").write_text(json.dumps(meta))
    sitk.WriteImage(sitk.Image(5, 5, sitk.sitkUInt8), str(root / "labelsTr" / "stray.nii.gz"))
    _rewrite(root / "imagesTr" / "case_2.nii.gz", lambda a, _: a[0])  # a 3D file, not 4D
    text = "\n".join(check_dataset(root))
    assert "case id 'case_0' appears more than once" in text
    assert "case_0.nii.gz: holds 2 channels, dataset.json declares 3" in text
    assert "case_2.nii.gz: expected a 4D image with 3 channels" in text
    assert "stray.nii.gz: label not listed" in text


def test_2d_image_is_a_problem(brain):
    _rewrite(brain / "imagesTr" / "btp_04_post.nii.gz", lambda a, _: a[0])
    problems = check_dataset(brain)
    assert any("btp_04_post.nii.gz: expected a 3D image" in p for p in problems)


def test_cli_exit_codes(sarcoma):
    clean = run_cli("check", sarcoma)
    assert clean.returncode == 0 and "no problems" in clean.stdout
    (sarcoma / "labelsTr" / "STS_019.nii.gz").unlink()
    broken = run_cli("check", sarcoma)
    assert broken.returncode == 1
    assert broken.stdout.strip().endswith("image without label (no labelsTr/STS_019.nii.gz)")
    missing = run_cli("check", sarcoma / "nope")
    assert missing.returncode == 1 and "dataset folder not found" in missing.stdout
