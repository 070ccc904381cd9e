"""DICOM out (issue 21, item 1): DICOM-SEG and RTSTRUCT made from predict's label map, read back
and checked against the NIfTI label map and the source series, on a series made from a real CT."""

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from conftest import CASES, assert_one_line_error, run_cli, write_dicom_series
from pydicom.sr.codedict import codes

from tumorfm.data.classes import class_colours
from tumorfm.data.fingerprint import DatasetFingerprint
from tumorfm.data.io import read_volume, write_volume
from tumorfm.data.plan import plan_dataset
from tumorfm.files import write_json
from tumorfm.infer.dicom_out import write_dicom_outputs
from tumorfm.model import create_model
from tumorfm.model.bundle import save_bundle

CLASSES = ["liver", "liver_tumour", "kidney", "vessel"]
PATCH = (16, 32, 32)
CT = CASES / "totalseg_example_ct_sm.nii.gz"


def _plan() -> dict:
    ct = {"mean": 40.0, "std": 200.0, "percentile_00_5": -500.0, "percentile_99_5": 800.0}
    fingerprint = DatasetFingerprint([(4.0, 3.0, 3.0)] * 3, [(40, 80, 80)] * 3, [ct], 1.0)
    return plan_dataset(fingerprint, ["CT"], len(CLASSES) + 1).to_dict()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """An untrained tsfm-tiny whose head bias makes 'liver' cover everything."""
    torch.manual_seed(0)
    model = create_model("tsfm-tiny", in_channels=1, num_classes=4, patch_size=PATCH).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([5.0, -5.0, -5.0, -5.0]))
    return save_bundle(
        tmp_path_factory.mktemp("bundle") / "tiny_liver",
        model,
        CLASSES,
        ["CT"],
        preset="tsfm-tiny",
        plan={"datasets": {"ct_site": _plan()}},
        paint_order=CLASSES,
        extra={"parents": {"liver_tumour": "liver"}},
    )


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicom") / "ct_series"
    write_dicom_series(read_volume(CT), folder)
    return folder


def _source(series):
    files = sorted(series.iterdir())
    return {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(f) for f in files)}


def _check_seg(path, label, labels, series):
    """The SEG's segments, codes, colours, frame positions and masks against the label map."""
    seg = hd.seg.segread(path)
    present = [n for n, v in sorted(labels.items(), key=lambda nv: nv[1]) if (label == v).any()]
    assert seg.SegmentationType == "BINARY" and seg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert [s.SegmentLabel for s in seg.SegmentSequence] == present
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("tumorfm", "0.1.0")
    colours = class_colours(max(labels.values()))
    for segment in seg.SegmentSequence:
        rgb = hd.color.CIELabColor.from_dicom_value(segment.RecommendedDisplayCIELabValue)
        expected = colours[labels[segment.SegmentLabel] - 1]
        assert np.abs(np.subtract(rgb.to_rgb(), expected)).max() <= 1
    # decode frame by frame: each frame sits on its source instance and holds its segment
    source = _source(series)
    order = [ds.SOPInstanceUID for ds in sorted(source.values(), key=lambda d: d.InstanceNumber)]
    decoded = np.zeros_like(label)
    pixels = seg.pixel_array.reshape(-1, *label.shape[1:])
    assert len(seg.PerFrameFunctionalGroupsSequence) > 0
    shared = seg.SharedFunctionalGroupsSequence[0].get("SegmentIdentificationSequence")
    for frame, group in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = group.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(position, source[uid].ImagePositionPatient, atol=1e-3)
        identification = group.get("SegmentIdentificationSequence") or shared  # one segment
        number = identification[0].ReferencedSegmentNumber
        value = labels[seg.SegmentSequence[number - 1].SegmentLabel]
        decoded[order.index(uid)][frame > 0] = value
    np.testing.assert_array_equal(decoded, label)
    # and highdicom's own reading, by source instance
    by_instance = seg.get_pixels_by_source_instance(order, combine_segments=True)
    values = np.array([0] + [labels[n] for n in present])
    np.testing.assert_array_equal(values[by_instance], label)
    return seg


