"""Refining in the viewer (tumorfm view --model): the page's clicks reach a Session on the
server, the new mask comes back as the page's layer, and save writes what `refine` would."""

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import CASES, assert_one_line_error, ct_bundle, run_cli

from tumorfm.data.io import Geometry
from tumorfm.interactive import Session
from tumorfm.viewer import Viewer, read_scene
from tumorfm.viewer.browser import page_text
from tumorfm.viewer.refine import Refiner

CT = CASES / "totalseg_example_ct_sm.nii.gz"  # 30 x 101 x 122 voxels of 3 mm


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refine")
    session = Session.from_bundle(ct_bundle(folder / "plain", 1, {}), device="cpu")
    image = sitk.ReadImage(str(CT))
    session.set_image(sitk.GetArrayFromImage(image), Geometry.of(image))
    refiner = Refiner(session, Geometry.of(image), folder / "out" / "ct_refined.nii.gz", {})
    (folder / "out").mkdir()
    viewer = Viewer(read_scene(CT, []), "ct", refiner=refiner).start()
    yield viewer, refiner
    viewer.close()


def _post(url: str, body: bytes = b"{}") -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _mask(nifti: bytes, tmp_path) -> np.ndarray:
    (tmp_path / "mask.nii.gz").write_bytes(nifti)
    return sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz")))


def test_clicks_undo_and_save_through_the_server(served, tmp_path):
    viewer, refiner = served
    own = refiner.session.mask.copy()
    missed = [int(v) for v in np.argwhere(~own)[len(own) // 2]]
    click = json.dumps({"zyx": missed, "positive": True}).encode()
    status, body = _post(viewer.url + "refine/prompt", click)
    assert status == 200 and _mask(body, tmp_path)[tuple(missed)] == 1
    status, body = _post(viewer.url + "refine/undo")
    assert status == 200 and np.array_equal(_mask(body, tmp_path) > 0, own)
    _post(viewer.url + "refine/prompt", click)
    status, said = _post(viewer.url + "refine/save")
    assert status == 200 and said.startswith(b"saved ")
    saved = sitk.ReadImage(str(refiner.out))
    assert Geometry.of(saved) == Geometry.of(sitk.ReadImage(str(CT)))
    assert sitk.GetArrayFromImage(saved)[tuple(missed)] == 1
    record = json.loads((refiner.out.parent / "ct_refined_refine.json").read_text())
    assert [p["zyx"] for p in record["prompts"]] == [missed] and record["voxels"] > 0


@pytest.mark.parametrize("path,body,status,message", [
    ("refine/prompt", b"not json", 400, b"prompt: not JSON"),
    ("refine/prompt", b'{"zyx": [1, 2], "positive": true}', 400, b"expected"),
    ("refine/prompt", b'{"zyx": [1.5, 2, 3], "positive": true}', 400, b"whole numbers"),
    ("refine/prompt", b'{"zyx": [99, 2, 3], "positive": true}', 400, b"outside the scan"),
    ("refine/erase", b"{}", 404, b"no such refine action"),
])  # fmt: skip
def test_bad_requests_get_one_line_and_change_nothing(served, path, body, status, message):
    viewer, refiner = served
    before = refiner.session.mask.copy()
    got, said = _post(viewer.url + path, body)
    assert got == status and message in said and said.count(b"\n") == 1
    assert np.array_equal(refiner.session.mask, before)
    root = viewer.url.rsplit("/", 2)[0]
    assert _post(root + "/wrong-token/refine/prompt", body)[0] == 403


def test_the_page_applies_clicks_from_its_address_in_chromium(served):
    viewer, refiner = served
    own = refiner.session.mask.copy()
    missed = [int(v) for v in np.argwhere(~own)[len(own) // 3]]
    html = page_text(viewer.url + "?point=" + ",".join(map(str, missed)))
    assert 'data-drawn="yes"' in html, html[-2000:]
    assert f"+ {', '.join(map(str, missed))}: " in html and " voxels" in html
    assert refiner.session.mask[tuple(missed)]


def test_refining_options_need_a_model_and_a_server(tmp_path):
    result = run_cli("view", CT, "--out", tmp_path / "x.nii.gz", "--no-browser")
    assert_one_line_error(result, "--plan, --class and --out refine a segmentation: give --model")
    result = run_cli("view", CT, "-m", "tsfm-real-lowres", "--export", tmp_path / "p.html")
    assert_one_line_error(result, "--export writes a page for disk")


def test_view_with_a_model_serves_a_refining_page_until_interrupted(tmp_path):
    bundle, out = ct_bundle(tmp_path / "plain", 1, {}), tmp_path / "fixed.nii.gz"
    command = [sys.executable, "-m", "tumorfm", "view", str(CT), "-m", str(bundle), "--out",
               str(out), "--no-browser"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().startswith("segmenting ")
        url = re.search(r"http://127\.0\.0\.1:\d+/\S+/", process.stdout.readline()).group(0)
        click = json.dumps({"zyx": [15, 50, 60], "positive": True}).encode()
        assert _post(url + "refine/prompt", click)[0] == 200
        assert _post(url + "refine/save")[0] == 200
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    assert "Traceback" not in process.stderr.read()
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out)))[15, 50, 60] == 1
    assert (tmp_path / "fixed_refine.json").is_file()
