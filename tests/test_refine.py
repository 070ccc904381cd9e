"""`tumorfm refine` (issue 19): clicks and boxes from the command line on a promptable bundle,
checked against the Session it drives."""

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import CASES, assert_one_line_error, ct_bundle, run_cli

from tumorfm.data.io import Geometry
from tumorfm.interactive import PROMPT_CHANNELS, Session

CT = CASES / "totalseg_example_ct_sm.nii.gz"  # 30 x 101 x 122 voxels of 3 mm, x and y flipped
CASE = "totalseg_example_ct_sm"
# (option, text as typed, the same prompt for the Session: zyx or half-open lo/hi, positive)
PROMPTS = [
    ("--point", "15,50,60", ((15, 50, 60),), True),
    ("--box", "15,30,40,15,59,79", ((15, 30, 40), (16, 60, 80)), True),  # one slice thick
    ("--point", "14,45,70:neg", ((14, 45, 70),), False),
]
FP32 = ("--device", "cpu", "--precision", "fp32")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict:
    root, promptable = (
        tmp_path_factory.mktemp("bundles"),
        {"prompt_channels": list(PROMPT_CHANNELS)},
    )
    return {
        "promptable": ct_bundle(root / "promptable", 1 + len(PROMPT_CHANNELS), promptable),
        "nothing": ct_bundle(root / "nothing", 1 + len(PROMPT_CHANNELS), promptable, bias=-10.0),
        "plain": ct_bundle(root / "plain", 1, {}),
        "two": ct_bundle(root / "two", 1, {}, classes=["tumour", "organ"]),
    }


def _voxels_to_mm(zyx) -> str:
    """X,Y,Z in mm of patient space of voxel (z, y, x) of the CT, as a viewer shows it."""
    image = sitk.ReadImage(str(CT))
    xyz = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in reversed(zyx)])
    return ",".join(repr(v) for v in xyz)


def _prompt_args(world: bool = False) -> list[str]:
    args = []
    for option, text, _, _ in PROMPTS:
        if world:
            numbers, _, sign = text.partition(":")
            values = [float(v) for v in numbers.split(",")]
            corners = [values[i : i + 3] for i in range(0, len(values), 3)]
            text = ",".join(_voxels_to_mm(c) for c in corners) + (f":{sign}" if sign else "")
        args += [option, text]
    return args


def _refine(bundle, out, *args):
    return run_cli("refine", "-i", CT, "-m", bundle, "-o", out, *args)


def _inside(window, shape, margin: float = 0.0) -> np.ndarray:
    """Voxels whose centres lie in a half-open window (shrunk by `margin` on each face)."""
    centres = np.indices(shape).transpose(1, 2, 3, 0) + 0.5
    lo, hi = np.add(window["lo"], margin), np.subtract(window["hi"], margin)
    return np.all((centres >= lo) & (centres < hi), -1)


@pytest.fixture(scope="module")
def voxel_run(bundles, tmp_path_factory):
    out = tmp_path_factory.mktemp("voxels") / "out"
    return _refine(bundles["promptable"], out, *_prompt_args(), *FP32), out


