"""The TSFM network: shapes, gradients, determinism, presets, position-embedding resize and
activation checkpointing."""

import pytest
import torch

from tumorfm.model import TSFMConfig, create_model, list_models
from tumorfm.model.network import strides_for_patch

PATCH = (32, 32, 32)


def _parameters(name: str) -> int:
    with torch.device("meta"):
        model = create_model(name, in_channels=1, num_classes=1, patch_size=(112, 160, 192))
    return sum(p.numel() for p in model.parameters())


CPU_PRESETS = [name for name in list_models() if _parameters(name) < 150e6]  # run here
COUNTS = {  # name: (low, high) parameters at the paper's patch
    "tsfm-tiny": (0.5e6, 2e6),
    "tsfm-compact": (10e6, 14e6),
    "tsfm-fast": (4e6, 7e6),
    "tsfm-small": (15e6, 25e6),
    "tsfm-base": (80e6, 120e6),
    "tsfm-large": (350e6, 450e6),
    "tsfm-1.6b": (1.60e9 * 0.97, 1.60e9 * 1.03),
}


def _model(name, **overrides):
    torch.manual_seed(0)
    return create_model(name, in_channels=2, num_classes=3, patch_size=PATCH, **overrides)


@pytest.mark.parametrize("name", CPU_PRESETS)
def test_output_shape(name):
    model = _model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 2, *PATCH))
    assert out.shape == (2, 3, *PATCH)


@pytest.mark.parametrize("name", CPU_PRESETS)
def test_every_parameter_receives_a_gradient(name):
    """A parameter without gradient breaks DDP; deep-supervision heads included."""
    model = _model(name, deep_supervision=True).train()
    outputs = model(torch.randn(1, 2, *PATCH))
    stem = model.config.stem_stride  # a strided stem's coarser outputs are coarser still
    assert [o.shape[2:] for o in outputs][:3] == [PATCH, (16 // stem,) * 3, (8 // stem,) * 3]
    sum(o.square().mean() for o in outputs).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert silent == []


@pytest.mark.parametrize("name", CPU_PRESETS)
def test_eval_mode_is_deterministic(name):
    x = torch.randn(1, 2, *PATCH)
    first, second = _model(name).eval(), _model(name).eval()
    with torch.no_grad():
        a, b, c = first(x), first(x), second(x)
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("name", list_models())
def test_parameter_count_on_meta(name):
    low, high = COUNTS[name]  # a new preset needs its size stated here
    with torch.device("meta"):
        model = create_model(name, in_channels=1, num_classes=1, patch_size=(112, 160, 192))
    count = sum(p.numel() for p in model.parameters())
    assert low <= count <= high, f"{name}: {count:,}"
    assert all(p.is_meta for p in model.parameters())


def test_paper_size_is_stu_net_h_plus_vit_b():
    with torch.device("meta"):
        model = create_model("tsfm-1.6b", patch_size=(112, 160, 192))
    bottleneck = model.bottleneck
    layers = sum(p.numel() for p in bottleneck.layers.parameters())
    assert len(bottleneck.layers) == 12 and bottleneck.position.shape[1] == 768
    assert 85.0e6 < layers < 85.1e6  # ViT-Base encoder layers
    assert bottleneck.proj_in.weight.shape == (768, 1536, 3, 3, 3)
    cnn = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in bottleneck.parameters()
    )
    assert abs(cnn - 1.457e9) / 1.457e9 < 0.01  # STU-Net-H's CNN


def test_strides_follow_the_patch():
    assert strides_for_patch((112, 160, 192), 5)[-1] == (1, 2, 2)
    config = TSFMConfig(patch_size=(112, 160, 192), widths=(8, 16, 32, 64, 128, 128))
    assert config.bottleneck_grid == (7, 5, 6)


def test_post_activation_variant_runs():
    model = _model("tsfm-tiny", pre_activation=False).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, *PATCH)).isfinite().all()


def test_fresh_bottleneck_starts_near_identity():
    model = _model("tsfm-small").eval()
    x = torch.randn(1, 256, 4, 4, 4)
    with torch.no_grad():
        change = (model.bottleneck(x) - x).abs().mean() / x.abs().mean()
    assert change < 0.05


