"""The corpus of bad input (issue 17): each kind goes through the command line as a user would
type it and must end in one error line naming the problem and a non-zero exit, with every file
that was there before intact and nothing new written (a failed predict keeps its record of the
failure, predict.json, and the labels' dataset.json, and no label map)."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
import yaml
from conftest import SARCOMA, assert_one_line_error, run_cli

SHIPPED = "tsfm-real-lowres"
SCAN = SARCOMA / "imagesTr" / "STS_019_0000.nii.gz"
LABEL = SARCOMA / "labelsTr" / "STS_019.nii.gz"
TWICE = '{"labels": {"background": 0}, "labels": {"background": 0}}'
PREDICT = ["-m", SHIPPED, "--plan", "sarcoma_ct", "--fast"]


def _dataset(tmp: Path, edit=None, text=None) -> Path:
    """A copy of the real sarcoma dataset whose dataset.json is edited (a dict function) or
    replaced by `text`."""
    folder = Path(shutil.copytree(SARCOMA, tmp / "Dataset101_SarcomaCT"))
    meta = json.loads((folder / "dataset.json").read_text())
    new = text if text is not None else json.dumps(edit(meta) if edit else meta)
    (folder / "dataset.json").write_text(new)
    return folder


def _pool(tmp: Path, **entry) -> Path:
    entry = {"name": "d", "path": str(SARCOMA), "labels": {1: "tumour"}, **entry}
    path = tmp / "pool.yaml"
    lesions = entry.pop("lesions", None)
    pool = {"name": "p", "datasets": [entry], **({"lesions": lesions} if lesions else {})}
    path.write_text(yaml.safe_dump(pool))
    return path


def _bundle(tmp: Path, edit) -> Path:
    folder = Path(shutil.copytree(Path(__file__).parents[1] / "models" / SHIPPED, tmp / "b"))
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(edit(meta)))
    return folder


def _file(tmp: Path, name: str, content: bytes) -> Path:
    (tmp / name).write_bytes(content)
    return tmp / name


def _label_like(tmp: Path, name: str, change) -> Path:
    """STS_019's label map changed by `change` (an sitk.Image function), in its own folder."""
    folder = tmp / "pred"
    folder.mkdir(exist_ok=True)
    shutil.copy(SARCOMA / "dataset.json", folder)
    sitk.WriteImage(change(sitk.ReadImage(str(LABEL))), str(folder / name))
    return folder


def _respaced(image: sitk.Image) -> sitk.Image:
    image.SetSpacing((2.0, 2.0, 2.0))
    return image


def _halved(image: sitk.Image) -> sitk.Image:
    return sitk.Cast(image, sitk.sitkFloat32) * 0.5


def _remove(key):
    return lambda meta: {k: v for k, v in meta.items() if k != key}


def _set(**values):
    return lambda meta: {**meta, **values}


