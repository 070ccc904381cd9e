"""`tumorfm evaluate`: case matching, class matching, outputs and the user's mistakes."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import assert_one_line_error, run_cli

from tumorfm.data.io import Geometry, write_volume
from tumorfm.errors import TumorFMError
from tumorfm.eval import metrics
from tumorfm.eval.evaluate import default_output, evaluate, parse_tolerances

SHAPE = (12, 20, 24)  # z, y, x
GEOMETRY = Geometry((24, 20, 12), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
ORGAN, TUMOUR = 1, 2


def label_map(organ=(2, 10, 3, 17, 3, 21), tumours=()):
    """An organ box (z0, z1, y0, y1, x0, x1) holding tumour boxes."""
    array = np.zeros(SHAPE, np.uint8)
    z0, z1, y0, y1, x0, x1 = organ
    array[z0:z1, y0:y1, x0:x1] = ORGAN
    for z0, z1, y0, y1, x0, x1 in tumours:
        array[z0:z1, y0:y1, x0:x1] = TUMOUR
    return array


CASES = {  # case: (gt, pred)
    "case_001": (
        label_map(tumours=[(4, 7, 5, 9, 5, 9)]),
        label_map(organ=(2, 10, 4, 17, 3, 20), tumours=[(4, 7, 5, 9, 6, 10)]),
    ),
    "case_002": (label_map(), label_map(tumours=[(3, 5, 12, 15, 14, 18)])),  # a false positive
    "case_003": (  # two tumours, one found
        label_map(tumours=[(3, 5, 4, 7, 4, 7), (6, 9, 12, 16, 14, 19)]),
        label_map(tumours=[(3, 6, 4, 8, 4, 8)]),
    ),
    "case_004": (label_map(), label_map(organ=(2, 9, 3, 17, 3, 21))),  # no tumour anywhere
}


@pytest.fixture
def folders(tmp_path):
    """Predictions in mixed formats (plus one without ground truth) and an nnU-Net labelsTr."""
    pred, gt = tmp_path / "pred", tmp_path / "Dataset001_Test" / "labelsTr"
    suffixes = [".nrrd", ".nii.gz", ".mha", ".nii.gz"]
    for (case, (gt_array, pred_array)), suffix in zip(CASES.items(), suffixes):
        write_volume(gt_array, GEOMETRY, gt / f"{case}.nii.gz")
        write_volume(pred_array, GEOMETRY, pred / f"{case}{suffix}")
    write_volume(label_map(), GEOMETRY, pred / "case_009.nii.gz")
    (pred / "plans.json").write_text("{}")  # nnU-Net leaves other files beside its predictions
    return pred, gt


def test_folders_are_matched_by_case_name(folders, capsys):
    pred, gt = folders
    result = evaluate(pred, gt, progress=False)
    assert [case["case"] for case in result["cases"]] == list(CASES)
    assert result["cases"][0]["pred"].endswith("case_001.nrrd")
    warning = capsys.readouterr().err
    assert "1 prediction(s) without ground truth" in warning and "case_009" in warning
    assert result["settings"]["matching"] == "value"
    assert [c["name"] for c in result["settings"]["classes"]] == ["1", "2"]


def test_scores_per_case_and_aggregates(folders):
    pred, gt = folders
    result = evaluate(pred, gt, progress=False)
    spacing = GEOMETRY.spacing_zyx
    for case, (gt_array, pred_array) in CASES.items():
        scores = next(c for c in result["cases"] if c["case"] == case)["scores"]
        for value in (ORGAN, TUMOUR):
            p, g = pred_array == value, gt_array == value
            row = scores[str(value)]
            assert row["dice"] == metrics.dice(p, g)
            assert row["gt_ml"] == pytest.approx(g.sum() * 0.8 * 0.8 * 2.5 / 1000)
            hd, nsd = metrics.surface_metrics(p, g, spacing, 2.0)
            assert row["hd95"] == pytest.approx(hd, nan_ok=True)
            assert row["nsd"] == pytest.approx(nsd, nan_ok=True)
    false_positive = result["cases"][1]["scores"]["2"]
    assert false_positive["dice"] == 0 and false_positive["nsd"] == 0
    assert false_positive["hd95"] == pytest.approx(math.sqrt(19.2**2 + 16**2 + 30**2))
    absent = result["cases"][3]["scores"]["2"]  # neither mask: filled in as two empty masks
    assert absent["dice"] == 1 and math.isnan(absent["hd95"]) and math.isnan(absent["nsd"])

    tumour = result["aggregates"]["2"]
    assert tumour["cases"] == 4 and tumour["hd95"]["n"] == 3 and tumour["dice"]["n"] == 4
    assert tumour["lesions"] | {"sensitivity": 0, "precision": 0, "f1": 0} == {
        "gt_lesions": 3,
        "detected": 2,
        "pred_lesions": 3,
        "true_positive_pred": 2,
        "sensitivity": 0,
        "precision": 0,
        "f1": 0,
    }
    assert tumour["lesions"]["sensitivity"] == pytest.approx(2 / 3)
    patient = tumour["patient"]
    assert (patient["tp"], patient["fn"], patient["tn"], patient["fp"]) == (2, 0, 1, 1)
    assert (patient["sensitivity"], patient["specificity"]) == (1.0, 0.5)
    dice = [c["scores"]["1"]["dice"] for c in result["cases"]]
    assert result["aggregates"]["1"]["dice"]["mean"] == pytest.approx(np.mean(dice))


def test_outputs_are_written_and_agree(folders, tmp_path):
    pred, gt = folders
    out = tmp_path / "out"
    result = evaluate(pred, gt, out=out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json", "summary.md"]
    stored = json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == len(CASES) * 2
    for row in rows:
        scores = next(c for c in stored["cases"] if c["case"] == row["case"])["scores"]
        for key in ("dice", "hd95", "nsd", "gt_ml", "pred_lesions"):
            value = scores[row["class"]][key]
            if value is None:  # NaN: null in JSON, an empty cell in CSV
                assert row[key] == ""
            else:
                assert float(row[key]) == pytest.approx(value, rel=1e-12)
    assert stored["cases"][3]["scores"]["2"]["hd95"] is None  # NaN is null in JSON
    assert stored["aggregates"]["2"]["dice"]["mean"] == result["aggregates"]["2"]["dice"]["mean"]
    assert stored["settings"]["conventions"] == metrics.CONVENTIONS
    summary = (out / "summary.md").read_text(encoding="utf-8")
    mean, std = (result["aggregates"]["1"]["dice"][k] for k in ("mean", "std"))
    assert f"| 1 | 4 | {mean:.3f} ± {std:.3f} |" in summary
    assert "0.667 (2/3)" in summary and "at 2 mm" in summary
    evaluate(pred, gt, out=out, progress=False)  # a rerun replaces the files, leaves no temporary
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "metrics.json", "summary.md"]


def test_classes_matched_by_dataset_json_names(folders):
    pred, gt = folders
    by_value = evaluate(pred, gt, progress=False)
    (gt.parent / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "file_ending": ".nii.gz",
                "labels": {"background": 0, "liver": 1, "tumour": 2},
            }
        )
    )
    # MSD-style names in the prediction folder, with the two values swapped and one extra class
    (pred / "dataset.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "tumour", "2": "liver", "3": "spleen"}})
    )
    for path in pred.iterdir():
        if path.name.startswith("case_"):
            array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
            swapped = np.choose(array, [0, 2, 1]).astype(np.uint8)
            write_volume(swapped, GEOMETRY, path)
    result = evaluate(pred, gt, progress=False)
    assert result["settings"]["matching"] == "name"
    assert result["settings"]["classes"] == [
        {"name": "liver", "pred_value": 2, "gt_value": 1, "tolerance_mm": 2.0},
        {"name": "tumour", "pred_value": 1, "gt_value": 2, "tolerance_mm": 2.0},
    ]
    for named, numbered in zip(result["cases"], by_value["cases"]):  # same scores, other values
        expected = {"liver": numbered["scores"]["1"], "tumour": numbered["scores"]["2"]}
        assert json.dumps(named["scores"]) == json.dumps(expected)  # NaN included

    only = evaluate(pred, gt, labels=["tumour"], tolerances={"tumour": 5.0}, progress=False)
    assert list(only["aggregates"]) == ["tumour"]
    assert only["aggregates"]["tumour"]["nsd"]["tolerance_mm"] == 5.0
    by_gt_value = evaluate(pred, gt, labels=["2"], progress=False)
    assert [c["name"] for c in by_gt_value["settings"]["classes"]] == ["tumour"]
    with pytest.raises(TumorFMError, match="no class spleen to score"):
        evaluate(pred, gt, labels=["spleen"], progress=False)
    with pytest.raises(TumorFMError, match="--tolerance kidney: no such class"):
        evaluate(pred, gt, tolerances={"kidney": 1.0}, progress=False)
    (pred / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "kidney"}}))
    with pytest.raises(TumorFMError, match="name no common class"):
        evaluate(pred, gt, progress=False)


def test_single_files_and_parallel_workers(folders):
    pred, gt = folders
    single = evaluate(pred / "case_003.mha", gt / "case_003.nii.gz", progress=False)
    assert [c["case"] for c in single["cases"]] == ["case_003"]
    assert default_output(pred / "case_003.mha") == pred / "case_003_evaluation"
    assert default_output(pred) == pred / "evaluation"
    serial = evaluate(pred, gt, progress=False)
    parallel = evaluate(pred, gt, workers=2, progress=False)
    assert json.dumps(parallel["cases"]) == json.dumps(serial["cases"])


def test_parse_tolerances():
    assert parse_tolerances(["liver=2", "a=b=1.5"]) == {"liver": 2.0, "a=b": 1.5}
    for bad in ("liver", "=2", "liver=x", "liver=-1"):
        with pytest.raises(TumorFMError, match="expected NAME=MM"):
            parse_tolerances([bad])


def test_bad_paths_are_one_line_errors(folders, tmp_path):
    pred, gt = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ((tmp_path / "nowhere", gt), "no such file or folder"),
        ((empty, gt), "no label maps"),
        ((pred / "case_001.nrrd", gt), "two label-map files or two folders"),
    ]
    shutil.copy(pred / "case_002.nii.gz", pred / "case_001.nii.gz")
    cases.append(((pred, gt), "case 'case_001' is also case_001.nii.gz"))
    for (p, g), message in cases:
        with pytest.raises(TumorFMError, match=message) as error:
            evaluate(p, g, progress=False)
        assert "\n" not in str(error.value)


def test_cli_prints_the_summary_and_writes_beside_the_predictions(folders):
    pred, gt = folders
    result = run_cli("evaluate", pred, gt, "--labels", "2", "--tolerance", "2=3")
    assert result.returncode == 0, result.stderr
    assert "| 2 | 4 |" in result.stdout and "at 3 mm" in result.stdout
    assert "| 1 |" not in result.stdout
    assert str(pred / "evaluation") in result.stdout
    assert (pred / "evaluation" / "metrics.json").is_file()


def test_cli_geometry_mismatch(folders):
    pred, gt = folders
    moved = Geometry(GEOMETRY.size, (0.8, 0.8, 3.0), GEOMETRY.origin, GEOMETRY.direction)
    write_volume(CASES["case_002"][1], moved, pred / "case_002.nii.gz")
    assert_one_line_error(
        run_cli("evaluate", pred, gt),
        f"{pred / 'case_002.nii.gz'}: geometry differs from the ground truth",
        "spacing (0.8, 0.8, 3) vs (0.8, 0.8, 2.5)",
    )


def test_cli_missing_prediction(folders):
    pred, gt = folders
    (pred / "case_002.nii.gz").unlink()
    (pred / "case_003.mha").unlink()
    assert_one_line_error(
        run_cli("evaluate", pred, gt), "no prediction for ground-truth case(s) case_002, case_003"
    )


def test_cli_unreadable_file(folders):
    pred, gt = folders
    (pred / "case_001.nrrd").write_bytes(b"NRRD0004\nthis is not a volume\n")
    assert_one_line_error(run_cli("evaluate", pred, gt), str(pred / "case_001.nrrd"), "read")


def test_cli_2d_image(folders):
    pred, gt = folders
    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((20, 24), np.uint8)), str(gt / "case_004.nii.gz")
    )
    assert_one_line_error(
        run_cli("evaluate", pred, gt), str(gt / "case_004.nii.gz"), "expected a 3D label map"
    )


def test_cli_report_with_pictures(folders, tmp_path):
    pred, gt = folders
    images = tmp_path / "imagesTr"
    rng = np.random.default_rng(0)
    for case in CASES:
        scan = rng.normal(40, 20, SHAPE).astype(np.float32)
        write_volume(scan, GEOMETRY, images / f"{case}_0000.nii.gz")
    result = run_cli("evaluate", pred, gt, "-o", tmp_path / "ev", "--images", images)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "ev" / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(CASES) and "case_003" in page
    for case in CASES:  # each case links to its viewer page: ground truth and prediction on it
        assert f'<a href="viewer/{case}.html">open in the viewer</a>' in page
        viewer = (tmp_path / "ev" / "viewer" / f"{case}.html").read_text(encoding="utf-8")
        assert '"name": "ground truth"' in viewer and '"name": "prediction"' in viewer
    assert (tmp_path / "ev" / "viewer" / "niivue.umd.js").is_file()  # one copy, beside them
    assert (tmp_path / "ev" / "viewer" / "LICENSE.niivue").is_file()


def test_map_pairs_classes_named_differently_and_chill_scores_a_subset(folders):
    """Issue 18: `brain_tumour` vs `tumour` is paired with --map (and the refusal says so);
    predictions for some of the cases are scored with --chill, saying how many."""
    pred, gt = folders
    by_value = evaluate(pred, gt, progress=False)
    labels = {"background": 0, "liver": 1, "tumour": 2}
    (gt.parent / "dataset.json").write_text(json.dumps({"labels": labels}))
    renamed = {"background": 0, "organ": 1, "lesion": 2}
    (pred / "dataset.json").write_text(json.dumps({"labels": renamed}))
    refused = run_cli("evaluate", pred, gt)
    assert_one_line_error(refused, "no common class", "organ, lesion", "--map PRED_CLASS=GT_CLASS")
    mapped = evaluate(pred, gt, mapping={"organ": "liver", "lesion": "tumour"}, progress=False)
    assert [c["name"] for c in mapped["settings"]["classes"]] == ["liver", "tumour"]
    assert mapped["aggregates"]["tumour"]["dice"] == by_value["aggregates"]["2"]["dice"]
    typo = run_cli("evaluate", pred, gt, "--map", "lesoin=tumour")
    assert_one_line_error(typo, "--map lesoin=tumour", "prediction has no class 'lesoin'")
    (pred / "case_002.nii.gz").unlink()
    chill = run_cli(
        "evaluate", pred, gt, "--map", "organ=liver", "--map", "lesion=tumour", "--chill"
    )
    assert chill.returncode == 0, chill.stderr
    assert "scoring 3 of 4 ground-truth cases" in chill.stderr
    metrics = json.loads((pred / "evaluation" / "metrics.json").read_text())
    assert [c["case"] for c in metrics["cases"]] == ["case_001", "case_003", "case_004"]
    assert metrics["settings"]["chill"] and metrics["settings"]["cases_scored"] == 3
    assert_one_line_error(run_cli("evaluate", pred, gt, "--map", "organ=liver"), "--chill")
