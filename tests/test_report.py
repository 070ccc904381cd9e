"""The report: overlays, slice choice, case figures on a real CT, PNG encoding and the HTML file."""

import base64
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import CASES
from scipy import ndimage

from tumorfm.data.io import read_volume
from tumorfm.eval import report
from tumorfm.eval.report import (
    GAP,
    case_figure,
    class_colours,
    overlay,
    pick_slice,
    png_bytes,
    window,
    write_report,
)

LIVER, VERTEBRAE = 5, (30, 31, 32)  # TotalSegmentator v2 label values in the example segmentation
IN_PLANE = np.pad(ndimage.generate_binary_structure(2, 1)[None], ((1, 1), (0, 0), (0, 0)))


def grey(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])


def decode_png(data: bytes, tmp_path) -> np.ndarray:
    path = tmp_path / "decoded.png"
    path.write_bytes(data)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_class_colours_are_distinct_coloured_and_cycle():
    colours = class_colours(20)
    assert len(colours) == 20 and len(set(colours[:16])) == 16
    assert colours[16:] == colours[:4]
    assert all(not (r == g == b) for r, g, b in colours)  # never grey: must stand out on a scan


def test_window_ct_soft_tissue_else_percentiles():
    ct = np.array([[-1000, -160, 40], [240, 1000, 3000]], dtype=np.int16)
    assert window(ct, "CT").tolist() == [[0, 0, 128], [255, 255, 255]]
    normalised = np.linspace(-2, 2, 1000).reshape(20, 50)  # z-scored: clearly not HU
    shown = window(normalised, "CT")
    assert shown.min() == 0 and shown.max() == 255 and len(np.unique(shown)) > 200
    mr = np.linspace(0, 3000, 1000).reshape(20, 50)
    assert np.array_equal(window(mr, "MR"), window(mr, "CT"))  # no negatives: not HU either
    assert not window(np.full((4, 4), 7.0), "MR").any()  # constant image: no division by zero


def test_overlay_fills_and_outlines_only_the_labels():
    image = np.tile(np.arange(0, 200, 10, dtype=np.uint8), (20, 1))
    label = np.zeros((20, 20), np.int16)
    label[5:15, 5:15] = 1
    label[2, 2] = 2  # a one-pixel class is all contour
    colours = [(230, 159, 0), (0, 114, 178)]
    rgb = overlay(image, label, colours)
    assert rgb.shape == (20, 20, 3) and rgb.dtype == np.uint8
    outside = label == 0
    assert grey(rgb[outside]).all() and np.array_equal(rgb[outside][:, 0], image[outside])
    contour = np.zeros_like(outside)
    contour[5:15, 5:15] = True
    contour[6:14, 6:14] = False
    assert (rgb[contour] == colours[0]).all()
    inside = rgb[6:14, 6:14].astype(int)
    assert not grey(rgb[6:14, 6:14]).any()
    expected = np.round(0.55 * image[6:14, 6:14, None] + 0.45 * np.array(colours[0]))
    assert np.abs(inside - expected).max() <= 1
    assert tuple(rgb[2, 2]) == colours[1]
    outline = overlay(image, label, colours, contour_only=True)
    assert grey(outline[6:14, 6:14]).all() and (outline[contour] == colours[0]).all()


def test_pick_slice_prefers_the_tumour_over_the_organ():
    label = np.zeros((12, 30, 30), np.uint8)
    for z, radius in zip(range(2, 9), (6, 9, 11, 12, 11, 9, 6)):  # organ, largest at z=5
        label[z, 15 - radius : 15 + radius, 15 - radius : 15 + radius] = 1
    label[6, 3:5, 3:5] = 2  # tumour: 4 voxels at z=6, 9 at z=7
    label[7, 3:6, 3:6] = 2
    assert pick_slice(label) == 7
    assert pick_slice((label == 1).astype(np.uint8)) == 5
    empty = np.zeros_like(label)
    assert pick_slice(empty, label) == 7  # no ground truth: the prediction decides
    assert pick_slice(None, label) == 7
    assert pick_slice(empty, empty) == 6  # nothing anywhere: the middle slice
    assert pick_slice(None, None, np.zeros((9, 4, 4))) == 4


@pytest.fixture(scope="module")
def example():
    """The TotalSegmentator example CT (3 mm, LPS direction diag(-1, -1, 1)) and its labels."""
    return read_volume(CASES / "totalseg_example_ct_sm.nii.gz"), read_volume(
        CASES / "totalseg_example_seg.nii.gz"
    )


def test_case_figure_on_a_real_ct(example):
    ct, seg = example
    gt = seg.array
    pred = np.zeros_like(gt)
    for value in np.unique(gt[gt > 0]):
        pred[ndimage.binary_erosion(gt == value, IN_PLANE)] = value
    colours = class_colours(int(gt.max()))
    geometry = ct.geometry
    picture = case_figure(
        ct.array, gt, pred, geometry.spacing_zyx, colours, "CT", geometry.direction
    )
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    height, width = picture.shape[:2]
    panel = (width - 2 * GAP) // 3
    assert width == 3 * panel + 2 * GAP and height >= 256
    _, rows, cols = ct.array.shape  # 3 x 3 mm pixels: the panel keeps the slice's aspect
    assert abs(panel / height - cols / rows) < 0.01
    panels = [picture[:, i * (panel + GAP) : i * (panel + GAP) + panel] for i in range(3)]
    for i in (1, 2):
        assert (picture[:, i * (panel + GAP) - GAP : i * (panel + GAP)] == 255).all()
    assert grey(panels[0]).all()
    coloured = [int((~grey(p)).sum()) for p in panels[1:]]
    assert coloured[0] > 0.1 * height * panel and 0 < coloured[1] < coloured[0]
    no_gt = case_figure(ct.array, None, pred, geometry.spacing_zyx, colours, "CT")
    assert no_gt.shape == (height, 2 * panel + GAP, 3)