def test_prompts_write_a_label_map_on_the_scan_grid_and_a_record(bundles, voxel_run):
    result, out = voxel_run
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.rsplit(":", 1)[0] for line in lines[:3]] == [f"{o} {t}" for o, t, _, _ in PROMPTS]
    assert all(line.endswith(" s") for line in lines[:3])
    label_path, record_path = out / f"{CASE}.nii.gz", out / f"{CASE}_refine.json"
    assert lines[-1].startswith(f"label map: {label_path} (") and str(record_path) in lines[-1]
    label = sitk.ReadImage(str(label_path))
    assert Geometry.of(label) == Geometry.of(
        sitk.ReadImage(str(CT))
    )  # size, spacing, origin, direction
    refined = sitk.GetArrayFromImage(label)
    assert set(np.unique(refined)) <= {0, 1} and refined.any() and not refined.all()

    record = json.loads(record_path.read_text())
    assert [(p["option"], p["given"]) for p in record["prompts"]] == [p[:2] for p in PROMPTS]
    point, box, negative = record["prompts"]
    assert point["zyx"] == [15, 50, 60] and point["positive"] and not negative["positive"]
    assert box["first_voxel_zyx"] == [15, 30, 40] and box["last_voxel_zyx"] == [15, 59, 79]
    assert box["box_zyx"] == {"lo": [15, 30, 40], "hi_exclusive": [16, 60, 80]}
    assert all(p["seconds"] > 0 and set(p["window_zyx"]) == {"lo", "hi"} for p in record["prompts"])
    settings = record["settings"]
    assert settings["plan"] == "ct_site" and settings["precision"] == "fp32"
    assert settings["bundle"] == str(bundles["promptable"]) and settings["world"] is False
    assert record["voxels"] == int(refined.sum()) and record["label"] == str(label_path)

    # the same prompts in the same order through the Session: its mask in the windows, 0 outside
    session = Session.from_bundle(bundles["promptable"], device="cpu", precision="fp32")
    image = sitk.ReadImage(str(CT))
    session.set_image(sitk.GetArrayFromImage(image), Geometry.of(image))
    for option, _, corners, positive in PROMPTS:
        (session.add_point if option == "--point" else session.add_box)(*corners, positive)
    windows = np.zeros(refined.shape, bool)
    for prompt in record["prompts"]:
        windows |= _inside(prompt["window_zyx"], refined.shape)
    assert np.array_equal(refined[windows], session.mask[windows]) and not refined[~windows].any()


def test_world_coordinates_give_the_same_mask_as_the_voxels(bundles, voxel_run, tmp_path):
    out = tmp_path / "refined.nii.gz"  # a file name this time
    result = _refine(bundles["promptable"], out, "--world", *_prompt_args(world=True), *FP32)
    assert result.returncode == 0, result.stderr
    voxels = sitk.GetArrayFromImage(sitk.ReadImage(str(voxel_run[1] / f"{CASE}.nii.gz")))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), voxels)
    record = json.loads((tmp_path / "refined_refine.json").read_text())
    point, box, _ = record["prompts"]
    assert point["zyx"] == pytest.approx([15, 50, 60], abs=1e-6) and len(point["mm_xyz"]) == 1
    # x and y are flipped in this scan: the corners arrive swapped in mm and are sorted
    assert box["mm_xyz"][0][0] > box["mm_xyz"][1][0]
    assert box["box_zyx"] == {"lo": [15, 30, 40], "hi_exclusive": [16, 60, 80]}
    assert record["settings"]["world"] is True


def _label_map(path, array, geometry_of=CT, origin_shift=(0.0, 0.0, 0.0)):
    reference = sitk.ReadImage(str(geometry_of))
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    image.SetOrigin(tuple(o + s for o, s in zip(reference.GetOrigin(), origin_shift)))
    sitk.WriteImage(image, str(path))
    return path


def test_a_given_mask_is_kept_outside_the_window(bundles, tmp_path):
    shape = (30, 101, 122)
    ball = np.linalg.norm(np.indices(shape) - np.reshape((15, 50, 60), (3, 1, 1, 1)), axis=0) <= 30
    labels = np.where(ball, 2, 0)
    labels[0:5, 90:101, 0:10] = 3  # another structure: not taken with --mask-label 2
    given = _label_map(tmp_path / "auto.nii.gz", labels)
    out = tmp_path / "out"
    # the "nothing" bundle answers background everywhere it looks
    result = _refine(bundles["nothing"], out, "--mask", given, "--mask-label", "2",
                     "--point", "15,50,60", *FP32)  # fmt: skip
    assert result.returncode == 0, result.stderr
    refined = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{CASE}.nii.gz")))
    (prompt,) = json.loads((out / f"{CASE}_refine.json").read_text())["prompts"]
    window = _inside(prompt["window_zyx"], shape)
    assert ball[window].any() and ball[~window].any()  # the window cuts the object
    assert np.array_equal(refined[~window], ball[~window])  # unchanged, voxel for voxel
    assert not refined[_inside(prompt["window_zyx"], shape, margin=1)].any()

    # a mask and no prompt: the mask itself (as 0/1), nothing computed
    alone = tmp_path / "alone.nrrd"
    result = _refine(bundles["nothing"], alone, "--mask", given, *FP32)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(alone))), labels > 0)


