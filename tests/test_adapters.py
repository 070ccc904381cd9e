"""Parameter-efficient fine-tuning: adapters and LoRA start as the identity, load pretrained
weights by name, survive a bundle round trip; each mode trains what it says and nothing else."""

import json

import pytest
import torch
from torch import nn

from tumorfm.model import TSFMConfig, create_model
from tumorfm.model.adapters import (
    MODES,
    Adapter,
    LoRALinear,
    count_trainable,
    freeze,
    trainable_parameters,
)
from tumorfm.model.bundle import load_bundle, save_bundle

PATCH = (16, 32, 32)
ADAPTER, RANK = 8, 4


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return create_model("tsfm-tiny", in_channels=1, num_classes=2, patch_size=PATCH, **overrides)


def _numel(*modules):
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 1, *PATCH, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "settings", [dict(adapter_dim=ADAPTER), dict(lora_rank=RANK), dict(adapter_dim=8, lora_rank=4)]
)
def test_fresh_modules_leave_the_pretrained_function_unchanged(settings, x):
    plain = _model(seed=0).eval()
    tuned = _model(seed=1, **settings).eval()  # another seed: every shared weight must load
    result = tuned.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(
        ".adapter." in k or k.endswith((".lora_a", ".lora_b")) for k in result.missing_keys
    )
    assert tuned.config.adapter_dim == settings.get("adapter_dim", 0)
    with torch.no_grad():
        assert torch.equal(tuned(x), plain(x))


def test_plain_network_is_unchanged_by_the_new_settings():
    """adapter_dim = lora_rank = 0 builds exactly today's modules and state-dict keys."""
    model = _model()
    assert not any(isinstance(m, Adapter | LoRALinear) for m in model.modules())
    assert all(".adapter" not in k and ".lora_" not in k for k in model.state_dict())
    layer = model.bottleneck.layers[0]
    assert type(layer.attn.qkv) is nn.Linear and layer.adapter is None


def test_old_bundle_config_without_the_new_keys_still_loads():
    settings = _model(adapter_dim=ADAPTER).config.to_dict()
    for key in ("adapter_dim", "lora_rank", "lora_alpha"):
        settings.pop(key)
    config = TSFMConfig.from_dict(settings)
    assert (config.adapter_dim, config.lora_rank, config.lora_alpha) == (0, 0, 16.0)
    with pytest.raises(ValueError, match="transformer"):
        TSFMConfig(transformer_depth=0, lora_rank=4)


def test_trainable_counts_per_mode_are_exact_and_ordered():
    model = _model(adapter_dim=ADAPTER, lora_rank=RANK)
    c = model.config
    width, hidden, layers = c.transformer_width, c.transformer_mlp, c.transformer_depth
    heads = _numel(model.head, model.aux_heads)
    adapter = layers * (2 * width * ADAPTER + ADAPTER + width)
    # r x (in + out) per wrapped linear: qkv, attention proj, MLP fc, MLP proj
    lora = layers * RANK * ((width + 3 * width) + 2 * width + 2 * (width + hidden))
    total = _numel(model)
    expected = {
        "full": total,
        "decoder": total - _numel(model.stem, model.encoder),
        "head": heads,
        "adapter": adapter + heads,
        "lora": lora + heads,
    }
    counts = {}
    for mode in MODES:
        chosen = freeze(model, mode)
        counts[mode] = count_trainable(model)
        assert counts[mode] == (expected[mode], total), mode
        assert sum(p.numel() for p in chosen) == expected[mode]
        assert sum(p.numel() for p in trainable_parameters(model, mode)) == expected[mode]
    trained = {mode: n for mode, (n, _) in counts.items()}
    assert trained["head"] < trained["adapter"] < trained["decoder"] < trained["full"]
    assert trained["head"] < trained["lora"] < trained["decoder"]
    # freezing is not sticky: going back to full unfreezes everything
    freeze(model, "full")
    assert count_trainable(model) == (total, total)


def test_decoder_mode_step_moves_decoder_not_encoder(x):
    model = _model().train()
    optimizer = torch.optim.SGD(freeze(model, "decoder"), lr=0.1)
    encoder = [p.detach().clone() for p in [*model.stem.parameters(), *model.encoder.parameters()]]
    decoder = [p.detach().clone() for p in model.decoder.parameters()]
    model(x).square().mean().backward()
    optimizer.step()
    after = [*model.stem.parameters(), *model.encoder.parameters()]
    assert all(p.grad is None for p in after)
    assert all(torch.equal(a, b) for a, b in zip(after, encoder))
    changed = [not torch.equal(a, b) for a, b in zip(model.decoder.parameters(), decoder)]
    assert sum(changed) > len(changed) // 2


def test_lora_step_moves_only_lora_and_heads(x):
    model = _model(lora_rank=RANK).train()
    optimizer = torch.optim.SGD(freeze(model, "lora"), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(x).square().mean().backward()
    optimizer.step()
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.endswith(".lora_b") or k.startswith("head.") for k in moved)
    assert any(k.endswith(".lora_b") for k in moved)  # B gets a gradient though it starts at 0


def test_lora_merge_equals_the_wrapped_layer():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 20), rank=3, alpha=6.0)
    with torch.no_grad():
        layer.lora_b.normal_()  # a trained update, not the zero start
    inputs = torch.randn(5, 12)
    merged = layer.merge()
    assert type(merged) is nn.Linear and merged.weight.shape == (20, 12)
    with torch.no_grad():
        assert not torch.allclose(layer(inputs), nn.functional.linear(inputs, layer.weight))
        torch.testing.assert_close(merged(inputs), layer(inputs))
    assert set(layer.state_dict()) == {"weight", "bias", "lora_a", "lora_b"}


def test_adapter_is_identity_until_trained():
    adapter = Adapter(16, 4)
    inputs = torch.randn(3, 7, 16)
    assert torch.equal(adapter(inputs), inputs)
    with torch.no_grad():
        adapter.up.weight.normal_()
    assert not torch.equal(adapter(inputs), inputs)


def test_bundle_round_trip_keeps_adapters_and_lora(tmp_path, x):
    model = _model(adapter_dim=ADAPTER, lora_rank=RANK).eval()
    with torch.no_grad():  # move them off the identity, so the round trip has to carry them
        for name, p in model.named_parameters():
            if ".adapter.up" in name or name.endswith(".lora_b"):
                p.normal_(std=0.1)
    path = save_bundle(tmp_path / "bundle", model, ["liver", "liver_tumour"], ["CT"], "tsfm-tiny")
    meta = json.loads((path / "config.json").read_text())
    assert meta["overrides"] == {"adapter_dim": ADAPTER, "lora_rank": RANK}
    loaded = load_bundle(path).model
    assert (loaded.config.adapter_dim, loaded.config.lora_rank) == (ADAPTER, RANK)
    assert sum(isinstance(m, Adapter) for m in loaded.modules()) == model.config.transformer_depth
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        plain = _model().eval()  # the same weights without adapters and LoRA differ
        plain.load_state_dict(model.state_dict(), strict=False)
        assert not torch.allclose(loaded(x), plain(x))


def test_unknown_mode_and_missing_modules_raise():
    model = _model()
    with pytest.raises(ValueError, match="full, decoder, head, adapter, lora"):
        freeze(model, "bias")
    with pytest.raises(ValueError, match="adapter_dim > 0"):
        freeze(model, "adapter")
    with pytest.raises(ValueError, match="lora_rank > 0"):
        trainable_parameters(model, "lora")
    assert count_trainable(model)[0] == count_trainable(model)[1]  # a failed freeze changes nothing
