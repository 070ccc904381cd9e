"""`tumorfm synth tumours`: synthetic tumours in a real CT's liver, written as a dataset."""

import json
import shutil

import numpy as np
import SimpleITK as sitk
from conftest import CASES, assert_one_line_error, run_cli
from scipy import ndimage

from tumorfm.synth import reach_mm

CT = CASES / "totalseg_example_ct_sm.nii.gz"
SEG = CASES / "totalseg_example_seg.nii.gz"  # TotalSegmentator's output: 5 is the liver


def _read(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def test_a_single_scan_gets_tumours_in_its_liver_and_nothing_else_changes(tmp_path):
    out = tmp_path / "synthetic"
    args = ["-i", CT, "-l", SEG, "--organ", "liver=5", "--count", "2", "--size", "medium"]
    result = run_cli("synth", "tumours", *args, "-o", out, "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "2 liver_tumour in 1 scans" in result.stdout
    assert run_cli("check", out).returncode == 0
    before, source = _read(CT)
    after, written = _read(out / "imagesTr" / "totalseg_example_ct_sm_0000.nii.gz")
    labels, _ = _read(out / "labelsTr" / "totalseg_example_ct_sm.nii.gz")
    seg, _ = _read(SEG)
    meta = json.loads((out / "dataset.json").read_text())
    value = meta["labels"]["liver_tumour"]
    assert value == int(seg.max()) + 1 and meta["labels"]["liver"] == 5
    tumour = labels == value
    assert tumour.any() and (seg[tumour] == 5).all()  # painted over the liver only
    assert np.array_equal(labels[~tumour], seg[~tumour])
    assert after.dtype == before.dtype and written.GetSpacing() == source.GetSpacing()
    assert written.GetOrigin() == source.GetOrigin()
    spacing = np.array(source.GetSpacing()[::-1])
    far = ndimage.distance_transform_edt(~tumour, sampling=spacing) > reach_mm(False)
    assert np.array_equal(after[far], before[far]) and not np.array_equal(after, before)
    assert after[tumour].mean() < np.median(before[seg == 5]) - 20  # hypodense
    record = json.loads((out / "synthesis.json").read_text())
    assert record["settings"]["seed"] == 3 and record["settings"]["organ"] == "liver"
    assert [t["size"] for t in record["cases"]["totalseg_example_ct_sm"]] == ["medium"] * 2
    again = tmp_path / "again"
    run_cli("synth", "tumours", *args, "-o", again, "--seed", "3")
    repeated, _ = _read(again / "imagesTr" / "totalseg_example_ct_sm_0000.nii.gz")
    assert np.array_equal(repeated, after)


def _dataset(tmp_path, livers: list[bool]):
    """An nnU-Net raw dataset of the real CT, with or without its liver per case."""
    root = tmp_path / "Dataset900_Abdomen"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    seg, image = _read(SEG)
    for i, liver in enumerate(livers):
        shutil.copy(CT, root / "imagesTr" / f"case{i}_0000.nii.gz")
        label = sitk.GetImageFromArray(np.where(seg == 5, 1, 0).astype(np.uint8) * liver)
        label.CopyInformation(image)
        sitk.WriteImage(label, str(root / "labelsTr" / f"case{i}.nii.gz"))
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
            "numTraining": len(livers), "file_ending": ".nii.gz"}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_a_dataset_by_organ_name_skips_a_case_without_the_organ(tmp_path):
    root = _dataset(tmp_path, [True, False, True])
    out = tmp_path / "synthetic"
    result = run_cli("synth", "tumours", "-i", root, "--organ", "liver", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "skipped case1: organ mask is empty" in result.stderr
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "liver_tumour": 2}
    assert meta["numTraining"] == 2 and run_cli("check", out).returncode == 0
    first = _read(out / "imagesTr" / "case0_0000.nii.gz")[0]
    third = _read(out / "imagesTr" / "case2_0000.nii.gz")[0]
    assert not np.array_equal(first, third)  # each case its own tumours


def test_bad_requests_write_nothing(tmp_path):
    out = tmp_path / "out"
    cases = [
        (["-i", CT, "--organ", "5"], "needs its label map"),
        (["-i", CT, "-l", SEG, "--organ", "liver"], "organ 'liver' is not a label name"),
        (["-i", CT, "-l", SEG, "--organ", "200"], "organ mask is empty"),
        (["-i", CT, "-l", SEG, "--organ", "5", "--engine", "gan"], "engine 'gan'"),
        (["-i", CT, "-l", SEG, "--organ", "5", "--size", "huge"], "size 'huge' is unknown"),
        (["-i", CT, "-l", SEG, "--organ", "5", "--seed", "-1"], "seed -1 must be a non-negative"),
        (["-i", CT, "-l", SEG, "--organ", "5", "--count", "0"], "count 0 must be a whole number"),
        (["-i", _dataset(tmp_path, [True]), "--organ", "liver", "--tumour", "liver"],
         "tumour class 'liver' is already a label"),
    ]  # fmt: skip
    for args, problem in cases:
        assert_one_line_error(run_cli("synth", "tumours", *args, "-o", out), problem)
        assert not out.exists()
    out.mkdir()
    result = run_cli("synth", "tumours", "-i", CT, "-l", SEG, "--organ", "5", "-o", out)
    assert_one_line_error(result, f"{out}: already exists")


def test_the_diffusion_engine_from_training_to_a_dataset(tmp_path):
    """synth train (both stages, a few steps of the tiny preset on the real sarcomas), then
    synth tumours --engine diffusion with its bundle into the real CT's liver."""
    from conftest import SARCOMA

    stage1, stage2, out = tmp_path / "ae", tmp_path / "dm", tmp_path / "synthetic"
    common = [SARCOMA, "--tumour", "sarcoma", "--steps", "2", "--crops", "1"]
    result = run_cli("synth", "train", *common, "--stage", "autoencoder", "-o", stage1)
    assert result.returncode == 0, result.stderr
    assert "3 crops of sarcoma" in result.stdout
    args = ["--stage", "diffusion", "--autoencoder", stage1 / "bundle", "-o", stage2]
    result = run_cli("synth", "train", *common, *args)
    assert result.returncode == 0, result.stderr
    config = json.loads((stage2 / "bundle" / "config.json").read_text())
    assert config["kind"] == "tumorfm-synthesis" and config["config"]["modality"] == "CT"
    scan = ["-i", CT, "-l", SEG, "--organ", "liver=5", "--size", "small"]
    result = run_cli("synth", "tumours", *scan, "--engine", "diffusion", "--model",
                     stage2 / "bundle", "-o", out)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert run_cli("check", out).returncode == 0
    record = json.loads((out / "synthesis.json").read_text())
    assert record["settings"]["engine"] == "diffusion"
    before, _ = _read(CT)
    after, _ = _read(out / "imagesTr" / "totalseg_example_ct_sm_0000.nii.gz")
    labels, _ = _read(out / "labelsTr" / "totalseg_example_ct_sm.nii.gz")
    tumour = labels == json.loads((out / "dataset.json").read_text())["labels"]["liver_tumour"]
    assert tumour.any() and not np.array_equal(after[tumour], before[tumour])
    for extra, problem in [
        (["--engine", "diffusion"], "needs --model"),
        (["--model", stage2 / "bundle"], "the procedural engine takes no model"),
    ]:
        result = run_cli("synth", "tumours", *scan, *extra, "-o", tmp_path / "x")
        assert_one_line_error(result, problem)
    result = run_cli("synth", "train", *common, "--stage", "diffusion", "-o", tmp_path / "y")
    assert_one_line_error(result, "--autoencoder BUNDLE goes with --stage diffusion")
    result = run_cli("synth", "train", SARCOMA, "--tumour", "liver_tumour", "--stage",
                     "autoencoder", "-o", tmp_path / "z")  # fmt: skip
    assert_one_line_error(result, "no label named 'liver_tumour'")
