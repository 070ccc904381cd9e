"""The latent-diffusion (DiffTumor) engine on real scans: crops around the real sarcoma of STS_019
train both stages; tumours go into TotalSegmentator's example liver (label 5). Tiny sizes only:
16^3 crops to train, the tiny preset's 32^3 to synthesise, 2-4 diffusion steps."""

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import BRAIN, CASES, SARCOMA
from safetensors.torch import load_file
from scipy import ndimage

from tumorfm.errors import TumorFMError
from tumorfm.synth import procedural, reach_mm
from tumorfm.synth.diffusion import (
    DiffusionConfig,
    DiffusionEngine,
    SynthModel,
    build_autoencoder,
    build_diffusion,
    load_synth_bundle,
    parameters,
    save_synth_bundle,
)
from tumorfm.synth.train_diffusion import train_autoencoder, train_diffusion, tumour_crops

LIVER, SARCOMA_LABEL = 5, 1


def _read(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(image.GetSpacing())[::-1]


def _seeded(build, config, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(config).eval()


@pytest.fixture(scope="module")
def ct():
    image, spacing = _read(CASES / "totalseg_example_ct_sm.nii.gz")
    labels, _ = _read(CASES / "totalseg_example_seg.nii.gz")
    return image, labels == LIVER, spacing


@pytest.fixture(scope="module")
def sarcoma():
    image, spacing = _read(SARCOMA / "imagesTr" / "STS_019_0000.nii.gz")
    label, _ = _read(SARCOMA / "labelsTr" / "STS_019.nii.gz")
    return image, label, spacing


@pytest.fixture(scope="module")
def crops(sarcoma):
    image, label, spacing = sarcoma
    return tumour_crops(image, label, SARCOMA_LABEL, 16, 4, seed=0, spacing_zyx=spacing)


@pytest.fixture(scope="module")
def engine():
    """An untrained tiny model (weights of torch seed 0): the engine's guarantees do not depend
    on training. Warmed up once, so the timing test measures the tumours, not the first call."""
    config = DiffusionConfig()
    model = SynthModel(_seeded(build_autoencoder, config), _seeded(build_diffusion, config), config)
    made = DiffusionEngine(model, steps=2, early_steps=2)
    made.synthesise(
        np.zeros((8, 8, 8), np.int16), np.ones((8, 8, 8)), (2, 2, 2), seed=0, size="tiny"
    )
    return made


def test_tiny_trains_on_a_cpu_and_paper_has_difftumors_size():
    tiny, paper = DiffusionConfig(), DiffusionConfig(preset="paper")
    ae, unet = build_autoencoder(tiny), build_diffusion(tiny)
    assert parameters(ae) < 500_000 and parameters(unet) < 2_500_000
    with torch.no_grad():
        z = ae.encode(torch.zeros(1, 1, 32, 32, 32))[0]
    assert z.shape == (1, 4, 8, 8, 8)  # 4x down-sampling
    with torch.device("meta"):
        big_ae, big_unet = build_autoencoder(paper), build_diffusion(paper)
        z = big_ae.encode(torch.zeros(1, 1, 96, 96, 96))[0]
    assert paper.crop == 96 and z.shape == (1, 8, 24, 24, 24)  # DiffTumor: 96^3 -> 8 x 24^3
    assert big_unet.conv_in.conv.in_channels == 17  # noisy latent 8 + context latent 8 + mask 1
    assert parameters(big_unet) > 10 * parameters(unet)
    assert parameters(big_ae) + parameters(big_unet) > 20_000_000


def test_config_refuses_unknown_keys_and_bad_values_in_one_line():
    config = DiffusionConfig.from_dict({"preset": "tiny", "modality": "mr", "steps": 10})
    assert config.modality == "MR" and config.window == (0.5, 99.5) and config.crop == 32
    assert DiffusionConfig.from_dict(config.to_dict()) == config
    for data, fragment in [
        ({"presett": "tiny"}, "unknown key 'presett'"),
        ({"preset": "huge"}, "preset 'huge'"),
        ({"crop": 20}, "crop 20"),
        ({"modality": "PET"}, "modality 'PET'"),
        ({"window": [250, -200]}, "window"),
        ({"early_steps": 0}, "early_steps 0"),
    ]:
        with pytest.raises(TumorFMError, match=fragment) as error:
            DiffusionConfig.from_dict(data, source="cfg.json")
        assert str(error.value).startswith("cfg.json: ") and "\n" not in str(error.value)


def test_crops_are_cut_around_the_real_sarcoma(sarcoma, crops):
    image, label, spacing = sarcoma
    images, masks = crops
    assert images.shape == masks.shape == (4, 16, 16, 16) and masks.dtype == bool
    real = float(np.median(image[label == SARCOMA_LABEL]))
    for crop, mask in zip(images, masks):
        assert mask.any() and (~mask).any()  # the tumour and some context around it
        assert abs(float(np.median(crop[mask])) - real) < 15  # HU of the real tumour
        centre = np.argwhere(mask).mean(axis=0)
        assert np.all(np.abs(centre - 7.5) < 4)  # near the middle of the crop
    with pytest.raises(TumorFMError, match="no voxel of value 7"):
        tumour_crops(image, label, 7, 16, 1, seed=0)


def test_one_step_of_each_stage_changes_the_weights_and_stays_finite(crops, tmp_path):
    config = DiffusionConfig(crop=16)
    ae = train_autoencoder(
        crops[0], config, tmp_path / "ae", 1, seed=3, adversarial_weight=0.1, log_every=1
    )
    before = _seeded(build_autoencoder, config, 3).state_dict()
    after = ae.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    (row,) = [json.loads(x) for x in (tmp_path / "ae" / "log.jsonl").read_text().splitlines()]
    assert row["step"] == 1 and {"l1", "kl", "generator", "discriminator"} <= set(row)
    assert all(np.isfinite(v) for v in row.values())

    model = train_diffusion(crops, ae, config, tmp_path / "diffusion", 1, seed=3, log_every=1)
    before = _seeded(build_diffusion, config, 3).state_dict()
    after = model.diffusion.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert np.isfinite(model.config.latent_scale) and model.config.latent_scale > 0
    assert all(
        torch.equal(ae.state_dict()[k], v) for k, v in model.autoencoder.state_dict().items()
    )


def _weights(folder):
    return load_file(str(folder / "bundle" / "model.safetensors"))


def test_a_killed_run_resumes_to_the_same_weights(crops, ct, tmp_path):
    config = DiffusionConfig(crop=16)
    args = dict(batch=1, adversarial_weight=0.1, log_every=2)
    whole = train_autoencoder(crops[0], config, tmp_path / "whole", 4, seed=5, **args)
    train_autoencoder(crops[0], config, tmp_path / "split", 2, seed=5, **args)  # killed after 2
    halfway = _weights(tmp_path / "split")
    log = tmp_path / "split" / "log.jsonl"
    with open(log, "a") as stream:  # killed after logging step 3, before saving its state
        stream.write(json.dumps({"step": 3, "loss": 1.0}) + "\n")
    with pytest.raises(TumorFMError, match="already holds a run"):
        train_autoencoder(crops[0], config, tmp_path / "split", 4, seed=5, **args)
    with pytest.raises(TumorFMError, match="seed=5"):
        train_autoencoder(crops[0], config, tmp_path / "split", 4, seed=6, resume=True, **args)
    train_autoencoder(crops[0], config, tmp_path / "split", 4, seed=5, resume=True, **args)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], halfway[k]) for k in a)  # the comparison can fail
    assert [json.loads(row)["step"] for row in log.read_text().splitlines()] == [2, 4]

    train_diffusion(crops, whole, config, tmp_path / "d_whole", 4, seed=1, log_every=2)
    train_diffusion(crops, whole, config, tmp_path / "d_split", 2, seed=1, log_every=2)
    halfway = _weights(tmp_path / "d_split")
    train_diffusion(crops, whole, config, tmp_path / "d_split", 4, seed=1, resume=True, log_every=2)
    a, b = _weights(tmp_path / "d_whole"), _weights(tmp_path / "d_split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], halfway[k]) for k in a)

    # the trained bundle drives the engine end to end (a 16^3 model on the real liver)
    image, liver, spacing = ct
    made = DiffusionEngine(load_synth_bundle(tmp_path / "d_whole" / "bundle", modality="CT"))
    out = made.synthesise(image, liver, spacing, seed=0, size="small")
    assert out.tumour.any() and not (out.tumour & ~liver).any()
    assert not ((out.image != image) & _far(out.tumour, spacing, False)).any()


def _bundle(tmp_path):
    config = DiffusionConfig()
    ae, unet = _seeded(build_autoencoder, config, 1), _seeded(build_diffusion, config, 2)
    return save_synth_bundle(tmp_path / "bundle", ae, unet, config), ae, unet, config


def test_bundle_round_trip_keeps_every_weight(tmp_path):
    folder, ae, unet, config = _bundle(tmp_path)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["kind"] == "tumorfm-synthesis" and meta["format_version"] == 1
    assert meta["modality"] == "CT" and meta["preset"] == "tiny" and meta["crop"] == 32
    loaded = load_synth_bundle(folder, modality="ct")
    assert loaded.config == config
    for mine, theirs in [(ae, loaded.autoencoder), (unet, loaded.diffusion)]:
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stage1 = save_synth_bundle(tmp_path / "stage1", ae, None, config)
    assert load_synth_bundle(stage1).diffusion is None
    with pytest.raises(TumorFMError, match="stage 1"):
        DiffusionEngine(load_synth_bundle(stage1))


def test_bundle_refusals_name_the_file_in_one_line(tmp_path):
    from tumorfm.model.bundle import save_bundle
    from tumorfm.model.presets import create_model

    folder, *_ = _bundle(tmp_path)
    config, weights = folder / "config.json", folder / "model.safetensors"
    meta = json.loads(config.read_text())
    segmentation = save_bundle(
        tmp_path / "seg", create_model("tsfm-tiny", patch_size=(32,) * 3), ["tumour"], ["CT"]
    )
    cases = [(segmentation, "a segmentation bundle", "seg/config.json")]
    cases += [(folder, "MR", "bundle/config.json")]  # asked for MR: a modality mismatch
    for case, fragment, named in cases:
        with pytest.raises(TumorFMError, match=fragment) as error:
            load_synth_bundle(case, modality="MR" if case == folder else None)
        assert named in str(error.value) and "\n" not in str(error.value)
    config.write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(TumorFMError, match="format version 2"):
        load_synth_bundle(folder)
    config.write_text(json.dumps(meta))
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(TumorFMError, match="model.safetensors: truncated"):
        load_synth_bundle(folder)
    weights.unlink()
    with pytest.raises(TumorFMError, match="model.safetensors: missing"):
        load_synth_bundle(folder)
    config.write_text(json.dumps({**meta, "config": {**meta["config"], "latent_channels": 8}}))
    weights.write_bytes(good)  # weights of 4 latent channels, config of 8
    with pytest.raises(TumorFMError, match="model.safetensors: tensor"):
        load_synth_bundle(folder)
    with pytest.raises(TumorFMError, match="not a synthesis bundle folder"):
        load_synth_bundle(tmp_path / "nothing")


def _far(tumour, spacing, mass_effect):
    return ndimage.distance_transform_edt(~tumour, sampling=spacing) > reach_mm(mass_effect)


@pytest.mark.parametrize("mass_effect", [False, True])
def test_synthesise_is_seeded_local_and_in_the_organ(ct, engine, mass_effect):
    image, liver, spacing = ct
    kept = image.copy()
    args = dict(seed=4, count=2, size="mixed", mass_effect=mass_effect)
    first = engine.synthesise(image, liver, spacing, **args)
    again = engine.synthesise(image, liver, spacing, **args)
    other = engine.synthesise(image, liver, spacing, **{**args, "seed": 5})
    assert np.array_equal(first.image, again.image) and first.tumours == again.tumours
    assert not np.array_equal(first.image, other.image)
    assert np.array_equal(image, kept)
    assert first.image.dtype == image.dtype == np.int16 and first.image.shape == image.shape
    assert first.tumour.any() and not (first.tumour & ~liver).any()
    assert sum(t.voxels for t in first.tumours) >= first.tumour.sum() and len(first.tumours) == 2
    changed = first.image != image
    assert changed[first.tumour].any()
    assert not (changed & ~liver).any()  # only the organ changes...
    assert not (changed & _far(first.tumour, spacing, mass_effect)).any()  # ...near the tumour


def test_float_scans_stay_float_and_the_texture_is_the_models(ct, engine):
    image, liver, spacing = ct
    scan = image.astype(np.float32)
    out = engine.synthesise(scan, liver, spacing, seed=2, size="small")
    assert out.image.dtype == np.float32
    # another model, same seed: the same mask (procedural's draws), another texture
    config = DiffusionConfig()
    ae, unet = _seeded(build_autoencoder, config, 9), _seeded(build_diffusion, config, 9)
    their_engine = DiffusionEngine(SynthModel(ae, unet, config), steps=2, early_steps=2)
    theirs = their_engine.synthesise(scan, liver, spacing, seed=2, size="small")
    assert np.array_equal(out.tumour, theirs.tumour)
    assert not np.array_equal(out.image[out.tumour], theirs.image[out.tumour])


def test_mr_crops_are_scaled_by_their_own_percentiles(tmp_path):
    """An MR model on a real glioblastoma T1: no absolute scale, each crop's percentiles."""
    dataset = json.loads((BRAIN / "dataset.json").read_text())
    image, spacing = _read(BRAIN / dataset["training"][0]["image"])
    brain = ndimage.binary_erosion(image > np.percentile(image[image > 0], 10), iterations=2)
    config = DiffusionConfig(modality="MR")
    model = SynthModel(_seeded(build_autoencoder, config), _seeded(build_diffusion, config), config)
    folder = save_synth_bundle(tmp_path / "mr", model.autoencoder, model.diffusion, config)
    with pytest.raises(TumorFMError, match="a synthesis model for MR, not CT"):
        load_synth_bundle(folder, modality="CT")
    made = DiffusionEngine(load_synth_bundle(folder, modality="MR"), early_steps=2)
    out = made.synthesise(image, brain, spacing, seed=0, modality="MR", size="small")
    assert out.image.dtype == image.dtype and out.tumour.any() and not (out.tumour & ~brain).any()
    changed = out.image != image
    assert changed[out.tumour].any() and not (changed & _far(out.tumour, spacing, False)).any()
    # the tumour lies within the range of the brain's own intensities (its crop's percentiles)
    low, high = np.percentile(image[brain], [0.1, 99.9])
    assert low - 1 <= out.image[out.tumour].mean() <= high + 1


def test_few_steps_for_early_tumours_and_the_full_schedule_for_larger_ones(ct, engine):
    image, liver, spacing = ct
    calls = {"main": 0, "early": 0}
    main = engine.model
    early = SynthModel(main.autoencoder, _seeded(build_diffusion, main.config, 7), main.config)
    hooks = []
    for key, model in (("main", main), ("early", early)):
        count = lambda *_, key=key: calls.__setitem__(key, calls[key] + 1)  # noqa: E731
        hooks.append(model.diffusion.register_forward_hook(count))
    try:
        two = DiffusionEngine(main, early=early, steps=3, early_steps=2)
        two.synthesise(image, liver, spacing, seed=1, size="tiny")
        assert calls == {"main": 0, "early": 2}  # the early model, in the few steps
        two.synthesise(image, liver, spacing, seed=1, size="medium")
        assert calls == {"main": 3, "early": 2}  # the main one, in the full schedule
        one = DiffusionEngine(main, steps=3, early_steps=2)
        one.synthesise(image, liver, spacing, seed=1, size="small")
        assert calls == {"main": 5, "early": 2}  # without an early model: main, few steps
    finally:
        for hook in hooks:
            hook.remove()


def test_under_ten_seconds_per_tumour_with_the_tiny_preset(ct, engine):
    image, liver, spacing = ct
    start = time.perf_counter()
    out = engine.synthesise(image, liver, spacing, seed=8, count=3, size="small")
    seconds = (time.perf_counter() - start) / 3
    assert len(out.tumours) == 3 and seconds < 10, seconds


def test_bad_input_is_refused_as_the_procedural_engine_refuses_it(ct, engine):
    image, liver, spacing = ct
    nan = image.astype(np.float32)
    nan[0, 0, 0] = np.nan
    tiny_organ = np.zeros_like(liver)
    tiny_organ[10, 50, 50] = True
    for args, options in [
        ((image, np.zeros_like(liver), spacing), {}),
        ((image, liver[:-1], spacing), {}),
        ((image, liver, (1, 1)), {}),
        ((nan, liver, spacing), {}),
        ((image, tiny_organ, spacing), {"size": "large"}),
        ((image, liver, spacing), {"size": "huge"}),
        ((image, liver, spacing), {"count": 0}),
        ((image, liver, spacing), {"seed": -1}),
        ((image, liver, spacing), {"modality": "PET"}),
    ]:
        options = {"seed": 0, **options}
        with pytest.raises(TumorFMError) as theirs:
            procedural.synthesise(*args, **options)
        with pytest.raises(TumorFMError) as mine:
            engine.synthesise(*args, **options)
        assert str(mine.value) == str(theirs.value) and "\n" not in str(mine.value)
    with pytest.raises(TumorFMError, match="modality MR: a CT model"):
        engine.synthesise(image, liver, spacing, seed=0, modality="MR")