@pytest.mark.parametrize(
    "shape, spacing_zyx, expected",
    [
        ((3, 40, 40), (2.0, 0.5, 1.0), (256, 512)),  # rows 0.5 mm, columns 1 mm: twice as wide
        ((3, 30, 60), (1.0, 2.0, 1.0), (256, 256)),  # 60 mm x 60 mm
        ((3, 300, 200), (1.0, 1.0, 1.0), (300, 200)),  # already large: not resized
        ((3, 300, 200), (1.0, 2.0, 1.0), (600, 200)),  # large, rows 2 mm: doubled
    ],
)
def test_case_figure_pixels_are_square_in_mm(shape, spacing_zyx, expected):
    image = np.random.default_rng(2).normal(size=shape)
    label = np.zeros(shape, np.uint8)
    label[1, 5:20, 5:20] = 1
    picture = case_figure(image, label, label, spacing_zyx, class_colours(1), "MR")
    height, width = expected
    assert picture.shape == (height, 3 * width + 2 * GAP, 3)


def test_case_figure_is_the_right_way_up(example):
    """Radiological view: the liver (patient's right) on the left, the spine at the bottom."""
    ct, seg = example
    label = np.where(seg.array == LIVER, 1, 0) + np.where(np.isin(seg.array, VERTEBRAE), 2, 0)
    colours = [(255, 0, 0), (0, 0, 255)]
    geometry = ct.geometry
    picture = case_figure(
        ct.array, label, label, geometry.spacing_zyx, colours, "CT", geometry.direction
    )
    panel = (picture.shape[1] - 2 * GAP) // 3
    truth = picture[:, panel + GAP : 2 * panel + GAP]
    liver_rows, liver_cols = np.nonzero((truth == colours[0]).all(axis=2))
    spine_rows, spine_cols = np.nonzero((truth == colours[1]).all(axis=2))
    assert liver_cols.size and spine_cols.size
    assert liver_cols.mean() < panel / 2 < spine_cols.max()
    assert spine_rows.mean() > truth.shape[0] / 2 > liver_rows.min()


def test_png_bytes_decodes_to_the_same_picture(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert np.array_equal(decode_png(data, tmp_path), rgb)
    with pytest.raises(ValueError, match="H, W, 3"):
        png_bytes(rgb[..., 0])


class TagChecker(HTMLParser):
    """Collects start tags and fails on an end tag that does not close the innermost one."""

    VOID = {"meta", "img", "br", "hr", "link"}

    def __init__(self):
        super().__init__()
        self.open, self.seen = [], []

    def handle_starttag(self, tag, attrs):
        self.seen.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"unbalanced </{tag}>"


def sample_report(path, pictures):
    write_report(
        path,
        "Fine-tune <b>KiTS</b> & friends",
        [["case_1", 0.91234, float("nan"), 12], ["case_2", np.float32(0.5), None, 3]],
        ["case", "Dice kidney", "Dice tumour", "slices"],
        [
            {"case_id": "case_1", "picture": pictures[0], "caption": "kidney 0.912, tumour –"},
            {"case_id": "<script>alert(1)</script>", "picture": pictures[1], "caption": "x < y"},
        ],
        notes=["epochs: 5", "time: 12.3 s <fast>"],
        legend=[("kidney", (230, 159, 0)), ("tumour", (86, 180, 233))],
    )


def test_write_report_is_one_valid_self_contained_file(tmp_path):
    rng = np.random.default_rng(1)
    pictures = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(2)]
    path = tmp_path / "report.html"
    sample_report(path, pictures)
    text = path.read_text(encoding="utf-8")
    checker = TagChecker()
    checker.feed(text)
    checker.close()
    assert checker.open == []
    tags = [tag for tag, _ in checker.seen]
    assert "script" not in tags and "b" not in tags and "link" not in tags
    assert "Fine-tune &lt;b&gt;KiTS&lt;/b&gt; &amp; friends" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script" not in text
    assert "time: 12.3 s &lt;fast&gt;" in text and "x &lt; y" in text
    cells = re.findall(r"<td[^>]*>(.*?)</td>", text)
    assert cells == ["case_1", "0.912", "\u2013", "12", "case_2", "0.500", "\u2013", "3"]
    assert "rgb(230, 159, 0)" in text and "kidney" in text
    images = [attrs for tag, attrs in checker.seen if tag == "img"]
    assert len(images) == 2 and all(image["alt"] for image in images)
    for image, picture in zip(images, pictures):
        assert image["src"].startswith("data:image/png;base64,")
        data = base64.b64decode(image["src"].split(",", 1)[1])
        assert np.array_equal(decode_png(data, tmp_path), picture)
    assert "http" not in text and "src=" not in text.replace('src="data:image/png', "")


def test_write_report_failure_keeps_the_old_file(tmp_path, monkeypatch):
    pictures = [np.zeros((4, 4, 3), np.uint8)] * 2
    path = tmp_path / "report.html"
    sample_report(path, pictures)
    before = path.read_bytes()
    calls = []

    def failing_encoder(rgb):
        calls.append(rgb)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return png_bytes(rgb)

    monkeypatch.setattr(report, "png_bytes", failing_encoder)
    with pytest.raises(RuntimeError, match="disk full"):
        sample_report(path, pictures)
    assert len(calls) == 2  # the first case was already written to the temporary file
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left
