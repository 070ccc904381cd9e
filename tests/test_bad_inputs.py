"""Bad input, fed through the command line as a user would (issue 17): each kind ends in one
error line naming the file, field or value, a non-zero exit, and nothing written or lost."""

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from conftest import CASES, assert_one_line_error, run_cli

from tumorfm.model import create_model
from tumorfm.model.bundle import save_bundle

CT = CASES / "totalseg_example_ct_sm.nii.gz"
SHIPPED = "tsfm-real-lowres"
MODELS = Path(__file__).resolve().parents[1] / "models"


def _pool(tmp_path, dataset, labels):
    path = tmp_path / "pool.yaml"
    entry = {"name": "d", "path": str(dataset), "labels": labels}
    path.write_text(yaml.safe_dump({"name": "p", "datasets": [entry]}))
    return path


@pytest.mark.parametrize("name", ["..nii.gz", "...nii.gz", ".hidden.nii.gz"])
def test_an_msd_case_id_that_cannot_name_a_folder_is_refused(tmp_path, brain, name):
    """`..nii.gz` gave case id '.', whose cache folder was the dataset folder itself."""
    shutil.move(brain / "imagesTr" / "btp_04_post.nii.gz", brain / "imagesTr" / name)
    meta = json.loads((brain / "dataset.json").read_text())
    meta["training"][0]["image"] = f"./imagesTr/{name}"
    (brain / "dataset.json").write_text(json.dumps(meta))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "keep.txt").write_text("an earlier file")
    result = run_cli("preprocess", _pool(tmp_path, brain, {1: "tumour"}), "-o", cache)
    assert_one_line_error(result, "training[0]", repr(name[: -len(".nii.gz")]), "rename")
    assert sorted(p.name for p in cache.iterdir()) == ["keep.txt"]
    assert "training[0]" in run_cli("check", brain).stdout


def test_two_scans_with_one_case_name_are_refused(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(CT, scans / "case1.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(CT)), str(scans / "case1.nrrd"))
    out = tmp_path / "out"
    result = run_cli("predict", "-i", scans, "-o", out, "-m", SHIPPED, "--plan", "sarcoma_ct")
    assert_one_line_error(result, "case1.nii.gz and case1.nrrd", "one case name")
    assert not out.exists()


def _nifti_with_pixdim(tmp_path, axis: int, value: float):
    """The real CT as an uncompressed NIfTI whose pixdim[axis] is `value`."""
    path = tmp_path / f"pixdim{axis}.nii"
    header = bytearray(gzip.decompress(CT.read_bytes()))
    header[76 + 4 * axis : 80 + 4 * axis] = struct.pack("<f", value)
    path.write_bytes(header)
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda tmp: _nifti_with_pixdim(tmp, 1, 0.0), "pixdim[1] is 0.0: the voxel spacing"),
        (lambda tmp: _nifti_with_pixdim(tmp, 3, -2.0), "pixdim[3] is -2.0"),
        (lambda tmp: _spacing(tmp, (0.001, 1.0, 1.0)), "voxel spacing (0.001, 1, 1) mm"),
        (lambda tmp: _spacing(tmp, (1e6, 1.0, 1.0)), "voxel spacing (1e+06, 1, 1) mm"),
    ],
)
def test_a_voxel_spacing_no_scanner_makes_is_refused(tmp_path, make, problem):
    scan, out = make(tmp_path), tmp_path / "out"
    result = run_cli("predict", "-i", scan, "-o", out, "-m", SHIPPED, "--plan", "sarcoma_ct")
    assert_one_line_error(result, "1 of 1 scan(s) could not be segmented")
    assert "no label map was written" in result.stderr
    skipped = [line for line in result.stderr.splitlines() if line.startswith("tumorfm: skipped")]
    assert len(skipped) == 1 and str(scan) in skipped[0] and problem in skipped[0]
    assert not any(out.glob("*.nii.gz"))


def _spacing(tmp_path, spacing):
    image = sitk.ReadImage(str(CT))
    image.SetSpacing(spacing)
    path = tmp_path / "spaced.nrrd"
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize(
    "option, problem",
    [
        (["--lr", "nan"], "lr nan: the learning rate must be a positive finite number"),
        (["--lr", "0"], "lr 0.0"),
        (["--lr", "-1e-3"], "lr -0.001"),
        (["--patch", "4", "64", "64"], "patch (4, 64, 64)"),
    ],
)
def test_training_numbers_out_of_range_are_refused_before_any_work(tmp_path, option, problem):
    out = tmp_path / "run"
    result = run_cli("pretrain", tmp_path / "no-cache", "-o", out, "--profile", "cpu", *option)
    assert_one_line_error(result, problem)
    assert not out.exists()


