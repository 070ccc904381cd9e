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
    # measured against the same shell of tissue as it was made: close, not to the organ's median
    assert abs(found["shift_hu"] - shift) < 3.0
    assert abs(found["texture_hu"] - texture) < 0.5 * texture + 4.0  # the scan's grain adds some


def test_a_measured_look_is_copied_whole_tails_included(liver):
    """A look measured on a tumour made with a heavy-tailed look (a fatty or calcified
    sarcoma's), handed back to the engine, makes a tumour that measures like it: the same shift,
    texture and tails; a Gaussian texture would have none."""
    from scipy import stats

    from tumorfm.data.looks import QUANTILES

    image, organ, spacing = liver
    z = stats.t.ppf(np.divide(QUANTILES, 100), df=3)  # heavy tails: excess kurtosis > 0
    heavy = {"shift_hu": -10.0, "texture_hu": 25.0, "quantiles": list(z / z.std())}
    made = synthesise(image, organ, spacing, seed=4, size="medium", looks=[heavy])
    found = tumour_appearance(made.image, made.tumour, organ & ~made.tumour, spacing)
    assert abs(found["shift_hu"] - heavy["shift_hu"]) < 3.0
    assert abs(found["texture_hu"] - heavy["texture_hu"]) < 0.5 * heavy["texture_hu"] + 4.0
    plain = synthesise(image, organ, spacing, seed=4, size="medium", shift_hu=(-10, -10),
                       texture_hu=(25, 25))  # fmt: skip
    # the tumour's HU (what the realism benchmark's features read): tails only from the look
    assert stats.kurtosis(made.image[made.tumour]) > 1.0
    assert abs(stats.kurtosis(plain.image[plain.tumour])) < 0.6
    again = synthesise(image, organ, spacing, seed=4, size="medium", looks=[found])
    assert abs(tumour_appearance(again.image, again.tumour, organ & ~again.tumour, spacing)[
        "shift_hu"] - found["shift_hu"]) < 3.0  # fmt: skip


@pytest.mark.parametrize(
    "looks, problem",
    [
        (
            [{"shift_hu": 0.0, "texture_hu": 5.0}],
            "look 0: needs shift_hu, texture_hu and quantiles",
        ),
        ([{"shift_hu": 0.0, "texture_hu": 5.0, "quantiles": [3, 2, 1]}], "13 non-decreasing"),
        ([{"shift_hu": float("nan"), "texture_hu": 5.0, "quantiles": [0] * 13}], "finite"),
        ([], "none given"),
    ],
)
def test_bad_looks_are_one_line_errors(liver, looks, problem):
    image, organ, spacing = liver
    with pytest.raises(TumorFMError, match=problem):
        synthesise(image, organ, spacing, seed=0, looks=looks)


def test_looks_exclude_ranges_and_mr(liver):
    image, organ, spacing = liver
    look = [{"shift_hu": 0.0, "texture_hu": 5.0, "quantiles": list(range(13))}]
    with pytest.raises(TumorFMError, match="not both"):
        synthesise(image, organ, spacing, seed=0, looks=look, shift_hu=(0, 1))
    with pytest.raises(TumorFMError, match="CT only"):
        synthesise(image, organ, spacing, seed=0, looks=look, modality="MR")


def test_synth_tumours_takes_the_looks_synth_appearance_wrote(tmp_path):
    """`synth appearance -o` then `synth tumours --looks`: each tumour is one real sarcoma's
    look; with ranges too, or from a file without quantiles, a one-line error."""
    found_json = tmp_path / "appearance.json"
    result = run_cli("synth", "appearance", "-i", DATA / "Dataset101_SarcomaCT", "--tumour",
                     "sarcoma", "--organ-hu", "-20,100", "-o", found_json)  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(found_json.read_text())
    shifts = {round(c["shift_hu"], 6) for c in found["cases"].values()}
    out = tmp_path / "synthetic"
    result = run_cli("synth", "tumours", "-i", CT, "-l", SEG, "--organ", "liver=5", "-o", out,
                     "--looks", found_json, "--count", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "synthesis.json").read_text())
    assert record["settings"]["looks"] == 3
    made = [round(t["intensity_shift"], 6) for t in record["cases"]["totalseg_example_ct_sm"]]
    assert len(made) == 2 and set(made) <= shifts  # each is one measured tumour's shift
    both = run_cli("synth", "tumours", "-i", CT, "-l", SEG, "--organ", "liver=5", "-o",
                   tmp_path / "x", "--looks", found_json, "--shift-hu", "0,1")  # fmt: skip
    assert_one_line_error(both, "not both")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"cases": {"a": {"shift_hu": 0.0, "texture_hu": 5.0}}}))
    stale = run_cli("synth", "tumours", "-i", CT, "-l", SEG, "--organ", "liver=5", "-o",
                    tmp_path / "y", "--looks", old)  # fmt: skip
    assert_one_line_error(stale, f"{old}: look 0: needs shift_hu, texture_hu and quantiles")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


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