def test_position_embedding_resizes_between_patches():
    small = _model("tsfm-tiny").eval()
    state = small.state_dict()
    same = create_model("tsfm-tiny", in_channels=2, num_classes=3, patch_size=PATCH).eval()
    same.load_state_dict(state)
    x = torch.randn(1, 2, *PATCH)
    with torch.no_grad():
        assert torch.equal(same(x), small(x))
    bigger = create_model("tsfm-tiny", in_channels=2, num_classes=3, patch_size=(48, 64, 80))
    bigger.load_state_dict(state)  # the 4x4x4 grid is interpolated to the new one
    assert bigger.bottleneck.position.shape[2:] == (3, 4, 5)
    with torch.no_grad():
        assert bigger.eval()(torch.randn(1, 2, 48, 64, 80)).isfinite().all()


def test_checkpointing_gives_the_same_gradients():
    x = torch.randn(1, 2, *PATCH)
    grads = []
    for flags in ({}, {"checkpoint_stages": True, "checkpoint_transformer": True}):
        model = _model("tsfm-tiny", deep_supervision=True, **flags).train()
        sum(o.square().mean() for o in model(x)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    plain, checkpointed = grads
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


def test_unknown_preset_and_setting():
    with pytest.raises(KeyError, match="unknown model"):
        create_model("tsfm-huge")
    with pytest.raises(ValueError, match="unknown model setting"):
        TSFMConfig.from_dict({"widthz": (8, 16)})
    assert list_models() == [
        "tsfm-tiny", "tsfm-compact", "tsfm-fast", "tsfm-small", "tsfm-base", "tsfm-large",
        "tsfm-1.6b",
    ]  # fmt: skip


def test_strided_stem_runs_at_half_resolution_and_returns_the_input_grid():
    """tsfm-fast's stages see half the grid on each axis, and its logits come back up-sampled
    to any input grid, odd ones included (a sliding window's edge or a small scan)."""
    model = _model("tsfm-fast").eval()
    seen = []
    model.encoder[0].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[2:])))
    with torch.no_grad():
        full = model(torch.randn(1, 2, *PATCH))
        odd = model(torch.randn(1, 2, 33, 30, 31))
    assert seen[0] == tuple(p // 2 for p in PATCH) and full.shape[2:] == PATCH
    assert odd.shape[2:] == (33, 30, 31) and torch.isfinite(odd).all()
    assert model.config.bottleneck_grid == (4, 4, 4)  # 32 -> 16 (stem) -> 8 -> 4, then 2 < 3
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2"):
        TSFMConfig(stem_stride=3)
    with pytest.raises(ValueError, match="divide by the stem stride"):
        TSFMConfig(patch_size=(33, 32, 32), stem_stride=2)


@pytest.mark.parametrize(
    "kernel, stride, padding",
    [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, (1, 2, 2), 0), (3, (1, 2, 2), 1)],
)
def test_one_window_on_a_cpu_runs_onednn_with_the_same_answer(kernel, stride, padding):
    """PyTorch's own rule sends a batch of one 8-channel 32x64x64 window to its slow im2col kernel
    (tumorfm.model.blocks.Conv3d): ours gives it to oneDNN, with nn.Conv3d's answer."""
    from torch.profiler import profile

    from tumorfm.model.blocks import Conv3d

    torch.manual_seed(0)
    conv = Conv3d(8, 8, kernel, stride=stride, padding=padding)
    x = torch.randn(1, 8, 16, 32, 32)
    with torch.inference_mode():
        with profile() as trace:
            ours = conv(x)
        theirs = torch.nn.Conv3d.forward(conv, x)
    kernels = {event.key for event in trace.key_averages()}
    assert "aten::mkldnn_convolution" in kernels and "aten::slow_conv3d_forward" not in kernels
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5)
    for layout in (torch.channels_last_3d, torch.contiguous_format):  # prediction's and training's
        conv.to(memory_format=layout)
        with torch.inference_mode():
            assert torch.allclose(conv(x.to(memory_format=layout)), theirs, atol=1e-5)
    y = conv(x.requires_grad_())  # training: nn.Conv3d's own path, gradients flow
    y.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


def test_a_whole_network_window_never_takes_the_slow_kernel():
    from torch.profiler import profile

    model = create_model("tsfm-tiny", patch_size=(32, 64, 64), num_classes=2).eval()
    with torch.inference_mode(), profile() as trace:
        model(torch.randn(1, 1, 32, 64, 64))
    kernels = {event.key for event in trace.key_averages()}
    assert "aten::slow_conv3d_forward" not in kernels and "aten::mkldnn_convolution" in kernels