def test_a_bundle_with_nan_weights_is_refused_not_predicted_empty(tmp_path):
    model = create_model("tsfm-tiny", in_channels=1, num_classes=1, patch_size=(16, 32, 32))
    with torch.no_grad():
        model.head.weight[0, 0].fill_(float("nan"))
    plan = json.loads((MODELS / SHIPPED / "config.json").read_text())
    bundle = save_bundle(tmp_path / "nan", model, ["tumour"], ["CT"], plan=plan["plan"])
    out = tmp_path / "out"
    result = run_cli("predict", "-i", CT, "-o", out, "-m", bundle, "--plan", "sarcoma_ct")
    assert_one_line_error(result, "head.weight", "NaN or infinite")
    assert not any(out.glob("*.nii.gz"))


def test_check_names_the_direction_when_only_the_direction_differs(tmp_path, sarcoma):
    label = sarcoma / "labelsTr" / "STS_019.nii.gz"
    image = sitk.ReadImage(str(label))
    image.SetDirection(tuple(np.diag([1.0, -1.0, -1.0]).ravel()))
    sitk.WriteImage(image, str(label))
    result = run_cli("check", sarcoma)
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if "STS_019.nii.gz" in x)
    assert "direction (1, 0, 0, 0, -1, 0, 0, 0, -1) vs" in line
    assert "size" not in line and "spacing" not in line and "origin" not in line


def test_check_warns_of_a_misspelt_key_a_wrong_count_and_an_empty_label_map(sarcoma):
    meta = json.loads((sarcoma / "dataset.json").read_text())
    meta["lables"] = meta["labels"]
    meta["numTraining"] = 5  # the folder holds 3
    (sarcoma / "dataset.json").write_text(json.dumps(meta))
    label = sarcoma / "labelsTr" / "STS_025.nii.gz"
    image = sitk.ReadImage(str(label))
    empty = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(image)))
    empty.CopyInformation(image)
    sitk.WriteImage(empty, str(label))
    result = run_cli("check", sarcoma)
    assert result.returncode == 0, result.stdout  # warnings, not problems
    assert "unknown key 'lables' (did you mean 'labels'?)" in result.stdout
    assert "STS_025.nii.gz: label map is empty" in result.stdout
    assert "numTraining is 5, the folder holds 3 labelled case(s)" in result.stdout
    assert "no problems found (3 warning(s))" in result.stdout


@pytest.mark.parametrize(
    "text, problem",
    [
        (b"name: x\nname: y\ndatasets: []\n", "key 'name' given twice (line 2)"),
        (b"\xff\xfe\x00name", "not a text file (not UTF-8)"),
        (b"name: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_pool_file_that_is_not_clean_yaml_is_refused(tmp_path, text, problem):
    pool = tmp_path / "pool.yaml"
    pool.write_bytes(text)
    result = run_cli("preprocess", pool, "-o", tmp_path / "cache")
    assert_one_line_error(result, str(pool), problem)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "args, problem",
    [
        (["predict", "-i", CT, "-o", "OUT", "-m", SHIPPED, "--plan", "sarcoma_ct",
          "--precision", "fp8"], "precision 'fp8': choose auto"),
        (["model", "summary", "tsfm-tiny", "--patch", "0", "0", "0"], "each axis at least 8"),
        (["pretrain", "CACHE", "-o", "OUT", "--placement", "middle"],
         "placement 'middle': choose one of centred, anywhere"),
    ],
)  # fmt: skip
def test_names_and_sizes_out_of_their_set_are_refused(tmp_path, args, problem):
    out = tmp_path / "out"
    result = run_cli(*[out if a == "OUT" else tmp_path if a == "CACHE" else a for a in args])
    assert_one_line_error(result, problem)
    assert not any(out.glob("*.nii.gz")) and not (out / "settings.json").exists()


def test_evaluate_refuses_a_requested_class_no_label_map_holds(tmp_path):
    """Scored as two empty masks it would get Dice 1, silently (issue 17)."""
    seg = CASES / "totalseg_example_seg.nii.gz"
    result = run_cli("evaluate", seg, seg, "--labels", "999", "-o", tmp_path / "ev")
    assert_one_line_error(result, "--labels 999: no label map holds this class")
    assert not (tmp_path / "ev").exists()


def test_a_misspelt_training_setting_is_refused_naming_the_closest():
    """finetune and the transfer study hand settings down by name to make_config."""
    from tumorfm.errors import TumorFMError
    from tumorfm.train.config import make_config

    with pytest.raises(TumorFMError, match="did you mean 'iterations_per_epoch'"):
        make_config("cpu", iteration_per_epoch=3)
    assert make_config("cpu", iterations_per_epoch=3).iterations_per_epoch == 3
