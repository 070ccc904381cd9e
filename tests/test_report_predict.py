"""The report of a prediction run (`predict --report`): slices through the lesions, their
numbers, the scale bar, sagittal scans drawn axially, failed cases listed, the statistics."""

import base64
import gzip
import json
import re
import struct
from html.parser import HTMLParser

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SARCOMA, run_cli

from tumorfm.data.classes import class_colours
from tumorfm.data.io import Geometry, read_volume, write_volume
from tumorfm.data.orient import Orientation
from tumorfm.eval.report import GAP
from tumorfm.eval.report_predict import (
    bar_length_mm,
    pick_slices,
    prediction_figures,
    report_from_prediction,
    report_modality,
)
from tumorfm.infer.postprocess import statistics

SCAN = SARCOMA / "imagesTr" / "STS_019_0000.nii.gz"
LABEL = SARCOMA / "labelsTr" / "STS_019.nii.gz"
NAME = "soft_tissue_sarcoma"


class Page(HTMLParser):
    """The report's sections: per <h2> case, its figures (PNG bytes, caption), text and cells."""

    def __init__(self):
        super().__init__()
        self.cases, self.summary, self.where = {}, [], None
        self.case = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.where = tag
        if tag == "img" and self.case is not None:
            data = base64.b64decode(attrs["src"].split(",", 1)[1])
            self.case["figures"].append({"png": data, "alt": attrs["alt"], "caption": ""})

    def handle_data(self, data):
        if self.where == "h2":
            self.case = self.cases.setdefault(data, {"figures": [], "text": "", "cells": []})
        elif self.case is None:
            if self.where == "td":
                self.summary.append(data)
        elif self.where == "figcaption":
            self.case["figures"][-1]["caption"] += data
        elif self.where == "td":
            self.case["cells"].append(data)
        else:
            self.case["text"] += data

    def handle_endtag(self, tag):
        self.where = None


