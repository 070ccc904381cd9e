"""Model bundles: safetensors + config.json, never pickle; mismatches refused clearly."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tumorfm.errors import TumorFMError
from tumorfm.model import create_model
from tumorfm.model.bundle import load_bundle, read_bundle_config, save_bundle

PATCH = (32, 32, 32)
CLASSES = ["liver", "liver_tumour"]


@pytest.fixture
def bundle(tmp_path):
    torch.manual_seed(0)
    model = create_model(
        "tsfm-tiny", in_channels=1, num_classes=2, patch_size=PATCH, blocks=2
    ).eval()
    plan = {"target_spacing_zyx": [2.5, 1.5, 1.5], "patch_size": list(PATCH)}
    path = save_bundle(
        tmp_path / "bundle",
        model,
        CLASSES,
        ["CT"],
        preset="tsfm-tiny",
        plan=plan,
        paint_order=["liver", "liver_tumour"],
    )
    return path, model


def test_round_trip_gives_identical_outputs(bundle):
    path, model = bundle
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    meta = read_bundle_config(path)
    assert meta["overrides"] == {"blocks": 2} and meta["modalities"] == ["CT"]
    assert meta["paint_order"] == CLASSES and meta["plan"]["patch_size"] == list(PATCH)
    loaded = load_bundle(path)
    x = torch.randn(1, 1, *PATCH)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.classes == CLASSES and loaded.preset == "tsfm-tiny"


def test_load_at_another_patch(bundle):
    path, _ = bundle
    loaded = load_bundle(path, patch_size=(48, 64, 64))
    assert loaded.model.config.patch_size == (48, 64, 64)
    with torch.no_grad():
        assert loaded.model(torch.randn(1, 1, 48, 64, 64)).isfinite().all()


def test_pickle_checkpoint_is_refused(tmp_path, bundle):
    _, model = bundle
    checkpoint = tmp_path / "model.pth"
    torch.save(model.state_dict(), checkpoint)
    with pytest.raises(TumorFMError, match="pickle checkpoint"):
        load_bundle(checkpoint)


def test_pickle_inside_a_bundle_is_refused(bundle):
    path, model = bundle
    torch.save(model.state_dict(), path / "model.safetensors")
    with pytest.raises(TumorFMError, match="truncated or not a safetensors file"):
        load_bundle(path)


def test_missing_tensor_is_named(bundle):
    path, _ = bundle
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["head.weight"]
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(TumorFMError, match="tensor 'head.weight' missing"):
        load_bundle(path)


def test_mismatched_tensor_is_named(bundle):
    path, _ = bundle
    tensors = load_file(str(path / "model.safetensors"))
    tensors["head.weight"] = torch.zeros(5, 8, 1, 1, 1)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(TumorFMError, match=r"'head.weight' has shape \(5, 8, 1, 1, 1\)"):
        load_bundle(path)


def test_unexpected_tensor_and_bad_config(bundle):
    path, _ = bundle
    tensors = load_file(str(path / "model.safetensors"))
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(TumorFMError, match="unexpected tensor 'extra.weight'"):
        load_bundle(path)
    meta = json.loads((path / "config.json").read_text())
    meta["model"]["widthz"] = 3
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(TumorFMError, match="invalid model config"):
        load_bundle(path)
    (path / "config.json").write_text("{")
    with pytest.raises(TumorFMError, match="not valid JSON"):
        load_bundle(path)


def test_missing_bundle_and_class_count(tmp_path, bundle):
    with pytest.raises(TumorFMError, match="bundle not found"):
        load_bundle(tmp_path / "nope")
    _, model = bundle
    with pytest.raises(ValueError, match="3 class names for 2 output channels"):
        save_bundle(tmp_path / "b2", model, ["a", "b", "c"], ["CT"])


def test_resave_replaces_atomically(bundle):
    path, model = bundle
    save_bundle(path, model, ["organ", "lesion"], ["CT"])
    assert read_bundle_config(path)["classes"] == ["organ", "lesion"]
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
