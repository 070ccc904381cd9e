"""Prediction: label maps in the input's exact geometry, options, Python API, bad input."""

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import CASES, assert_one_line_error, run_cli, write_dicom_series

from tumorfm.data.fingerprint import DatasetFingerprint
from tumorfm.data.io import Geometry, read_volume
from tumorfm.data.plan import Plan, plan_dataset
from tumorfm.errors import TumorFMError
from tumorfm.infer.inputs import list_inputs
from tumorfm.infer.postprocess import max_diameter_mm, postprocess, statistics
from tumorfm.infer.predict import predict
from tumorfm.infer.predictor import PredictOptions, Predictor
from tumorfm.infer.window import window_count
from tumorfm.model import create_model
from tumorfm.model.bundle import save_bundle

CLASSES = ["liver", "liver_tumour", "kidney"]
PATCH = (16, 32, 32)
SCANS = ["brain1_image.nrrd", "breast1_image.nrrd", "totalseg_example_ct_sm.nii.gz"]


def _plan(modality: str, spacing=(4.0, 3.0, 3.0)) -> dict:
    ct = {"mean": 40.0, "std": 200.0, "percentile_00_5": -500.0, "percentile_99_5": 800.0}
    fingerprint = DatasetFingerprint([spacing] * 3, [(40, 80, 80)] * 3, [ct], 1.0)
    return plan_dataset(fingerprint, [modality], len(CLASSES) + 1).to_dict()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """An untrained tsfm-tiny whose last head bias makes 'liver' cover everything: predictions
    are then fully determined, so geometry and painting can be checked exactly."""
    torch.manual_seed(0)
    model = create_model("tsfm-tiny", in_channels=1, num_classes=3, patch_size=PATCH).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([5.0, -5.0, -5.0]))
    return save_bundle(
        tmp_path_factory.mktemp("bundle") / "bundle",
        model,
        CLASSES,
        ["CT"],
        preset="tsfm-tiny",
        plan={"datasets": {"ct_site": _plan("CT"), "mr_site": _plan("MR")}},
        paint_order=CLASSES,
        extra={"parents": {"liver_tumour": "liver"}},
    )


@pytest.mark.parametrize("name", SCANS)
def test_prediction_has_the_input_geometry_exactly(bundle, tmp_path, name):
    out = tmp_path / "out"
    plan = "mr_site" if name.startswith(("brain", "breast")) else "ct_site"
    options = PredictOptions(plan=plan, fast=True, precision="fp32")
    results = predict(CASES / name, bundle, out, options, statistics=True, progress=False)
    ((case_id, result),) = results.items()
    source = sitk.ReadImage(str(CASES / name))
    written = sitk.ReadImage(str(out / f"{case_id}.nii.gz"))
    assert written.GetSize() == source.GetSize()
    assert written.GetSpacing() == pytest.approx(source.GetSpacing(), abs=1e-6)
    assert written.GetOrigin() == pytest.approx(source.GetOrigin(), abs=1e-5)
    assert written.GetDirection() == pytest.approx(source.GetDirection(), abs=1e-6)
    label = sitk.GetArrayFromImage(written)
    np.testing.assert_array_equal(label, result.label)
    # the liver bias paints every voxel of the non-zero region (the whole scan for these)
    image = sitk.GetArrayFromImage(source)
    assert set(np.unique(label[image != 0]).tolist()) == {1}
    voxel_ml = np.prod(source.GetSpacing()) / 1000
    stats = json.loads((out / f"{case_id}_statistics.json").read_text())
    assert stats["liver"]["volume_ml"] == pytest.approx((label == 1).sum() * voxel_ml, rel=1e-3)
    assert stats["liver_tumour"]["lesions"] == 0
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    assert labels == {"background": 0, "liver": 1, "liver_tumour": 2, "kidney": 3}
    report = json.loads((out / "predict.json").read_text())
    assert report["settings"]["plan"] == plan and case_id in report["cases"]


