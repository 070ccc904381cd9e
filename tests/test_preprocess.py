"""`tumorfm preprocess` on real scans: the cache, its properties, reruns, and mapping back."""

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import BRAIN, SARCOMA, assert_one_line_error, run_cli

from tumorfm.data.cache import cached_cases, load_case
from tumorfm.data.formats import load_channels, load_label, read_dataset
from tumorfm.data.pool import load_pool
from tumorfm.data.preprocess import preprocess_pool
from tumorfm.data.resample import resample_labels
from tumorfm.infer.inputs import list_inputs, load_scan
from tumorfm.infer.predictor import PredictOptions, Predictor
from tumorfm.model import create_model
from tumorfm.model.bundle import save_bundle


def _pool_file(tmp_path, sarcoma=SARCOMA, brain=BRAIN):
    path = tmp_path / "pool.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "real",
                "datasets": [
                    {"name": "sarcoma", "path": str(sarcoma), "labels": {1: "soft_tissue_sarcoma"}},
                    {"name": "brain", "path": str(brain), "labels": {1: "brain_tumour"}},
                ],
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preprocess")
    out = tmp / "cache"
    report = preprocess_pool(load_pool(_pool_file(tmp)), out, workers=2, progress=False)
    return out, report


def test_cache_layout_and_report(cache):
    out, report = cache
    assert report["datasets"]["sarcoma"]["written"] == 3
    assert report["datasets"]["brain"]["written"] == 2
    for name in (
        "pool.json",
        "preprocess_report.json",
        "sarcoma/plan.json",
        "sarcoma/fingerprint.json",
    ):
        assert (out / name).is_file()
    assert [c.case_id for c in cached_cases(out, "sarcoma")] == ["STS_008", "STS_019", "STS_025"]


def test_ct_case_is_cropped_normalised_and_resampled(cache):
    out, _ = cache
    plan = json.loads((out / "sarcoma" / "plan.json").read_text())
    stats = plan["intensity_properties"][0]
    case = load_case(out / "sarcoma" / "STS_019")
    props = case.properties
    image, label = case.image(), case.label()
    assert image.shape[1:] == label.shape == tuple(props["shape_after_resampling"])
    assert props["annotated_classes"] == ["soft_tissue_sarcoma"]
    # CT: clipped to the foreground percentiles, then z-scored with foreground mean and std
    low = (stats["percentile_00_5"] - stats["mean"]) / stats["std"]
    high = (stats["percentile_99_5"] - stats["mean"]) / stats["std"]
    assert image.min() >= low - 0.3 and image.max() <= high + 0.3  # cubic overshoot at most
    # labels are global values (1 = soft_tissue_sarcoma) and the tumour survives resampling
    assert set(np.unique(label)) == {0, 1}
    assert set(case.class_locations()) == {1}
    locations = case.class_locations()[1]
    assert (label[tuple(locations.T)] == 1).all()


def test_mr_case_is_zscored_with_global_label(cache):
    out, _ = cache
    case = load_case(out / "brain" / "btp_04_post")
    image = np.asarray(case.image())
    assert abs(float(image.mean())) < 0.05 and abs(float(image.std()) - 1) < 0.05
    assert set(np.unique(case.label())) == {0, 2}  # brain_tumour is global label 2


def test_cached_label_maps_back_to_the_original(cache):
    """Undo resampling and cropping with the stored properties: the original label comes back."""
    out, _ = cache
    dataset = read_dataset(SARCOMA)
    for source in dataset.cases:
        props = load_case(out / "sarcoma" / source.case_id).properties
        label = load_case(out / "sarcoma" / source.case_id).label()
        restored = np.zeros(props["shape_before_cropping"], dtype=np.int16)
        box = tuple(slice(lo, hi) for lo, hi in props["bbox_used_for_cropping"])
        restored[box] = resample_labels(
            np.asarray(label), tuple(props["shape_after_cropping"]), props["separate_z_axis"]
        )
        original, geometry = load_label(source)
        assert list(geometry.size) == props["original_geometry"]["size"]
        overlap = np.logical_and(restored > 0, original > 0).sum()
        dice = 2 * overlap / ((restored > 0).sum() + (original > 0).sum())
        assert dice > 0.95, (source.case_id, dice)


