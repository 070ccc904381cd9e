"""The viewer (issue 21): what it serves and to whom, the page it exports, and what a real
browser draws from it (headless Chromium: `.ci/run` installs it, so these never skip)."""

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SARCOMA, assert_one_line_error, run_cli

from tumorfm.data.io import Geometry, write_volume
from tumorfm.errors import TumorFMError
from tumorfm.infer.postprocess import label_map_statistics
from tumorfm.viewer import Viewer, export_page, read_scene
from tumorfm.viewer.browser import page_text, screenshot
from tumorfm.viewer.layers import CT_WINDOW, shrink_factors

SCAN = SARCOMA / "imagesTr" / "STS_019_0000.nii.gz"
LABEL = SARCOMA / "labelsTr" / "STS_019.nii.gz"
ORANGE = (230, 159, 0)  # the palette's first colour: label value 1
# (x, y) voxel boxes, inclusive, on the one axial slice shown: the tumour and a bone-white mark
TUMOUR, MARK = ((40, 55), (8, 19)), ((5, 14), (44, 53))
SIZE = 64


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, Path]:
    """A 64x64x9 CT of soft tissue (40 HU) with a bone-white mark (+1000 HU) and a labelled
    tumour in opposite corners of every slice, 1 mm voxels, identity direction (LPS)."""
    folder = tmp_path_factory.mktemp("phantom")
    scan = np.full((9, SIZE, SIZE), 40, np.int16)
    scan[0, 0, 0] = -1000  # air somewhere: a CT in HU
    label = np.zeros(scan.shape, np.uint8)
    (x0, x1), (y0, y1) = MARK
    scan[:, y0 : y1 + 1, x0 : x1 + 1] = 1000
    (x0, x1), (y0, y1) = TUMOUR
    label[:, y0 : y1 + 1, x0 : x1 + 1] = 1
    geometry = Geometry(
        (SIZE, SIZE, 9), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    write_volume(scan, geometry, folder / "ct.nii.gz")
    write_volume(label, geometry, folder / "ct_pred.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "tumour": 1}}))
    return folder / "ct.nii.gz", folder / "ct_pred.nii.gz"


def _drawn_fractions(png: Path) -> dict[str, tuple[float, float]]:
    """Where the tumour's colour and the white mark sit in the axial slice drawn in the picture,
    as fractions (x, y) of the slice's width and height. The slice is found as the rows and
    columns of the canvas (right of the side bar) mostly in the soft tissue's mid grey."""
    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(png)))[..., :3].astype(int)[:, 280:]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    grey = (abs(r - g) < 8) & (abs(g - b) < 8) & (r > 100) & (r < 160)
    rows, cols = np.flatnonzero(grey.mean(1) > 0.3), np.flatnonzero(grey.mean(0) > 0.3)
    assert len(rows) > 100 and len(cols) > 100, "no slice of soft tissue drawn"
    top, height = rows[0], rows[-1] + 1 - rows[0]
    left, width = cols[0], cols[-1] + 1 - cols[0]
    found = {
        "tumour": (r - b > 60) & (r - g > 15) & (g - b > 40),
        "mark": (r > 240) & (g > 240) & (b > 240),
    }
    places = {}
    for name, mask in found.items():
        ys, xs = np.nonzero(mask[top : top + height, left : left + width])
        assert len(xs) > 200, f"{name}: not drawn"
        places[name] = ((np.median(xs) + 0.5) / width, (np.median(ys) + 0.5) / height)
    return places


def _expected(box) -> tuple[float, float]:
    """The centre of a voxel box as fractions of the slice: radiological view, so the array's
    x (towards the patient's left) runs to the right and y (posterior) downwards."""
    (x0, x1), (y0, y1) = box
    return (x0 + x1 + 1) / 2 / SIZE, (y0 + y1 + 1) / 2 / SIZE


def _check_picture(png: Path) -> None:
    places = _drawn_fractions(png)
    for name, box in (("tumour", TUMOUR), ("mark", MARK)):
        assert places[name] == pytest.approx(_expected(box), abs=0.03), name


def test_served_page_is_drawn_in_chromium(phantom, tmp_path):
    viewer = Viewer(read_scene(*phantom[:1], [phantom[1]]), "phantom").start()
    try:
        screenshot(viewer.url + "?view=axial", tmp_path / "served.png")
    finally:
        viewer.close()
    _check_picture(tmp_path / "served.png")


def test_exported_page_is_drawn_from_disk(phantom, tmp_path):
    page = export_page(phantom[0], [phantom[1]], tmp_path / "page.html")
    text = page.read_text()
    assert "niivue.umd.js" not in text.split("<script>", 1)[0]  # the script is inside, not fetched
    screenshot(page.as_uri() + "?view=axial", tmp_path / "exported.png")
    _check_picture(tmp_path / "exported.png")


