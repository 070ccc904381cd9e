"""Statistics: every lesion measured, RECIST axial diameters, intensities, lesion classes recorded
in bundles (and the name rule for older ones), and the stand-alone `tumorfm statistics`."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from conftest import CASES, SARCOMA, assert_one_line_error, run_cli
from scipy import ndimage

from tumorfm.data.classes import named_as_lesion
from tumorfm.data.fingerprint import DatasetFingerprint
from tumorfm.data.io import read_volume
from tumorfm.data.phantom import DEFAULT_SITES, write_phantom_pool
from tumorfm.data.plan import plan_dataset
from tumorfm.data.pool import load_pool
from tumorfm.data.preprocess import preprocess_pool
from tumorfm.errors import TumorFMError
from tumorfm.infer.postprocess import axial_diameters, intensities, max_diameter_mm, statistics
from tumorfm.infer.predict import predict, predict_iter
from tumorfm.infer.predictor import PredictOptions, Predictor
from tumorfm.model import create_model
from tumorfm.model.bundle import read_bundle_config, save_bundle
from tumorfm.train.config import make_config
from tumorfm.train.finetune import finetune
from tumorfm.train.trainer import pretrain
from tumorfm.workflows.demo import write_pool_file

TINY = dict(patch_size=(16, 32, 32), batch_size=2, iterations_per_epoch=1, val_every=1,
            val_batches=1, workers=0, precision="fp32")  # fmt: skip


def _ellipse(shape_yx, spacing_yx, semi_x_mm, semi_y_mm, degrees=0.0) -> np.ndarray:
    """A filled ellipse centred on a pixel, its first axis turned `degrees` from x."""
    y, x = (np.indices(shape_yx) - np.array(shape_yx)[:, None, None] // 2).astype(float)
    y, x = y * spacing_yx[0], x * spacing_yx[1]
    turn = np.deg2rad(degrees)
    u, v = x * np.cos(turn) + y * np.sin(turn), -x * np.sin(turn) + y * np.cos(turn)
    return (u / semi_x_mm) ** 2 + (v / semi_y_mm) ** 2 <= 1


def test_a_thin_lesion_beside_twenty_spheres_is_measured():
    """The longest lesion is measured wherever it ranks by size (the old shortcut measured
    only the 20 largest components and reported 16 mm here)."""
    label = np.zeros((40, 60, 220), np.uint8)
    ball = np.linalg.norm(np.indices((9, 9, 9)) - 4, axis=0) <= 4  # 257 voxels each
    for i in range(20):
        z, y, x = 2 + (i % 2) * 12, 2 + (i // 2) % 5 * 11, 2 + (i // 10) * 11
        label[z : z + 9, y : y + 9, x : x + 9][ball] = 1
    label[35, 55, 20:210] = 1  # 190 voxels in a line: smaller than every sphere
    row = statistics(label, {"metastasis": 1}, (1.0, 1.0, 1.0), {"metastasis"})["metastasis"]
    assert row["lesions"] == 21
    assert row["largest_lesion_ml"] == pytest.approx(0.257)
    assert row["largest_diameter_mm"] == pytest.approx(189.0)
    assert (row["longest_axial_diameter_mm"], row["axial_slice"]) == (pytest.approx(189.0), 35)


def test_recist_diameters_of_a_known_ellipse():
    """Axial long axis 40 mm and perpendicular 20 mm on the widest slice, chosen over a lesion
    that is longer in 3D (a column along z) but narrow on every slice."""
    spacing = (3.0, 0.5, 0.5)
    label = np.zeros((30, 61, 121), np.uint8)
    for z, scale in zip(range(10, 15), (0.5, 0.8, 1.0, 0.8, 0.5), strict=True):
        label[z][_ellipse((61, 121), spacing[1:], 20 * scale, 10 * scale)] = 1
    label[0:30, 5:8, 110:113] = 1  # 87 mm along z, a 3x3 pixel section
    row = statistics(label, {"lesion": 1}, spacing, {"lesion"})["lesion"]
    column = np.sqrt(87**2 + 2 * 1.0**2)  # corner to corner
    assert row["lesions"] == 2 and row["largest_diameter_mm"] == pytest.approx(column, abs=0.01)
    assert row["longest_axial_diameter_mm"] == pytest.approx(40.0)
    assert row["perpendicular_diameter_mm"] == pytest.approx(20.0)
    assert row["axial_slice"] == 12
    # turned, on non-square pixels: within a pixel of the true axes
    turned = _ellipse((121, 161), (0.6, 0.4), 20, 8, degrees=30)
    longest, perpendicular = axial_diameters(turned, (0.6, 0.4))
    assert longest == pytest.approx(40.0, abs=0.6) and perpendicular == pytest.approx(16, abs=0.6)
    assert axial_diameters(np.ones((1, 1), bool), (1, 1)) == (0.0, 0.0)  # one pixel


def test_mean_and_std_intensity_match_numpy():
    rng = np.random.default_rng(0)
    image = rng.normal(40, 30, (12, 20, 24)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[2:8, 3:15, 4:20] = 1
    label[4:6, 5:9, 6:10] = 3
    values = {"liver": 1, "kidney": 2, "liver_tumour": 3}
    stats = statistics(label, values, (2.0, 1.0, 1.0), {"liver_tumour"}, image)
    for name, value in values.items():
        inside = image[label == value].astype(np.float64)
        if inside.size:
            assert stats[name]["intensity_mean"] == pytest.approx(inside.mean(), abs=1e-3)
            assert stats[name]["intensity_std"] == pytest.approx(inside.std(), abs=1e-3)
    assert stats["kidney"]["intensity_mean"] is None and stats["kidney"]["voxels"] == 0
    two = intensities(label, {"liver": 1}, np.stack([image, 2 * image]))["liver"]
    mean = image[label == 1].mean(dtype=np.float64)
    assert two["intensity_mean"] == pytest.approx([mean, 2 * mean], abs=1e-3)


def test_lesion_names_are_read_word_by_word():
    """The rule for bundles that do not record their lesion classes, and for label maps."""
    lesions = [
        "glioblastoma",
        "lymphoma",
        "lymph_node",
        "GTV",
        "GTVp",
        "melanoma",
        "LiverTumor",
        "liver_tumour",
        "kidney_cyst",
        "soft_tissue_sarcoma",
        "lung_nodules",
        "breast_mass",
    ]
    organs = ["massive_organ", "cystic_duct", "liver", "lymph", "masseter", "class_1", "aorta"]
    assert [name for name in lesions if not named_as_lesion(name)] == []
    assert [name for name in organs if named_as_lesion(name)] == []


def test_a_pool_names_its_tumour_classes(tmp_path):
    datasets = [
        {"name": "a", "path": "a", "num_cases": 3, "labels": {1: "liver", 2: "massive_organ"},
         "synthesis": {"organ": "liver", "tumour": "blob"}},
        {"name": "b", "path": "b", "num_cases": 3, "labels": {1: "spot", 2: "glioblastoma"}},
    ]  # fmt: skip
    path = tmp_path / "pool.yaml"
    path.write_text(
        yaml.safe_dump({"name": "p", "parents": {"spot": "liver"}, "datasets": datasets})
    )
    pool = load_pool(path, check_paths=False)
    assert pool.lesions == ["blob", "spot", "glioblastoma"]  # synthesised, a child, a name
    assert pool.summary()["lesions"] == pool.lesions
    path.write_text(yaml.safe_dump({"name": "p", "lesions": ["liver"], "datasets": datasets}))
    assert load_pool(path, check_paths=False).lesions == ["liver"]  # the file says so
    path.write_text(yaml.safe_dump({"name": "p", "lesions": ["lung"], "datasets": datasets}))
    with pytest.raises(TumorFMError, match="lesions: 'lung' is not a global class"):
        load_pool(path, check_paths=False)


def test_pretraining_records_the_pools_tumour_classes(tmp_path):
    sites = (DEFAULT_SITES[0], DEFAULT_SITES[3])  # liver with tumours; multi-organ
    folders = write_phantom_pool(tmp_path / "raw", 3, (20, 40, 40), sites=sites)
    pool = load_pool(write_pool_file(folders, tmp_path / "raw" / "pool.yaml"))
    preprocess_pool(pool, tmp_path / "cache", progress=False)
    config = make_config("cpu", epochs=1, **TINY)
    pretrain(tmp_path / "cache", tmp_path / "run", config, progress=False)
    meta = read_bundle_config(tmp_path / "run" / "last")
    assert "liver" in meta["classes"] and meta["lesion_classes"] == ["liver_tumour"]


def test_finetuning_keeps_the_bundles_lesion_class(tmp_path):
    """A class the bundle records as a lesion stays one, though its name does not say so."""
    torch.manual_seed(0)
    model = create_model("tsfm-tiny", 1, 3, (32, 32, 32), deep_supervision=True)
    bundle = save_bundle(tmp_path / "b", model, ["liver", "target", "kidney"], ["CT"],
                         "tsfm-tiny", lesions=["target"])  # fmt: skip
    settings = {**TINY, "iterations_per_epoch": 2}
    del settings["workers"]
    finetune(SARCOMA, bundle, tmp_path / "run", 1, mapping={"sarcoma": "target"}, workers=1,
             progress=False, **settings)  # fmt: skip
    assert read_bundle_config(tmp_path / "run" / "last")["lesion_classes"] == ["target"]


def _plan() -> dict:
    ct = {"mean": 40.0, "std": 200.0, "percentile_00_5": -500.0, "percentile_99_5": 800.0}
    fingerprint = DatasetFingerprint([(4.0, 3.0, 3.0)] * 3, [(40, 80, 80)] * 3, [ct], 1.0)
    return plan_dataset(fingerprint, ["CT"], 4).to_dict()


def _bundle(folder, lesions=None):
    """An untrained tsfm-tiny whose head bias paints 'liver' over everything."""
    torch.manual_seed(0)
    model = create_model("tsfm-tiny", in_channels=1, num_classes=3, patch_size=(16, 32, 32))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([5.0, -5.0, -5.0]))
    return save_bundle(folder, model, ["liver", "massive_organ", "lymphoma"], ["CT"], "tsfm-tiny",
                       plan={"datasets": {"ct": _plan()}}, lesions=lesions)  # fmt: skip


def test_lesion_classes_of_a_bundle_an_older_one_and_the_user(tmp_path):
    options = PredictOptions(plan="ct", precision="fp32")
    recorded = Predictor.from_bundle(_bundle(tmp_path / "new", ["massive_organ"]), options)
    assert recorded.lesions == {"massive_organ"}  # recorded beats the name
    older = Predictor.from_bundle(_bundle(tmp_path / "old"), options)  # nothing recorded
    assert "lesion_classes" not in read_bundle_config(tmp_path / "old")
    assert older.lesions == {"lymphoma"}  # the names decide
    assert older.lesion_classes(["liver"]) == {"liver"}
    with pytest.raises(TumorFMError, match="lesion class 'spleen' is not a class of the bundle"):
        older.lesion_classes(["spleen"])
    config = tmp_path / "new" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "lesion_classes": ["spleen"]}))
    with pytest.raises(TumorFMError, match="lesion_classes must list classes of the bundle"):
        read_bundle_config(tmp_path / "new")


def test_predict_statistics_measure_the_chosen_lesions_and_the_scan(tmp_path):
    scan = CASES / "totalseg_example_ct_sm.nii.gz"
    options = PredictOptions(plan="ct", fast=True, precision="fp32")
    bundle = _bundle(tmp_path / "b")
    result = predict(scan, bundle, tmp_path / "out", options, statistics=True, progress=False,
                     lesion_classes=["liver"])["totalseg_example_ct_sm"]  # fmt: skip
    stats = json.loads((tmp_path / "out" / "totalseg_example_ct_sm_statistics.json").read_text())
    image = read_volume(scan).array.astype(np.float64)
    inside = image[result.label == 1]
    assert stats["liver"]["lesions"] == 1 and "lesions" not in stats["lymphoma"]
    assert stats["liver"]["intensity_mean"] == pytest.approx(inside.mean(), abs=1e-3)
    assert stats["liver"]["intensity_std"] == pytest.approx(inside.std(), abs=1e-3)
    settings = json.loads((tmp_path / "out" / "predict.json").read_text())["settings"]
    assert settings["lesion_classes"] == ["liver"]


def test_largest_component_on_lesions_alone_says_it_changes_nothing(tmp_path, capsys):
    """Tumours may be multifocal: the option keeps organs' largest components, and a run whose
    classes are all lesions is told so rather than left to think its masks were cleaned."""
    bundle = _bundle(tmp_path / "b", ["lymphoma"])
    for classes, noted in ((["lymphoma"], True), (["liver", "lymphoma"], False)):
        options = PredictOptions(plan="ct", classes=classes, largest_component=True)
        list(predict_iter([], bundle, None, options, progress=False))
        assert ("changes nothing here" in capsys.readouterr().err) is noted, classes
    options = PredictOptions(plan="ct", classes=["lymphoma"])  # the option off: no note
    list(predict_iter([], bundle, None, options, progress=False))
    assert "largest" not in capsys.readouterr().err


def _write(array, path, spacing=(0.5, 0.5, 3.0), direction=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def label_map(tmp_path):
    """An ellipse (liver_tumour, 40 x 20 mm on slice 12) inside a box (liver), and a CT."""
    label = np.zeros((30, 61, 121), np.uint8)
    label[5:20, 2:59, 2:119] = 1
    label[12][_ellipse((61, 121), (0.5, 0.5), 20, 10)] = 2
    scan = np.random.default_rng(1).normal(60, 10, label.shape).astype(np.int16)
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "liver": 1, "liver_tumour": 2}})
    )
    return _write(label, tmp_path / "case.nii.gz"), _write(scan, tmp_path / "scan.nii.gz")


def test_statistics_command_on_a_label_map_made_elsewhere(label_map, tmp_path):
    label_file, scan_file = label_map
    result = run_cli("statistics", label_file, "--image", scan_file, "-o", tmp_path / "s.json")
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    tumour = stats["liver_tumour"]
    assert tumour["lesions"] == 1 and tumour["axial_slice"] == 12
    assert (tumour["longest_axial_diameter_mm"], tumour["perpendicular_diameter_mm"]) == (40, 20)
    assert "lesions" not in stats["liver"]  # an organ, by its name
    label, scan = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file))), read_volume(scan_file)
    assert stats["liver"]["intensity_mean"] == pytest.approx(
        scan.array[label == 1].mean(), abs=1e-3
    )
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["class", "volume", "ml"]
    assert any(line.split()[0] == "liver_tumour" and "40 x 20 (z 12)" in line for line in lines)
    # no dataset.json: classes by value, and lesions as the user says
    (tmp_path / "dataset.json").unlink()
    result = run_cli("statistics", label_file, "--lesion-classes", "class_2")
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "case_statistics.json").read_text())
    assert list(stats)[2:] == ["class_1", "class_2"] and stats["class_2"]["lesions"] == 1


def test_a_sagittally_stored_label_map_is_measured_axially(label_map, tmp_path):
    label = sitk.ReadImage(str(label_map[0]))
    sagittal = sitk.DICOMOrient(label, "PSL")  # stored x, y, z along A/P, S/I, L/R: no flip
    assert sagittal.GetSize() == (61, 30, 121)
    sitk.WriteImage(sagittal, str(tmp_path / "sagittal.nii.gz"))
    result = run_cli("statistics", tmp_path / "sagittal.nii.gz")
    assert result.returncode == 0, result.stderr
    tumour = json.loads((tmp_path / "sagittal_statistics.json").read_text())["liver_tumour"]
    assert (tumour["longest_axial_diameter_mm"], tumour["perpendicular_diameter_mm"]) == (40, 20)
    assert tumour["axial_slice"] == 12


def test_statistics_command_bad_input_is_one_line(label_map, tmp_path):
    label_file, scan_file = label_map
    other = _write(np.zeros((30, 61, 121), np.int16), tmp_path / "other.nii.gz", (0.5, 0.5, 2.0))
    assert_one_line_error(
        run_cli("statistics", label_file, "--image", other), "other.nii.gz", "spacing", "differ"
    )
    assert_one_line_error(
        run_cli("statistics", label_file, "--lesion-classes", "spleen"), "'spleen'", "liver"
    )
    named = tmp_path / "names.json"
    named.write_text(json.dumps({"labels": {"0": "background", "1": "liver"}}))  # MSD style
    assert_one_line_error(
        run_cli("statistics", label_file, "--labels", named), "label value 2", "names.json"
    )
    soft = _write(np.full((4, 5, 6), 0.5, np.float32), tmp_path / "soft.nii.gz")
    assert_one_line_error(run_cli("statistics", soft), "soft.nii.gz", "non-integer")
    assert_one_line_error(run_cli("statistics", tmp_path / "none.nii.gz"), "none.nii.gz")


@pytest.mark.parametrize("seed", range(3))
def test_diameters_equal_simpleitks_feret_diameter(seed):
    """The hull shortcut gives SimpleITK's Feret diameter, on blobs, a flat and a thin lesion."""
    rng = np.random.default_rng(seed)
    spacing = (3.0, 0.7, 0.9)
    blob = ndimage.gaussian_filter(rng.random((20, 40, 40)), 3) > 0.52
    flat = np.zeros((5, 30, 30), bool)
    flat[2, 5:25, 8:12] = True
    line = np.zeros((6, 6, 40), bool)
    line[3, 2, 4:37] = True
    for mask in (blob, flat, line):
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.SetSpacing(spacing[::-1])
        shapes = sitk.LabelShapeStatisticsImageFilter()
        shapes.ComputeFeretDiameterOn()
        shapes.Execute(sitk.ConnectedComponent(image, True))
        for n in shapes.GetLabels():
            component = sitk.GetArrayFromImage(sitk.ConnectedComponent(image, True)) == n
            assert max_diameter_mm(component, spacing) == pytest.approx(
                shapes.GetFeretDiameter(n), abs=1e-6
            )