def test_rerun_skips_finished_and_redoes_broken(tmp_path):
    sarcoma = shutil.copytree(SARCOMA, tmp_path / "s")
    brain = shutil.copytree(BRAIN, tmp_path / "b")
    pool = load_pool(_pool_file(tmp_path, sarcoma, brain))
    out = tmp_path / "cache"
    preprocess_pool(pool, out, progress=False)
    (out / "sarcoma" / "STS_008" / "label.npy").write_bytes(b"broken")  # a damaged case
    (out / "sarcoma" / ".STS_025.abc123").mkdir()  # leftover of a killed run
    again = preprocess_pool(pool, out, progress=False)
    assert again["datasets"]["sarcoma"] == {
        **again["datasets"]["sarcoma"],
        "written": 1,
        "skipped": 2,
    }
    assert again["datasets"]["brain"]["skipped"] == 2
    assert load_case(out / "sarcoma" / "STS_008") is not None
    assert not (out / "sarcoma" / ".STS_025.abc123").exists()
    # changing the pool's label map makes every case of that dataset stale
    pool.datasets[0].entry.labels[1] = "sarcoma_renamed"
    pool.classes[0] = "sarcoma_renamed"
    third = preprocess_pool(pool, out, progress=False)
    assert third["datasets"]["sarcoma"]["written"] == 3


def test_a_cache_remade_from_fewer_cases_drops_the_old_ones(tmp_path):
    """Training without a split reads every cached case: one the pool no longer lists must go."""
    sarcoma = shutil.copytree(SARCOMA, tmp_path / "s")
    out = tmp_path / "cache"
    preprocess_pool(load_pool(_pool_file(tmp_path, sarcoma=sarcoma)), out, progress=False)
    assert [c.case_id for c in cached_cases(out, "sarcoma")] == ["STS_008", "STS_019", "STS_025"]
    (sarcoma / "imagesTr" / "STS_019_0000.nii.gz").unlink()
    (sarcoma / "labelsTr" / "STS_019.nii.gz").unlink()
    meta = json.loads((sarcoma / "dataset.json").read_text())
    (sarcoma / "dataset.json").write_text(json.dumps({**meta, "numTraining": 2}))
    (out / "sarcoma" / "notes").mkdir()  # not a cached case: not tumorfm's to delete
    again = preprocess_pool(load_pool(_pool_file(tmp_path, sarcoma=sarcoma)), out, progress=False)
    assert again["datasets"]["sarcoma"]["removed"] == 1
    assert [c.case_id for c in cached_cases(out, "sarcoma")] == ["STS_008", "STS_025"]
    assert (out / "sarcoma" / "plan.json").is_file() and (out / "sarcoma" / "notes").is_dir()


def test_interrupted_preprocess_leaves_no_usable_cache(tmp_path, monkeypatch, sarcoma):
    """A killed preprocess must not leave a cache that pretrain takes for a whole one."""
    import tumorfm.data.preprocess as module

    out = tmp_path / "cache"
    pool = load_pool(_pool_file(tmp_path, sarcoma=sarcoma))
    preprocess_pool(pool, out, progress=False)
    assert (out / "pool.json").is_file()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run_parallel", killed)
    with pytest.raises(KeyboardInterrupt):
        preprocess_pool(pool, out, progress=False, config="lowres")
    result = run_cli("pretrain", out, "-o", tmp_path / "run", "--profile", "cpu")
    assert_one_line_error(result, str(out), "no pool.json")


def test_source_is_never_modified(tmp_path):
    before = {p: p.read_bytes() for p in SARCOMA.rglob("*") if p.is_file()}
    preprocess_pool(load_pool(_pool_file(tmp_path)), tmp_path / "c", progress=False)
    assert {p: p.read_bytes() for p in SARCOMA.rglob("*") if p.is_file()} == before