def test_painting_order_resampling_and_crop(bundle, tmp_path):
    """A tumour class painted over its organ; zero voxels outside the crop stay background."""
    predictor = Predictor.from_bundle(bundle, PredictOptions(plan="ct_site", precision="fp32"))
    with torch.no_grad():  # tumour wins everywhere, kidney nowhere
        predictor.network.head.bias.copy_(torch.tensor([5.0, 5.0, -5.0]))
    image = np.zeros((30, 50, 60), np.float32)
    image[5:25, 10:40, 8:50] = 100.0
    geometry = Geometry(
        (60, 50, 30), (1.2, 1.1, 2.5), (3.0, -4.0, 5.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    result = predictor(image, geometry, keep_probabilities=True)
    assert result.label.shape == image.shape
    assert (result.label[image > 0] == 2).all() and (result.label[image == 0] == 0).all()
    assert result.probabilities.shape == (3, *image.shape)
    assert result.probabilities[0][image > 0].min() > 0.99
    assert result.probabilities[2].max() < 0.01


@torch.no_grad()
def test_mirroring_is_averaged_and_classes_subset(bundle):
    predictor = Predictor.from_bundle(
        bundle, PredictOptions(plan="ct_site", classes=["kidney", "liver"])
    )
    assert predictor.labels == {"liver": 1, "kidney": 3}  # values stay the bundle's
    torch.manual_seed(1)
    torch.nn.init.normal_(predictor.network.head.weight)  # outputs that depend on the input
    batch = torch.randn(2, 1, *PATCH)
    mirrored = predictor._network(batch)
    predictor.options.mirror = False
    plain = predictor._network(batch)
    assert mirrored.shape == plain.shape == (2, 2, *PATCH)
    assert not torch.allclose(mirrored, plain)  # the flips reach an untrained net differently
    flips = [predictor._network(batch.flip(axes)).flip(axes) for axes in [(), (2,), (3, 4)]]
    assert torch.allclose(flips[0], plain)
    assert not torch.allclose(flips[1], plain)


def test_postprocess_and_statistics_on_known_shapes():
    label = np.zeros((20, 40, 40), np.uint8)
    label[2:18, 2:30, 2:30] = 1  # organ
    label[2:4, 35:38, 35:38] = 1  # a stray organ island
    label[5:9, 5:9, 5:9] = 2  # lesion of 64 voxels
    label[12, 20, 20] = 2  # lesion of one voxel
    values, spacing = {"liver": 1, "liver_tumour": 2}, (2.0, 1.0, 1.0)
    stats = statistics(label, values, spacing, {"liver_tumour"})
    assert stats["liver_tumour"]["lesions"] == 2
    assert stats["liver_tumour"]["volume_ml"] == pytest.approx(65 * 2 / 1000)
    assert stats["liver_tumour"]["largest_diameter_mm"] == pytest.approx(
        np.sqrt(6**2 + 9 + 9), abs=0.01
    )
    cleaned = postprocess(
        label, values, spacing, {"liver_tumour"}, {"liver_tumour": "liver"}, 0.01, True
    )
    assert cleaned[12, 20, 20] == 1  # the tiny lesion returns to its organ
    assert (cleaned[5:9, 5:9, 5:9] == 2).all()
    assert (cleaned[2:4, 35:38, 35:38] == 0).all()  # the island is gone
    sphere = np.linalg.norm(np.indices((21, 21, 21)) - 10, axis=0) <= 10
    assert max_diameter_mm(sphere, (1.0, 1.0, 1.0)) == pytest.approx(20.0)


def test_folder_run_skips_a_bad_scan_and_writes_the_others(bundle, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(CASES / "totalseg_example_ct_sm.nii.gz", scans / "good.nii.gz")
    (scans / "broken.nii.gz").write_bytes(b"not a volume")
    flat = read_volume(CASES / "totalseg_example_ct_sm.nii.gz").array[10]
    sitk.WriteImage(sitk.GetImageFromArray(flat), str(scans / "flat.nii.gz"))  # a 2D slice
    result = run_cli(
        "predict", "-i", scans, "-o", tmp_path / "out", "-m", bundle, "--plan", "ct_site",
        "--fast", "--save-probabilities", "--classes", "kidney",
    )  # fmt: skip
    assert_one_line_error(result, "2 of 3", "broken", "flat")
    assert "broken.nii.gz" in result.stderr and "2D image" in result.stderr
    assert (tmp_path / "out" / "good.nii.gz").is_file()
    saved = np.load(tmp_path / "out" / "good_probabilities.npz")
    assert saved["classes"].tolist() == ["kidney"]
    assert saved["probabilities"].shape == (1, 30, 101, 122)
    assert saved["probabilities"].dtype == np.float16 and saved["probabilities"].max() < 0.01
    assert not (tmp_path / "out" / "broken.nii.gz").exists()


def test_bad_input_is_one_line(bundle, tmp_path):
    scan = CASES / "totalseg_example_ct_sm.nii.gz"
    args = ["-i", scan, "-o", tmp_path / "o", "-m", bundle]
    assert_one_line_error(run_cli("predict", *args), "--plan", "ct_site, mr_site")
    assert_one_line_error(run_cli("predict", *args, "--plan", "x"), "no plan 'x'")
    assert_one_line_error(
        run_cli("predict", *args, "--plan", "ct_site", "--classes", "spleen"), "spleen"
    )
    assert_one_line_error(run_cli("predict", *args, "--plan", "ct_site", "--device", "cuda:7"))
    broken = tmp_path / "broken_bundle"
    shutil.copytree(bundle, broken)
    (broken / "model.safetensors").unlink()
    assert_one_line_error(
        run_cli("predict", "-i", scan, "-o", tmp_path / "o", "-m", broken, "--plan", "ct_site"),
        "model.safetensors",
    )
    blocked = tmp_path / "file"
    blocked.write_text("x")
    result = run_cli(
        "predict", "-i", scan, "-o", blocked / "sub", "-m", bundle, "--plan", "ct_site"
    )
    assert_one_line_error(result, "cannot write")
    with pytest.raises(TumorFMError, match="nowhere.nii.gz: no such file"):  # before the bundle
        predict(tmp_path / "nowhere.nii.gz", broken, None, progress=False)
    two_channels = tmp_path / "two"
    two_channels.mkdir()
    for i in range(2):
        shutil.copy(scan, two_channels / f"case_{i:04d}.nii.gz")
    with pytest.raises(TumorFMError, match="2 channel"):
        predict(two_channels, bundle, None, PredictOptions(plan="ct_site"), progress=False)


def test_a_single_channel_zero_file_is_named_as_in_its_folder(tmp_path):
    """STS_008_0000.nii.gz alone is case STS_008, as in a folder, so its label map pairs with
    labelsTr/STS_008; another 4-digit ending is part of the name."""
    for name in ("STS_008_0000.nii.gz", "scan_2020.nii.gz", "plain.nrrd"):
        (tmp_path / name).write_bytes(b"")
    names = [list_inputs(tmp_path / n)[0].case_id for n in sorted(os.listdir(tmp_path))]
    assert names == ["STS_008", "plain", "scan_2020"]
    assert [s.case_id for s in list_inputs(tmp_path)] == ["STS_008_0000", "plain", "scan_2020"]


def test_dicom_series_folder_is_one_case(bundle, tmp_path):
    write_dicom_series(read_volume(CASES / "totalseg_example_ct_sm.nii.gz"), tmp_path / "series")
    options = PredictOptions(plan="ct_site", fast=True, precision="fp32")
    results = predict(tmp_path / "series", bundle, tmp_path / "out", options, progress=False)
    assert list(results) == ["series"]
    written = read_volume(tmp_path / "out" / "series.nii.gz")
    assert written.geometry.close_to(read_volume(tmp_path / "series").geometry)


class _KidneyEverywhere(torch.nn.Module):
    """Not a TSFM: any network that maps the plan's channels to one logit per class."""

    def forward(self, x):
        logits = torch.full((x.shape[0], len(CLASSES), *x.shape[2:]), -5.0)
        logits[:, CLASSES.index("kidney")] = 5.0
        return logits


def test_a_predictor_built_from_parts_runs_another_network(bundle, tmp_path):
    plan = Predictor.from_bundle(bundle, PredictOptions(plan="ct_site")).plan
    options = PredictOptions(fast=True, precision="fp32")
    predictor = Predictor(_KidneyEverywhere(), plan, CLASSES, options, patch_size=PATCH)
    image = np.zeros((30, 50, 60), np.float32)
    image[5:25, 10:40, 8:50] = 100.0
    geometry = Geometry((60, 50, 30), (1.2, 1.1, 2.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    result = predictor(image, geometry)
    assert (result.label[image > 0] == 3).all() and (result.label[image == 0] == 0).all()
    scan = CASES / "totalseg_example_ct_sm.nii.gz"
    with pytest.raises(TumorFMError, match="a ready Predictor has its own"):
        predict(scan, predictor, tmp_path / "out", options, progress=False)
    assert not (tmp_path / "out").exists()
    written = predict(scan, predictor, tmp_path / "out", progress=False)
    assert (next(iter(written.values())).label > 0).any()


def test_a_folder_holding_an_earlier_run_is_refused_replaced_or_continued(bundle, tmp_path):
    """predict.json always tells what the folder holds: runs never mix (issue 17)."""
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    shutil.copy(CASES / "totalseg_example_ct_sm.nii.gz", scans / "a.nii.gz")
    args = ["-i", scans, "-o", out, "-m", bundle, "--plan", "ct_site", "--fast"]
    assert run_cli("predict", *args).returncode == 0
    first = (out / "a.nii.gz").read_bytes()
    shutil.copy(CASES / "totalseg_example_ct_sm.nii.gz", scans / "b.nii.gz")
    assert_one_line_error(run_cli("predict", *args), "holds an earlier prediction run")
    assert (out / "a.nii.gz").read_bytes() == first and not (out / "b.nii.gz").exists()
    # --continue keeps the finished case and segments the one it lacks
    result = run_cli("predict", *args, "--continue")
    assert result.returncode == 0, result.stderr
    assert "b: " in result.stdout and "a: " not in result.stdout and "1 kept" in result.stdout
    assert set(json.loads((out / "predict.json").read_text())["cases"]) == {"a", "b"}
    # other options cannot continue a run; --overwrite replaces it, its old maps included
    changed = run_cli("predict", *args, "--continue", "--min-lesion-ml", "1")
    assert_one_line_error(changed, "another model, plan or options")
    (scans / "a.nii.gz").unlink()
    assert run_cli("predict", *args, "--overwrite").returncode == 0
    assert not (out / "a.nii.gz").exists() and (out / "b.nii.gz").exists()
    assert set(json.loads((out / "predict.json").read_text())["cases"]) == {"b"}
    assert_one_line_error(run_cli("predict", *args, "--overwrite", "--continue"), "choose one")


def test_fast_stays_seamless_and_never_overrides_an_explicit_overlap():
    """--fast drops mirroring and lowers the overlap, but windows still overlap (Gaussian
    blending, no tile seams), and an overlap the user gave is kept (issue 18)."""
    assert (PredictOptions().overlap, PredictOptions().mirror) == (0.5, True)
    fast = PredictOptions(fast=True)
    assert fast.mirror is False and 0 < fast.overlap < 0.5
    assert PredictOptions(fast=True, overlap=0.1).overlap == 0.1
    assert PredictOptions(fast=True, overlap=0.0).overlap == 0.0
    assert PredictOptions().device == "auto"
    with pytest.raises(TumorFMError, match="overlap nan"):
        PredictOptions(overlap=float("nan"))


class _Counting(_KidneyEverywhere):
    calls = 0

    def forward(self, x):
        type(self).calls += x.shape[0]
        return super().forward(x)


@pytest.mark.parametrize("shape,overlap", [((16, 32, 32), 0.5), ((40, 70, 33), 0.5),
                                           ((10, 100, 31), 0.25), ((17, 33, 65), 0.0)])  # fmt: skip
def test_the_window_bar_counts_every_window_monai_visits(shape, overlap, capsys):
    options = PredictOptions(mirror=False, overlap=overlap, precision="fp32")
    network = _Counting()
    _Counting.calls = 0
    plan = Plan.from_dict(_plan("CT"))
    predictor = Predictor(network, plan, CLASSES, options, patch_size=PATCH)
    predictor.sliding_window(np.zeros((1, *shape), np.float32), progress="case")
    assert _Counting.calls == window_count(shape, PATCH, overlap) > 0
    assert "\r" not in capsys.readouterr().err  # not a terminal: no bar in a log


def test_predict_writes_no_progress_bars_into_a_redirected_log(bundle, tmp_path):
    scan = CASES / "totalseg_example_ct_sm.nii.gz"
    result = run_cli("predict", "-i", scan, "-o", tmp_path / "out", "-m", bundle, "--plan",
                     "ct_site", "--fast")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr + result.stdout and "window" not in result.stderr
