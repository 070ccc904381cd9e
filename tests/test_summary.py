import torch
from conftest import run_cli
from torch.utils.flop_counter import FlopCounterMode

from tumorfm.model import create_model, preset_config
from tumorfm.model.summary import summarize


def test_summary_parts_tokens_macs_memory():
    config = preset_config("tsfm-tiny", 1, 4, (48, 64, 80))
    summary = summarize(config)
    parts = summary["parameters"]
    assert (
        parts["encoder"] + parts["bottleneck"] + parts["decoder"] + parts["heads"] == parts["total"]
    )
    assert summary["bottleneck_grid"] == [3, 4, 5] and summary["tokens"] == 60
    # the meta-device count equals a real forward's count; on the CPU, attention runs in a fused
    # kernel the flop counter does not see, so add its two matmuls per layer by hand. Gradients
    # on: without them one window's convs call oneDNN directly (model.blocks.Conv3d), an op the
    # flop counter has no formula for
    model = create_model("tsfm-tiny", 1, 4, (48, 64, 80))
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, 1, 48, 64, 80))
    layers, width = len(model.bottleneck.layers), config.transformer_width
    attention = layers * 2 * summary["tokens"] ** 2 * width
    assert summary["macs_per_forward"] == counter.get_total_flops() // 2 + attention
    assert 0 < summary["activation_bytes_checkpointed"] < summary["activation_bytes"]


def test_cli_summary_of_the_paper_model_on_meta():
    result = run_cli("model", "summary", "tsfm-1.6b", "--patch", "112", "160", "192")
    assert result.returncode == 0, result.stderr
    assert "7x5x6 = 210 tokens" in result.stdout
    total = int(result.stdout.split(" parameters")[0].split(": ")[1].replace(",", ""))
    assert abs(total - 1.6e9) / 1.6e9 < 0.03
    listing = run_cli("model", "list")
    assert listing.returncode == 0 and "tsfm-1.6b" in listing.stdout


def test_a_strided_stem_shows_in_the_summary_and_costs_an_eighth():
    """tsfm-fast runs compact's first widths at half resolution: the summary says so, and its
    multiply-adds per window are a fraction of tsfm-compact's."""
    fast = summarize(preset_config("tsfm-fast", 1, 1, (48, 96, 96)))
    compact = summarize(preset_config("tsfm-compact", 1, 1, (48, 96, 96)))
    assert fast["stem_stride"] == 2 and compact["stem_stride"] == 1
    assert fast["macs_per_forward"] < compact["macs_per_forward"] / 6
    result = run_cli("model", "summary", "tsfm-fast", "--patch", "48", "96", "96")
    assert result.returncode == 0 and "stem stride 2: every stage at half" in result.stdout


def test_cli_unknown_model_is_one_line():
    from conftest import assert_one_line_error

    assert_one_line_error(run_cli("model", "summary", "tsfm-huge"), "unknown model 'tsfm-huge'")