def test_an_automatic_bundle_refines_its_own_answer(bundles, tmp_path):
    out = tmp_path / "out"
    result = _refine(bundles["plain"], out, "--point", "15,50,60", "--point", "15,52,60:neg",
                     *FP32)  # fmt: skip
    assert result.returncode == 0, result.stderr
    refined = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{CASE}.nii.gz")))
    record = json.loads((out / f"{CASE}_refine.json").read_text())
    assert record["settings"]["mode"].startswith("automatic") and refined[15, 50, 60] == 1
    assert refined[15, 52, 60] == 0 and record["settings"]["object_class"] == "tumour"


BAD = [
    ([], "nothing to do: give a --point, a --box or a --mask"),
    (["--point", "1,2"], "--point 1,2: expected 3 numbers Z,Y,X"),
    (["--point", "1,2,3:nag"], "--point 1,2,3:nag: unknown suffix ':nag'"),
    (["--point", "1,nan,3"], "coordinates must be finite"),
    (["--box", "1,2,3,4"], "--box 1,2,3,4: expected 6 numbers"),
    (["--point", "30,10,10"], "--point 30,10,10: outside the scan (size 30 x 101 x 122"),
    (["--point", "15,50,60", "--box", "10,30,40,17,20,79"],
     "--box 10,30,40,17,20,79: corners swapped on axis y (30 > 20)"),
    (["--box", "10,30,40,17,59,122"], "--box 10,30,40,17,59,122: outside the scan"),
    (["--point", "15,50,60:neg", "--point", "15,50,60"],
     "--point 15,50,60:neg: negative point (15, 50, 60): a negative prompt needs something"),
    (["--world", "--point", "1000,0,0"], "world point (1000, 0, 0) mm: outside the scan"),
    (["--point", "15,50,60", "--mask-label", "2"], "--mask-label 2: needs --mask"),
    (["--mask-label", "3"], "--mask-label 3: needs --mask"),
    (["--point", "15,50,60", "--mask", "{shifted}"], "shifted.nii.gz: its origin differ(s)"),
    (["--point", "15,50,60", "--mask", "{smaller}"], "its size differ(s) from the scan's"),
    (["--mask", "{empty}", "--mask-label", "4"], "no voxel has label 4"),
    (["--point", "15,50,60", "-m", "{two}"], "predicts tumour, organ; name the object's class"),
    (["--point", "15,50,60", "-m", "{plain}", "--class", "liver"],
     "class 'liver' is not in the bundle; it has tumour"),
    (["--point", "15,50,60", "--class", "tumour"], "promptable, one object per prompt"),
    (["--point", "15,50,60", "-i", "{scans}"], "2 scans"),
    (["--point", "15,50,60", "-o", "{txt}"], "not a folder or a label map's name"),
]  # fmt: skip


@pytest.mark.parametrize("args,message", BAD, ids=[m.split(":")[0][:30] for _, m in BAD])
def test_bad_input_is_one_line_and_writes_nothing(bundles, tmp_path, args, message):
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        shutil.copy(CT, two / name)
    ct = sitk.ReadImage(str(CT))
    sitk.WriteImage(
        sitk.RegionOfInterest(ct, (122, 90, 30), (0, 0, 0)), str(tmp_path / "small.nrrd")
    )
    files = {
        "shifted": _label_map(tmp_path / "shifted.nii.gz", np.ones((30, 101, 122)),
                              origin_shift=(0.0, 0.0, 3.0)),
        "smaller": tmp_path / "small.nrrd",
        "empty": _label_map(tmp_path / "empty.nii.gz", np.zeros((30, 101, 122))),
        "plain": bundles["plain"],
        "two": bundles["two"],
        "scans": two,
        "txt": tmp_path / "out" / "result.txt",
    }  # fmt: skip
    args = [a.format(**files) if a.startswith("{") else a for a in args]
    out = tmp_path / "out"
    result = run_cli("refine", "-i", CT, "-m", bundles["promptable"], "-o", out, *args, *FP32)
    assert_one_line_error(result, message)
    assert not out.exists()  # nothing written