def test_dicom_seg_and_rtstruct_from_the_cli_match_the_label_map(bundle, series, tmp_path):
    out = tmp_path / "out"
    args = ["-i", series, "-o", out, "-m", bundle, "--plan", "ct_site", "--fast"]
    result = run_cli("predict", *args, "--output-type", "dicom-seg", "--output-type", "rtstruct")
    assert result.returncode == 0, result.stderr
    label = read_volume(out / "ct_series.nii.gz")
    assert label.geometry.close_to(read_volume(series).geometry)
    record = json.loads((out / "predict.json").read_text())
    labels = record["settings"]["labels"]
    files = record["cases"]["ct_series"]["files"]
    assert files["dicom-seg"] == str(out / "ct_series_seg.dcm")
    assert files["rtstruct"] == str(out / "ct_series_rtstruct.dcm")
    assert "ct_series_seg.dcm" in result.stdout and "arning" not in result.stderr
    seg = _check_seg(out / "ct_series_seg.dcm", label.array, labels, series)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver"]  # the bias paints liver
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert seg.SeriesDescription == "tumorfm tiny_liver"
    rt = pydicom.dcmread(out / "ct_series_rtstruct.dcm")
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["liver"]
    assert not list(out.glob(".*"))  # no temporary files left


def test_classes_codes_and_slice_order_voxel_for_voxel(series, tmp_path):
    """Organs, a lesion inside its organ and a class without a code, boxes placed off-centre so a
    flipped or shifted slice order would show; made from a folder as predict leaves it."""
    out = tmp_path / "out"
    geometry = read_volume(series).geometry
    label = np.zeros(tuple(reversed(geometry.size)), np.uint8)
    label[3:20, 10:60, 20:70] = 1  # liver
    label[8:12, 30:40, 30:45] = 2  # liver_tumour inside it
    label[22:27, 70:90, 80:100] = 3  # kidney, on other slices
    label[0, 5, 5] = 4  # one voxel of vessel on the first slice
    write_volume(label, geometry, out / "ct_series.nii.gz")
    labels = {"liver": 1, "liver_tumour": 2, "kidney": 3, "vessel": 4}
    settings = {"bundle": "/x/tiny", "labels": labels, "lesion_classes": ["liver_tumour"]}
    case = {"input": [str(series)], "files": {"label": str(out / "ct_series.nii.gz")}}
    write_json(out / "predict.json", {"settings": settings, "cases": {"ct_series": case}})
    written = write_dicom_outputs(out, ["dicom-seg", "rtstruct"])
    assert set(written["ct_series"]) == {"dicom-seg", "rtstruct"}
    files = json.loads((out / "predict.json").read_text())["cases"]["ct_series"]["files"]
    assert files["dicom-seg"] == str(out / "ct_series_seg.dcm")
    seg = _check_seg(out / "ct_series_seg.dcm", label, labels, series)
    sct = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert sct["kidney"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    tumour = sct["liver_tumour"]
    assert tumour.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert tumour.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # neoplasm
    assert tumour.AnatomicRegionSequence[0].CodeValue == codes.SCT.Liver.value
    assert sct["vessel"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # tissue
    _check_rtstruct(out / "ct_series_rtstruct.dcm", label, labels, geometry)


def _check_rtstruct(path, label, labels, geometry):
    """Every contour point is the centre of a voxel of its class on the slice it names, and each
    box's contour spans the box on every slice it covers. (rt-utils' own contours-to-mask reader
    makes (Columns, Rows) masks, wrong for these non-square slices, so it is not the judge.)"""
    rt = pydicom.dcmread(path)
    names = {r.ROINumber: r.ROIName for r in rt.StructureSetROISequence}
    assert list(names.values()) == [n for n, v in labels.items() if (label == v).any()]
    image = geometry.apply_to(sitk.GetImageFromArray(label))
    for roi in rt.ROIContourSequence:
        value = labels[names[roi.ReferencedROINumber]]
        points = np.concatenate([np.reshape(c.ContourData, (-1, 3)) for c in roi.ContourSequence])
        index = np.array([image.TransformPhysicalPointToContinuousIndex(p) for p in points])
        np.testing.assert_allclose(index, np.round(index), atol=1e-3)
        x, y, z = np.round(index).astype(int).T
        assert (label[z, y, x] == value).all()
        if value == 4:
            continue  # one voxel
        zs, ys, xs = np.nonzero(label == value)
        assert set(z) == set(zs)
        for k in set(z):
            on = z == k
            assert (x[on].min(), x[on].max()) == (xs.min(), xs.max())
            assert (y[on].min(), y[on].max()) == (ys.min(), ys.max())


def test_dicom_types_refused_for_other_input_and_unknown_types(bundle, tmp_path):
    out = tmp_path / "out"
    args = ["-i", CT, "-o", out, "-m", bundle, "--plan", "ct_site", "--fast"]
    result = run_cli("predict", *args, "--output-type", "dicom-seg")
    assert_one_line_error(result, "--output-type dicom-seg", "not a DICOM series")
    assert not out.exists()
    result = run_cli("predict", *args, "--output-type", "dicom")
    assert_one_line_error(result, "--output-type dicom", "unknown", "dicom-seg, rtstruct")
    assert not out.exists()