def test_cli_preprocess_and_bad_output(tmp_path):
    pool = _pool_file(tmp_path)
    result = run_cli("preprocess", pool, "-o", tmp_path / "cli-cache", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "sarcoma: 3 written" in result.stdout and "patch" in result.stdout
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(
        run_cli("preprocess", pool, "-o", blocker / "cache"), str(blocker / "cache"), "cannot write"
    )


def test_cli_preprocess_reports_a_bad_case(tmp_path, sarcoma):
    (sarcoma / "imagesTr" / "STS_019_0000.nii.gz").write_bytes(b"\x1f\x8b garbage")
    pool = _pool_file(tmp_path, sarcoma=sarcoma)
    assert_one_line_error(
        run_cli("preprocess", pool, "-o", tmp_path / "c"), "STS_019_0000.nii.gz", "gzip"
    )


def test_geometry_mismatch_is_refused(tmp_path, sarcoma):
    import SimpleITK as sitk

    path = sarcoma / "labelsTr" / "STS_025.nii.gz"
    image = sitk.ReadImage(str(path))
    image.SetOrigin([o + 5 for o in image.GetOrigin()])
    sitk.WriteImage(image, str(path))
    result = run_cli("preprocess", _pool_file(tmp_path, sarcoma=sarcoma), "-o", tmp_path / "c")
    assert_one_line_error(result, "STS_025.nii.gz", "geometry differs")
    assert load_channels(read_dataset(sarcoma).cases[0])[0].ndim == 4


def test_lowres_cache_and_the_note_when_it_equals_fullres(tmp_path):
    pool = _pool_file(tmp_path)
    result = run_cli("preprocess", pool, "-o", tmp_path / "low", "--config", "lowres")
    assert result.returncode == 0, result.stderr
    assert "sarcoma: 3 written, 0 up to date; 3d_lowres" in result.stdout
    plan = json.loads((tmp_path / "low" / "sarcoma" / "plan.json").read_text())
    assert plan["configuration"] == "3d_lowres" and plan["patch_size"] == [48, 96, 96]
    assert plan["target_spacing_zyx"][1] > plan["fullres_spacing_zyx"][1]
    case = load_case(tmp_path / "low" / "sarcoma" / "STS_019")
    assert list(case.image().shape[1:]) == case.properties["shape_after_resampling"]
    assert case.properties["target_spacing"] == plan["target_spacing_zyx"]
    big = ["--config", "lowres", "--patch", "256", "512", "512"]
    result = run_cli("preprocess", pool, "-o", tmp_path / "big", *big)
    assert result.returncode == 0, result.stderr
    assert "note: lowres equals full resolution for sarcoma" in result.stderr
    plan = json.loads((tmp_path / "big" / "sarcoma" / "plan.json").read_text())
    assert plan["configuration"] == "3d_fullres"
    result = run_cli("preprocess", pool, "-o", tmp_path / "x", "--config", "3d_low")
    assert_one_line_error(result, "configuration '3d_low'", "fullres or lowres")


def test_a_pool_entry_config_overrides_the_command_line(tmp_path):
    """A lowres pool may keep one dataset at full resolution, and a fullres pool lowres one."""
    spec = yaml.safe_load(_pool_file(tmp_path).read_text())
    spec["datasets"][0]["config"] = "lowres"  # sarcoma
    spec["datasets"][1]["config"] = "fullres"  # brain
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump(spec))
    pool = load_pool(tmp_path / "pool.yaml")
    for config in ("fullres", "lowres"):
        report = preprocess_pool(pool, tmp_path / config, progress=False, config=config)
        datasets = report["datasets"]
        assert datasets["sarcoma"]["configuration"] == "3d_lowres"
        assert datasets["brain"]["configuration"] == "3d_fullres"
        assert "note" not in datasets["brain"] and report["lowres_patch"] == [48, 96, 96]


def test_the_command_line_lowres_patch_is_the_planner_default():
    from tumorfm.cli.data import preprocess
    from tumorfm.data.plan import LOWRES_PATCH

    default = inspect.signature(preprocess).parameters["patch"].default
    assert default == LOWRES_PATCH == (48, 96, 96)


@pytest.mark.parametrize("dataset, case_id", [("sarcoma", "STS_019"), ("brain", "btp_07_post")])
def test_prediction_prepares_a_scan_bit_identically_to_training(cache, tmp_path, dataset, case_id):
    """The network must see at prediction what it saw in training: the same scan read by
    `predict` (its own reader) and prepared by the Predictor equals the cached training case,
    bit for bit, and the way back lands on the scan's grid."""
    out, _ = cache
    plan = json.loads((out / dataset / "plan.json").read_text())
    model = create_model("tsfm-tiny", in_channels=1, num_classes=1, patch_size=(16, 32, 32))
    bundle = save_bundle(tmp_path / "bundle", model, ["tumour"], ["CT"], preset="tsfm-tiny",
                         plan={"datasets": {dataset: plan}})  # fmt: skip
    cached = load_case(out / dataset / case_id)
    scans = list_inputs(Path(cached.properties["source_files"][0]))
    image, geometry = load_scan(scans[0], 1)
    predictor = Predictor.from_bundle(bundle, PredictOptions(precision="fp32"))
    prepared, grid = predictor.prepare(image, case_id, geometry.spacing_zyx)
    assert prepared.dtype == np.float32 and np.array_equal(prepared, cached.image())
    assert grid.properties().items() <= cached.properties.items()
    label, _ = predictor.restore(np.ones((1, *prepared.shape[1:]), np.float32), grid)
    inside = np.zeros(label.shape, dtype=bool)
    inside[grid.region] = True  # the non-zero box: all of a sarcoma CT, a brain MR's head
    assert label.shape == image.shape[1:] and label[inside].all() and not label[~inside].any()
