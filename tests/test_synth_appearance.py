"""`tumorfm synth appearance`: how real tumours differ from their tissue, measured in HU, and
handed to the procedural engine, which must then make tumours that measure the same."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import CASES, DATA, assert_one_line_error, run_cli

from tumorfm.errors import TumorFMError
from tumorfm.synth import synthesise
from tumorfm.synth.appearance import tumour_appearance

CT = CASES / "totalseg_example_ct_sm.nii.gz"
SEG = CASES / "totalseg_example_seg.nii.gz"  # TotalSegmentator's output: 5 is the liver


@pytest.fixture(scope="module")
def liver():
    image, seg = sitk.ReadImage(str(CT)), sitk.ReadImage(str(SEG))
    spacing = np.array(image.GetSpacing()[::-1])
    return sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(seg) == 5, spacing


@pytest.mark.parametrize("shift, texture", [(-60.0, 5.0), (0.0, 20.0), (40.0, 10.0)])
def test_the_engine_makes_what_was_asked_and_the_measure_finds_it(liver, shift, texture):
    image, organ, spacing = liver
    made = synthesise(image, organ, spacing, seed=1, size="medium",
                      shift_hu=(shift, shift), texture_hu=(texture, texture))  # fmt: skip
    found = tumour_appearance(made.image, made.tumour, organ & ~made.tumour, spacing)
    assert found is not None
    assert made.tumours[0].intensity_shift == shift
    assert abs(found[0] - shift) < 8.0  # the shell's median is not quite the organ's
    assert abs(found[1] - texture) < 0.5 * texture + 4.0  # the grain of the scan adds a little


def test_hu_ranges_are_ct_only_and_checked(liver):
    image, organ, spacing = liver
    with pytest.raises(TumorFMError, match="CT only"):
        synthesise(image, organ, spacing, seed=0, modality="MR", shift_hu=(0, 1))
    with pytest.raises(TumorFMError, match=r"low <= high"):
        synthesise(image, organ, spacing, seed=0, shift_hu=(5, -5))
    with pytest.raises(TumorFMError, match="standard deviation"):
        synthesise(image, organ, spacing, seed=0, texture_hu=(-1, 3))


def test_real_sarcomas_measure_near_isodense_and_tumours_follow(tmp_path):
    """The fixture's three real sarcomas: nothing like the recipe's 30-80 HU darker liver
    tumours. Their measured ranges, handed to `synth tumours`, give tumours in that range."""
    dataset = DATA / "Dataset101_SarcomaCT"
    found_json = tmp_path / "appearance.json"
    result = run_cli("synth", "appearance", "-i", dataset, "--tumour", "sarcoma",
                     "--organ-hu", "-20,100", "-o", found_json)  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(found_json.read_text())
    assert found["tumours"] == 3 and set(found["cases"]) == {"STS_008", "STS_019", "STS_025"}
    low, high = found["shift_hu"]
    assert -30 < low <= high < 30 and f"shift_hu: {found['shift_hu']}" in result.stdout
    out = tmp_path / "synthetic"
    shift = ",".join(map(str, found["shift_hu"]))
    texture = ",".join(map(str, found["texture_hu"]))
    result = run_cli("synth", "tumours", "-i", CT, "-l", SEG, "--organ", "liver=5", "-o", out,
                     "--shift-hu", shift, "--texture-hu", texture, "--count", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "synthesis.json").read_text())
    assert record["settings"]["shift_hu"] == found["shift_hu"]
    shifts = [t["intensity_shift"] for t in record["cases"]["totalseg_example_ct_sm"]]
    assert len(shifts) == 3 and all(low <= s <= high for s in shifts)


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--shift-hu", "a,b"], "--shift-hu 'a,b': give two numbers"),
        (["--texture-hu", "9,1"], "--texture-hu '9,1': LOW,HIGH must be finite"),
        (["--shift-hu", "nan,1"], "--shift-hu 'nan,1'"),
        (["--shift-hu", "-5,5", "--engine", "diffusion", "--model", str(CASES)], "diffusion"),
    ],
)
def test_bad_hu_ranges_write_nothing(tmp_path, args, problem):
    out = tmp_path / "synthetic"
    result = run_cli("synth", "tumours", "-i", CT, "-l", SEG, "--organ", "liver=5", "-o", out,
                     *args)  # fmt: skip
    assert_one_line_error(result, problem)
    assert not out.exists()


def test_appearance_refuses_mr_and_a_missing_tissue(tmp_path):
    result = run_cli("synth", "appearance", "-i", DATA / "Task102_BrainTumour", "--tumour", "1",
                     "--organ-hu", "0,1")  # fmt: skip
    assert_one_line_error(result, "CT only")
    result = run_cli("synth", "appearance", "-i", DATA / "Dataset101_SarcomaCT", "--tumour",
                     "sarcoma")  # fmt: skip
    assert_one_line_error(result, "--organ")
    result = run_cli("synth", "appearance", "-i", DATA / "Dataset101_SarcomaCT", "--tumour",
                     "sarcomma", "--organ-hu", "-20,100")  # fmt: skip
    assert_one_line_error(result, "tumour 'sarcomma' is not a label name")
