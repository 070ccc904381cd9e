"""Orientation: a scan stored sagittally or coronally reaches the network, the statistics and the
pictures as the axial stack it would be if stored axially, and comes back in its own order."""

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SARCOMA

from tumorfm.data.formats import read_dataset
from tumorfm.data.io import Geometry, read_volume, write_volume
from tumorfm.data.orient import Orientation
from tumorfm.data.preprocess import _read_case
from tumorfm.eval.metrics import dice
from tumorfm.eval.report import report_from_evaluation
from tumorfm.infer.predictor import PredictOptions, Predictor

SCAN = SARCOMA / "imagesTr" / "STS_019_0000.nii.gz"
LABEL = SARCOMA / "labelsTr" / "STS_019.nii.gz"


def _tilted(image: sitk.Image, degrees: float) -> sitk.Image:
    """The same voxels under an oblique direction (rotated about z)."""
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])  # fmt: skip
    image = sitk.Image(image)
    direction = rotation @ np.asarray(image.GetDirection()).reshape(3, 3)
    image.SetDirection(direction.ravel().tolist())
    return image


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("flip", [(False, False, False), (True, False, True)])
@pytest.mark.parametrize("degrees", [0.0, 30.0])
def test_axial_order_is_dicomorient_without_flips(order, flip, degrees):
    image = sitk.Flip(sitk.ReadImage(str(SCAN)), flip)
    stored = sitk.PermuteAxes(_tilted(image, degrees), order)
    orientation = Orientation.of(Geometry.of(stored))
    reference = sitk.DICOMOrient(stored, orientation.axial_letters)  # SimpleITK's own answer
    array = sitk.GetArrayFromImage(stored)
    axial = orientation.to_axial(array)
    assert np.array_equal(axial, sitk.GetArrayFromImage(reference))
    assert np.array_equal(orientation.back(axial), array)
    expected = Geometry.of(reference)
    got = orientation.geometry(Geometry.of(stored))
    assert got.size == expected.size and got.spacing == expected.spacing
    assert np.allclose(got.origin, expected.origin) and np.allclose(
        got.direction, expected.direction
    )
    # the unpermuted scan: only the flips differ, which the axial order keeps as stored
    assert np.array_equal(axial, sitk.GetArrayFromImage(image))
    assert orientation.is_axial == (order == (0, 1, 2))


def test_channels_in_front_stay_in_front():
    orientation = Orientation("SLP", (2, 0, 1))
    image = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert orientation.to_axial(image).shape == (2, 5, 3, 4)
    assert np.array_equal(orientation.back(orientation.to_axial(image)), image)


def _sagittal_copy(path, folder, name):
    """`path` stored with its axes permuted (x, y, z -> z, x, y): the same patient space."""
    image = sitk.PermuteAxes(sitk.ReadImage(str(path)), [2, 0, 1])
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(folder / name))
    return folder / name


def test_a_sagittally_stored_scan_gets_the_axial_prediction():
    """The shipped model on a real sarcoma, stored axially and sagittally: the same label map,
    voxel for voxel, each in its own scan's order; the network alone is not rotation-invariant,
    so a scan reaching it rotated (no reorientation) is segmented differently."""
    scan = read_volume(SCAN)
    stored = sitk.PermuteAxes(sitk.ReadImage(str(SCAN)), [2, 0, 1])
    sagittal = Geometry.of(stored)
    options = PredictOptions("sarcoma_ct", mirror=False, overlap=0.25, precision="fp32")
    predictor = Predictor.from_bundle("tsfm-real-lowres", options)
    axial = predictor(scan.array, scan.geometry).label
    permuted = predictor(sitk.GetArrayFromImage(stored), sagittal)
    assert permuted.geometry == sagittal and permuted.label.flags.c_contiguous
    truth = read_volume(LABEL).array > 0
    assert dice(axial > 0, truth) > 0.3  # the sarcoma is found (a broken predictor finds none)
    assert np.array_equal(Orientation.of(sagittal).to_axial(permuted.label), axial)
    unaware = Geometry(
        sagittal.size, sagittal.spacing, sagittal.origin, (1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    rotated = predictor(sitk.GetArrayFromImage(stored), unaware).label
    assert not np.array_equal(Orientation.of(sagittal).to_axial(rotated), axial)


def test_preprocessing_reads_a_sagittal_case_as_the_axial_one(tmp_path):
    root = tmp_path / "Dataset101_SarcomaCT"
    (root / "imagesTr").mkdir(parents=True)
    (root / "dataset.json").write_text((SARCOMA / "dataset.json").read_text())
    _sagittal_copy(SCAN, root / "imagesTr", SCAN.name)
    _sagittal_copy(LABEL, root / "labelsTr", LABEL.name)
    (case,) = read_dataset(root).labelled_cases
    (original,) = [c for c in read_dataset(SARCOMA).labelled_cases if c.case_id == "STS_019"]
    image, label, spacing, stored = _read_case(case)
    image0, label0, spacing0, stored0 = _read_case(original)
    assert np.array_equal(image, image0) and np.array_equal(label, label0)
    assert (
        spacing == spacing0 and stored["orientation"] == "SLP" and stored0["orientation"] == "LPS"
    )


def test_the_report_draws_a_sagittal_scan_axially(tmp_path):
    """Same picture (PNG bytes) for the scan stored axially and sagittally."""
    pages = []
    for name, folder in (("axial", SARCOMA), ("sagittal", tmp_path / "sagittal")):
        if name == "sagittal":
            _sagittal_copy(SCAN, folder / "imagesTr", SCAN.name)
            _sagittal_copy(LABEL, folder / "labelsTr", LABEL.name)
        label = folder / "labelsTr" / LABEL.name
        case = {
            "case": "STS_019",
            "gt": str(label),
            "pred": str(label),
            "scores": {"s": {"dice": 1}},
        }
        result = {
            "settings": {"classes": [{"name": "s", "gt_value": 1, "pred_value": 1}]},
            "aggregates": {},
            "cases": [case],
        }
        page = report_from_evaluation(result, folder / "imagesTr", tmp_path / f"{name}.html", "t")
        pages.append(page.read_text())
    assert pages[0] == pages[1]


def test_write_back_keeps_the_stored_geometry(tmp_path):
    stored = sitk.PermuteAxes(sitk.ReadImage(str(LABEL)), [1, 2, 0])
    geometry = Geometry.of(stored)
    orientation = Orientation.of(geometry)
    axial = orientation.to_axial(sitk.GetArrayFromImage(stored))
    path = write_volume(
        np.ascontiguousarray(orientation.back(axial)), geometry, tmp_path / "a.nrrd"
    )
    back = read_volume(path)
    assert back.geometry == geometry
    assert np.array_equal(back.array, sitk.GetArrayFromImage(stored))