# kind: (arguments given the test's folder, what the error line must say, a record allowed)
KINDS = {
    "dataset.json key twice": (
        lambda t: ["preprocess", _pool(t, path=str(_dataset(t, text=TWICE))), "-o", t / "cache"],
        "key 'labels' appears twice"),
    "dataset.json label not a number": (
        lambda t: ["preprocess", _pool(t, path=str(_dataset(t, _set(labels={"background": 0,
                   "sarcoma": "one"})))), "-o", t / "cache"], "must be an integer"),
    "dataset.json channel without files": (
        lambda t: ["preprocess", _pool(t, path=str(_dataset(t, _set(channel_names={"0": "CT",
                   "1": "T2"})))), "-o", t / "cache"], "channel(s) [1] missing"),
    "dataset.json file_ending of no file": (
        lambda t: ["preprocess", _pool(t, path=str(_dataset(t, _set(file_ending=".nrrd")))),
                   "-o", t / "cache"], "no training images ending in .nrrd"),
    "dataset.json not UTF-8": (
        lambda t: ["preprocess", _pool(t, path=str(_nonutf8(t))), "-o", t / "cache"],
        "not valid JSON"),
    "pool: unknown dataset key": (
        lambda t: ["preprocess", _pool(t, weight=-1), "-o", t / "cache"], "weight"),
    "pool: dataset path missing": (
        lambda t: ["preprocess", _pool(t, path=str(t / "nowhere")), "-o", t / "cache"],
        "not found"),
    "pool: dataset name that is a path": (
        lambda t: ["preprocess", _pool(t, name="../d"), "-o", t / "cache"], "name"),
    "pool: lesion that is no class": (
        lambda t: ["preprocess", _pool(t, lesions=["liver"]), "-o", t / "cache"],
        "lesions: 'liver' is not a global class"),
    "bundle config not JSON": (
        lambda t: ["predict", "-i", SCAN, "-o", t / "out", "-m", _broken_bundle(t), "--plan",
                   "sarcoma_ct"], "not valid JSON"),
    "bundle config without classes": (
        lambda t: ["predict", "-i", SCAN, "-o", t / "out", "-m", _bundle(t, _remove("classes")),
                   "--plan", "sarcoma_ct"], "'classes' is missing"),
    "bundle from a newer tumorfm": (
        lambda t: ["predict", "-i", SCAN, "-o", t / "out", "-m", _bundle(t, _set(version=99)),
                   "--plan", "sarcoma_ct"], "newer than this"),
    "bundle lesion classes not its own": (
        lambda t: ["predict", "-i", SCAN, "-o", t / "out", "-m",
                   _bundle(t, _set(lesion_classes=["liver"])), "--plan", "sarcoma_ct"],
        "lesion_classes must list classes"),
    "predict: empty scan file": (
        lambda t: ["predict", "-i", _file(t, "a.nii.gz", b""), "-o", t / "out", *PREDICT],
        "could not be segmented", True),
    "predict: truncated scan": (
        lambda t: ["predict", "-i", _file(t, "a.nii.gz", SCAN.read_bytes()[:200_000]), "-o",
                   t / "out", *PREDICT], "could not be segmented", True),
    "predict: text named .nrrd": (
        lambda t: ["predict", "-i", _file(t, "a.nrrd", b"hello\n"), "-o", t / "out", *PREDICT],
        "could not be segmented", True),
    "predict: overlap of 1.5": (
        lambda t: ["predict", "-i", SCAN, "-o", t / "out", *PREDICT, "--overlap", "1.5"],
        "overlap 1.5"),
    "predict: unknown device": (
        lambda t: ["predict", "-i", SCAN, "-o", t / "out", *PREDICT, "--device", "tpu"],
        "device 'tpu'"),
    "predict: class not in the bundle": (
        lambda t: ["predict", "-i", SCAN, "-o", t / "out", *PREDICT, "--classes", "liver"],
        "class 'liver' is not in the bundle"),
    "predict: plan not in the bundle": (
        lambda t: ["predict", "-i", SCAN, "-o", t / "out", "-m", SHIPPED, "--plan", "liver_ct"],
        "no plan 'liver_ct'"),
    "predict: lesion class not in the bundle": (
        lambda t: ["predict", "-i", SCAN, "-o", t / "out", *PREDICT, "--lesion-classes", "spleen"],
        "lesion class 'spleen'"),
    "predict: NaN minimum lesion": (
        lambda t: ["predict", "-i", SCAN, "-o", t / "out", *PREDICT, "--min-lesion-ml", "nan"],
        "--min-lesion-ml"),
    "predict: output named like a text file": (
        lambda t: ["predict", "-i", SCAN, "-o", t / "out.txt", *PREDICT], "a .txt file's name"),
    "predict: one file name for a folder of scans": (
        lambda t: ["predict", "-i", SARCOMA / "imagesTr", "-o", t / "seg.nii.gz", *PREDICT],
        "one label map's name for 3 scans"),
    "evaluate: NaN tolerance": (
        lambda t: ["evaluate", LABEL, LABEL, "--tolerance", "nan", "-o", t / "ev"],
        "--tolerance 'nan'"),
    "evaluate: --map without =": (
        lambda t: ["evaluate", LABEL, LABEL, "--map", "sarcoma", "-o", t / "ev"],
        "expected NAME=VALUE"),
    "evaluate: prediction on another grid": (
        lambda t: ["evaluate", _label_like(t, "STS_019.nii.gz", _respaced), SARCOMA / "labelsTr",
                   "--chill", "-o", t / "ev"], "geometry differs"),
    "evaluate: prediction of fractions": (
        lambda t: ["evaluate", _label_like(t, "STS_019.nii.gz", _halved), SARCOMA / "labelsTr",
                   "--chill", "-o", t / "ev"], "not a label map"),
    "evaluate: folder without label maps": (
        lambda t: ["evaluate", _empty(t), SARCOMA / "labelsTr", "-o", t / "ev"], "no label maps"),
    "statistics: label map of fractions": (
        lambda t: ["statistics", _label_like(t, "x.nii.gz", _halved) / "x.nii.gz", "-o",
                   t / "s.json"], "non-integer"),
    "statistics: scan on another grid": (
        lambda t: ["statistics", LABEL, "--image", _label_like(t, "x.nii.gz", _respaced) /
                   "x.nii.gz", "-o", t / "s.json"], "grid differs"),
    "view: label map on another grid": (
        lambda t: ["view", SCAN, _label_like(t, "x.nii.gz", _respaced) / "x.nii.gz",
                   "--export", t / "v.html"], "not on the scan's grid"),
    "view: label map of fractions": (
        lambda t: ["view", SCAN, _label_like(t, "x.nii.gz", _halved) / "x.nii.gz",
                   "--export", t / "v.html"], "non-integer"),
    "view: export into a folder that cannot be made": (
        lambda t: ["view", SCAN, LABEL, "--export", _file(t, "a.txt", b"x") / "v.html"],
        "cannot write output here"),
    "view: export onto a folder": (
        lambda t: ["view", SCAN, LABEL, "--export", _empty(t)], "a folder; give the page's"),
    "view: port out of range": (
        lambda t: ["view", SCAN, "--port", "70000", "--no-browser"], "--port 70000"),
    "pretrain: folder that is no cache": (
        lambda t: ["pretrain", _empty(t), "-o", t / "run", "--profile", "cpu"],
        "not a tumorfm cache"),
    "pretrain: resume a folder that is no run": (
        lambda t: ["pretrain", "--resume", _empty(t)], "not a resumable tumorfm run"),
    "finetune: NaN learning rate": (
        lambda t: ["finetune", SARCOMA, "--from", SHIPPED, "-o", t / "run", "--lr", "nan",
                   "--map", "sarcoma=soft_tissue_sarcoma"], "lr nan"),
    "finetune: unknown plan configuration": (
        lambda t: ["finetune", SARCOMA, "--from", SHIPPED, "-o", t / "run", "--config", "ultra",
                   "--map", "sarcoma=soft_tissue_sarcoma"], "configuration 'ultra'"),
    "finetune: unknown profile": (
        lambda t: ["finetune", SARCOMA, "--from", SHIPPED, "-o", t / "run", "--profile", "gpu",
                   "--map", "sarcoma=soft_tissue_sarcoma"], "profile 'gpu'"),
    "finetune: patch below 8": (
        lambda t: ["finetune", SARCOMA, "--from", SHIPPED, "-o", t / "run", "--patch", "4", "4",
                   "4", "--map", "sarcoma=soft_tissue_sarcoma"], "each at least 8"),
    "finetune: unknown mode": (
        lambda t: ["finetune", SARCOMA, "--from", SHIPPED, "-o", t / "run", "--mode", "all"],
        "mode 'all'"),
    "finetune: no class in common": (
        lambda t: ["finetune", SARCOMA, "--from", SHIPPED, "-o", t / "run"], "--map"),
    "synth: unknown size": (
        lambda t: ["synth", "tumours", "-i", SARCOMA, "--organ", "sarcoma", "-o", t / "s",
                   "--size", "huge"], "size 'huge'"),
    "synth: unknown engine": (
        lambda t: ["synth", "tumours", "-i", SARCOMA, "--organ", "sarcoma", "-o", t / "s",
                   "--engine", "magic"], "engine 'magic'"),
    "synth: diffusion without a model": (
        lambda t: ["synth", "tumours", "-i", SARCOMA, "--organ", "sarcoma", "-o", t / "s",
                   "--engine", "diffusion"], "needs --model"),
    "synth: tumour that is no label": (
        lambda t: ["synth", "appearance", "-i", SARCOMA, "--tumour", "liver", "--organ-hu",
                   "-20,100"], "tumour 'liver'"),
    "transfer study: epochs not numbers": (
        lambda t: ["transfer-study", SARCOMA, "--from", SHIPPED, "-o", t / "ts", "--epochs", "a"],
        "--epochs a"),
    "model summary: unknown preset": (
        lambda t: ["model", "summary", "tsfm-huge"], "unknown model 'tsfm-huge'"),
    "unknown option": (lambda t: ["preprocess", "--frobnicate"], "No such option"),
}  # fmt: skip


def _nonutf8(tmp: Path) -> Path:
    folder = _dataset(tmp)
    (folder / "dataset.json").write_bytes(b'{"name": "\xff\xfe"}')
    return folder


def _broken_bundle(tmp: Path) -> Path:
    folder = _bundle(tmp, lambda meta: meta)
    (folder / "config.json").write_text("{")
    return folder


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir(exist_ok=True)
    return tmp / "empty"


def _snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder` with its content's digest ('' for a folder)."""
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""  # noqa: E731
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_bad_input_is_one_line_and_harmless(tmp_path, kind):
    build, fragment, *record = KINDS[kind]
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("written before")
    args = build(work)
    before = _snapshot(work)
    result = run_cli(*args, cwd=work)
    assert_one_line_error(result, fragment)
    after = _snapshot(work)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing lost or changed
    new = sorted(set(after) - set(before))
    if record:  # a folder run: the failure's record, no label map
        assert set(new) <= {"out", "out/predict.json", "out/dataset.json"}, new
    else:
        assert new == [], new