def test_page_opens_on_the_tumour_and_says_where_the_cursor_is(phantom, tmp_path):
    """The status line under the picture: the point in LPS millimetres, its voxel index as
    `tumorfm refine --point` takes it (the scan's own, not NiiVue's reoriented one), the scan's
    value and each label map's class there; the page opens at the tumour's middle voxel."""
    page = export_page(phantom[0], [phantom[1]], tmp_path / "page.html")
    dom = page_text(page.as_uri())
    assert 'data-drawn="yes"' in dom
    status = re.search(r'<div id="status">([^<]*)</div>', dom).group(1)
    assert status == "LPS 47.0, 13.0, 4.0 mm · voxel z,y,x 4, 13, 47 · ct 40.0 · ct_pred: tumour"


def _get(url: str, host: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_server_serves_its_files_to_this_machine_only(phantom):
    viewer = Viewer(read_scene(phantom[0], [phantom[1]]), "phantom").start()
    base = viewer.url
    root = base.rsplit("/", 2)[0]
    try:
        status, page = _get(base)
        assert status == 200 and b'<script src="niivue.umd.js">' in page
        status, body = _get(base + "volumes/1.nii.gz")
        assert status == 200 and body == viewer.files[f"/{viewer.token}/volumes/1.nii.gz"][1]
        assert _get(base + "niivue.umd.js")[0] == 200
        assert _get(root + "/wrong-token/")[0] == 403
        assert _get(root + "/")[0] == 403
        for outside in ("volumes/2.nii.gz", "../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd",
                        "viewer.html", "ct.nii.gz", str(phantom[0]).lstrip("/")):  # fmt: skip
            assert _get(base + outside)[0] == 404, outside
        assert _get(base, host="evil.example:80")[0] == 403  # DNS rebinding
        status, _, _ = viewer.answer(f"/{viewer.token}/", "192.168.1.20", {"Host": "127.0.0.1"})
        assert status == 403
        assert viewer.server.server_address[0] == "127.0.0.1"
    finally:
        viewer.close()


def test_view_command_serves_until_interrupted(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "tumorfm", "view", str(SCAN), str(LABEL), "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/\S+/", line).group(0)
        status, page = _get(url)
        assert status == 200 and b"STS_019" in page and b"sarcoma" in page
        with urllib.request.urlopen(url + "volumes/0.nii.gz", timeout=30) as answer:
            assert answer.status == 200  # closed unread: the browser went away mid-answer
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    assert "Traceback" not in process.stderr.read()


def test_port_in_use_is_refused(phantom):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("view", phantom[0], "--port", port, "--no-browser")
    assert_one_line_error(result, f"--port {port}: in use")


def test_page_names_classes_colours_and_statistics(phantom, tmp_path):
    stats = label_map_statistics(phantom[1], phantom[0])
    (phantom[1].parent / "ct_pred_statistics.json").write_text(json.dumps(stats))
    try:
        scene = read_scene(phantom[0], [phantom[1]])
        page = export_page(phantom[0], [phantom[1]], tmp_path / "p.html").read_text()
    finally:
        (phantom[1].parent / "ct_pred_statistics.json").unlink()
    scan, labels = scene.layers
    assert scan.window == CT_WINDOW and not scan.classes
    assert labels.classes == [{"value": 1, "name": "tumour", "colour": list(ORANGE)}]
    assert scene.centre == [47, 13, 4]  # a middle voxel of the tumour (x 40-55, y 8-19, z 0-8)
    assert "ct_pred: statistics" in page and "volume ml" in page
    assert f"{stats['tumour']['volume_ml']:.1f}" in page


def test_large_scan_is_shrunk_for_export_with_a_note(phantom, tmp_path):
    scene = read_scene(phantom[0], [phantom[1]], max_voxels=SIZE * SIZE * 9 // 4)
    assert "shrunk from 64x64x9 to 32x32x9" in scene.note
    for layer in scene.layers:
        encoded = tmp_path / f"{layer.name}.nii.gz"
        encoded.write_bytes(layer.nifti)
        image = sitk.ReadImage(str(encoded))
        assert image.GetSize() == (32, 32, 9) and image.GetSpacing()[:2] == (2.0, 2.0)
    assert sitk.GetArrayFromImage(image)[4, 7, 24] == 1  # the tumour kept its place: voxel
    # (48, 14) of the full grid is (24, 7) of the shrunk one


def test_shrink_factors_keep_the_slice_axis_while_they_can():
    assert shrink_factors((512, 512, 100), 16_000_000) == [2, 2, 1]
    assert shrink_factors((512, 512, 1000), 4_000_000) == [4, 4, 5]  # 128x128x200
    factors = shrink_factors((100, 80, 60), 1000)
    assert np.prod([s // f for s, f in zip((100, 80, 60), factors)]) <= 1000


def test_a_4d_scan_is_refused(tmp_path):
    image = sitk.Image([8, 8, 8, 2], sitk.sitkInt16)
    sitk.WriteImage(image, str(tmp_path / "four.nii.gz"))
    with pytest.raises(TumorFMError, match="the viewer shows one 3D scan"):
        read_scene(tmp_path / "four.nii.gz", [])