def read_page(path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def decode(png: bytes, tmp_path) -> np.ndarray:
    path = tmp_path / "figure.png"
    path.write_bytes(png)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def slice_number(caption: str) -> tuple[int, int]:
    z, depth = re.match(r"z = (\d+) of (\d+)", caption).groups()
    return int(z), int(depth)


def make_run(folder, scan=SCAN, label=LABEL, with_statistics=True, failed=True):
    """A prediction folder as `predict` leaves it, the true label standing in for the
    prediction, and (`failed`) a case whose scan could not be read."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = {NAME: 1}
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, **labels}}))
    entry = {"input": [str(scan)], "files": {"label": str(label)}}
    if with_statistics:
        volume, image = read_volume(label), read_volume(scan)
        axial = Orientation.of(volume.geometry)
        entry["statistics"] = statistics(
            axial.to_axial(volume.array), labels, axial.spacing_zyx(volume.geometry), {NAME},
            axial.to_axial(image.array),
        )  # fmt: skip
    cases = {"STS_019": entry}
    if failed:
        cases["broken"] = {"input": ["broken.nii"], "error": "broken.nii: pixdim[1] is 0.0"}
    settings = {"bundle": "tsfm-real-lowres", "plan": "sarcoma_ct", "labels": labels}
    settings["lesion_classes"] = [NAME]
    record = {"input": "scans", "settings": settings, "cases": cases}
    (folder / "predict.json").write_text(json.dumps(record))
    return folder


def sagittal_copy(path, folder):
    """`path` stored with its axes permuted (x, y, z -> z, x, y): the same patient space."""
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.PermuteAxes(sitk.ReadImage(str(path)), [2, 0, 1]), str(folder / path.name))
    return folder / path.name


def test_pick_slices_spreads_through_the_lesions_and_keeps_the_busiest():
    label = np.zeros((40, 8, 8), np.uint8)
    label[5:35, 2:6, 2:6] = 1  # an organ over 30 slices
    label[10:21, 3:5, 3:5] = 2  # a lesion on slices 10..20, largest on 18
    label[18, 2:7, 2:7] = 2
    slices, busiest, what = pick_slices(label, [2])
    assert (busiest, what) == (18, "lesions") and 18 in slices
    assert len(set(slices)) == 3 and slices == sorted(slices)
    assert all(10 <= z <= 20 for z in slices) and slices[0] <= 13 and slices[-1] >= 18
    assert pick_slices(label, [2], count=5)[0] == [11, 13, 15, 18, 19]  # 18 replaced 17
    assert pick_slices(label, [3])[1:] == (18, "structures")  # no lesion class: all structures
    assert all(5 <= z < 35 for z in pick_slices(label, [3])[0])
    empty = np.zeros_like(label)
    assert pick_slices(empty, [2]) == ([10, 20, 30], None, "nothing")  # includes the middle
    two = np.zeros_like(label)
    two[[7, 9]] = 2
    assert pick_slices(two, [2])[0] == [7, 9]  # fewer lesion slices than pictures: all of them
    assert pick_slices(np.zeros((2, 4, 4), np.uint8), [1])[0] == [0, 1]


def test_bar_length_fits_a_quarter_of_the_picture():
    assert bar_length_mm(500) == 100 and bar_length_mm(256) == 50 and bar_length_mm(133) == 20
    assert bar_length_mm(12) == 5  # never nothing


@pytest.mark.parametrize("spacing_zyx", [(3.0, 0.7, 1.3), (1.0, 2.0, 2.0), (2.5, 0.5, 0.5)])
def test_scale_bar_length_matches_the_mm_per_pixel(spacing_zyx):
    """A white bar on a CT with nothing white (air, soft tissue): its run of white pixels is
    bar_mm over the picture's mm per pixel, the scan's width in mm over the panel's in pixels."""
    shape = (6, 90, 150)
    image = np.full(shape, -1000.0, np.float32)
    image[:, 20:60, 40:110] = 100.0  # soft tissue, away from the corners: grey, not white
    label = np.zeros(shape, np.uint8)
    label[2:5, 30:40, 50:70] = 1
    colours = class_colours(1)
    figures = list(prediction_figures(image, label, spacing_zyx, colours, [1], "CT"))
    assert [f["z"] for f in figures] == [2, 3, 4]
    width_mm = shape[2] * spacing_zyx[2]
    for figure in figures:
        picture = figure["picture"]
        panel = (picture.shape[1] - GAP) // 2
        mm_per_pixel = width_mm / panel
        assert figure["mm_per_pixel"] == pytest.approx(mm_per_pixel)
        assert figure["bar_mm"] == bar_length_mm(width_mm)
        white = (picture[:, :panel] == 255).all(axis=2)
        rows = np.flatnonzero(white.any(axis=1))
        assert rows.size >= 3 and rows.min() > picture.shape[0] * 0.8  # at the bottom
        runs = white[rows].sum(axis=1)
        assert (runs == runs[0]).all() and runs[0] == figure["bar_pixels"]
        assert abs(runs[0] * mm_per_pixel - figure["bar_mm"]) <= mm_per_pixel / 2
        cols = np.flatnonzero(white[rows[0]])
        assert cols.min() < panel / 4 and np.ptp(cols) == runs[0] - 1  # one run, left
        assert not (picture[:, panel + GAP :] == 255).all(axis=2).any()  # none in the prediction


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = make_run(tmp_path_factory.mktemp("run"))
    return folder, report_from_prediction(folder)


def test_report_has_one_figure_per_slice_through_the_lesion(run, tmp_path):
    folder, path = run
    assert path == folder / "report.html"
    page = read_page(path)
    assert list(page.cases) == ["STS_019", "broken"]
    figures = page.cases["STS_019"]["figures"]
    assert len(figures) == 3
    label = Orientation.of(read_volume(SCAN).geometry).to_axial(read_volume(LABEL).array)
    per_slice = (label == 1).reshape(label.shape[0], -1).sum(axis=1)
    numbers = [slice_number(f["caption"]) for f in figures]
    assert all(depth == label.shape[0] for _, depth in numbers)
    zs = [z for z, _ in numbers]
    assert zs == sorted(set(zs)) and all(per_slice[z] > 0 for z in zs)
    assert int(np.argmax(per_slice)) in zs
    busiest = [f for f in figures if "most lesion voxels" in f["caption"]]
    assert len(busiest) == 1 and slice_number(busiest[0]["caption"])[0] == np.argmax(per_slice)
    held = np.flatnonzero(per_slice)
    assert zs[-1] - zs[0] >= held.size / 3  # spread through the lesion
    for figure in figures:
        picture = decode(figure["png"], tmp_path)
        assert picture.ndim == 3 and picture.shape[0] >= 256
        panel = (picture.shape[1] - GAP) // 2
        prediction = picture[:, panel + GAP :]
        assert (prediction == class_colours(1)[0]).all(axis=2).any()  # the lesion's contour
        assert re.search(r"bar = \d+ mm", figure["caption"])
        assert f"z = {slice_number(figure['caption'])[0]}" in figure["alt"]


def test_report_links_each_segmented_case_to_its_viewer_page_drawn_in_chromium(run, tmp_path):
    from tumorfm.viewer.browser import page_text

    folder, path = run
    text = path.read_text(encoding="utf-8")
    assert text.count("open in the viewer") == 1  # STS_019; the broken case has none
    viewer = folder / "viewer" / "STS_019.html"
    assert '<a href="viewer/STS_019.html">' in text and viewer.is_file()
    assert '<script src="niivue.umd.js"></script>' in viewer.read_text(encoding="utf-8")
    dom = page_text(viewer.as_uri())
    assert 'data-drawn="yes"' in dom and "STS_019" in dom


def test_report_lists_the_failed_case_and_the_statistics(run):
    _, path = run
    page = read_page(path)
    broken = page.cases["broken"]
    assert broken["figures"] == [] and "failed" in broken["text"] and "pixdim[1]" in broken["text"]
    assert page.summary[:2] == ["STS_019", "segmented"] and "failed" in page.summary
    stats = json.loads((path.parent / "predict.json").read_text())["cases"]["STS_019"]
    row = stats["statistics"][NAME]
    cells = page.cases["STS_019"]["cells"]
    assert cells[0] == NAME and cells[1] == f"{row['volume_ml']:.3f}"
    assert cells[2] == str(row["lesions"]) and cells[7] == str(row["axial_slice"])
    assert "RECIST longest axial mm" in path.read_text(encoding="utf-8")
    recist = [f for f in page.cases["STS_019"]["figures"] if "RECIST slice" in f["caption"]]
    assert all(slice_number(f["caption"])[0] == row["axial_slice"] for f in recist)


def test_statistics_from_the_case_file_or_none(tmp_path):
    folder = make_run(tmp_path / "run", with_statistics=False, failed=False)
    page = read_page(report_from_prediction(folder))
    assert page.cases["STS_019"]["cells"] == [] and len(page.cases["STS_019"]["figures"]) == 3
    (tmp_path / "s.json").write_text(json.dumps({"case": "STS_019", NAME: {"volume_ml": 1.5}}))
    record = json.loads((folder / "predict.json").read_text())
    record["cases"]["STS_019"]["files"]["statistics"] = str(tmp_path / "s.json")
    (folder / "predict.json").write_text(json.dumps(record))
    page = read_page(report_from_prediction(folder, tmp_path / "again.html", "t"))
    assert page.cases["STS_019"]["cells"][:2] == [NAME, "1.500"]


def test_a_sagittally_stored_scan_gives_the_same_pictures(run, tmp_path):
    stored = tmp_path / "sagittal"
    scan, label = sagittal_copy(SCAN, stored / "images"), sagittal_copy(LABEL, stored / "labels")
    assert read_volume(scan).array.shape != read_volume(SCAN).array.shape
    sagittal = read_page(report_from_prediction(make_run(stored, scan, label)))
    axial = read_page(run[1])
    pairs = zip(
        axial.cases["STS_019"]["figures"], sagittal.cases["STS_019"]["figures"], strict=True
    )
    for a, s in pairs:
        assert a["caption"] == s["caption"]
        assert np.array_equal(decode(a["png"], tmp_path), decode(s["png"], tmp_path))
    assert axial.cases["STS_019"]["cells"] == sagittal.cases["STS_019"]["cells"]


def test_a_missing_scan_is_said_not_drawn(tmp_path):
    folder = make_run(tmp_path / "run", scan=tmp_path / "gone.nii.gz", with_statistics=False)
    page = read_page(report_from_prediction(folder))
    assert page.cases["STS_019"]["figures"] == [] and "not drawn" in page.cases["STS_019"]["text"]


def test_modality_from_the_bundle_plan():
    assert report_modality({"bundle": "tsfm-real-lowres", "plan": "sarcoma_ct"}) == "CT"
    assert report_modality({"bundle": "tsfm-real-lowres", "plan": "brain_mr"}) == "other"
    assert report_modality({"bundle": "/nowhere/bundle", "plan": "x"}) == "CT"  # window decides


def test_an_empty_prediction_is_drawn_through_the_scan(tmp_path):
    empty = read_volume(LABEL)
    path = write_volume(np.zeros_like(empty.array), empty.geometry, tmp_path / "empty.nii.gz")
    page = read_page(report_from_prediction(make_run(tmp_path / "run", label=path)))
    numbers = [slice_number(f["caption"]) for f in page.cases["STS_019"]["figures"]]
    depth = numbers[0][1]
    assert [z for z, _ in numbers] == [(i * depth) // 4 for i in (1, 2, 3)]


def test_predict_report_on_the_command_line(tmp_path):
    """The shipped model on a real CT and on a scan it cannot read: the report is written (and
    named) before the failure is reported, with the statistics --report implies."""
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "STS_019_0000.nii.gz").write_bytes(SCAN.read_bytes())
    header = bytearray(gzip.decompress(SCAN.read_bytes()))
    header[80:84] = struct.pack("<f", 0.0)  # pixdim[1] = 0: no voxel spacing
    (scans / "broken_0000.nii").write_bytes(header)
    out = tmp_path / "out"
    args = ["-i", scans, "-o", out, "-m", "tsfm-real-lowres", "--plan", "sarcoma_ct", "--fast"]
    result = run_cli("predict", *args, "--report")
    assert result.returncode != 0 and "1 of 2 scan(s)" in result.stderr
    assert f"the others are written to {out}" in result.stderr
    assert f"report: {out / 'report.html'}" in result.stdout
    assert (out / "STS_019_statistics.json").is_file()
    page = read_page(out / "report.html")
    assert page.cases["broken"]["figures"] == [] and "pixdim" in page.cases["broken"]["text"]
    assert len(page.cases["STS_019"]["figures"]) == 3 and page.cases["STS_019"]["cells"]


def test_sagittal_geometry_helper_is_what_the_report_uses():
    """The permuted copy is a sagittal store of the same patient space (guards the fixture)."""
    image = sitk.PermuteAxes(sitk.ReadImage(str(SCAN)), [2, 0, 1])
    orientation = Orientation.of(Geometry.of(image))
    assert not orientation.is_axial
    assert np.array_equal(
        orientation.to_axial(sitk.GetArrayFromImage(image)), read_volume(SCAN).array
    )
