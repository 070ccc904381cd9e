"""`tumorfm model summary`: parameters per part, bottleneck tokens, multiply-adds and activation
memory of a preset, computed on the `meta` device, so even the 1.6B model costs no memory.

Activation memory is what autograd saves for the backward pass (float32, one sample), counted with
saved-tensor hooks during a meta forward. With checkpointing, only the inputs of each checkpointed
segment stay alive, plus the largest segment while it is recomputed in the backward pass.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from tumorfm.model.network import TSFM, TSFMConfig


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    counts = {
        name: sum(p.numel() for module in modules for p in module.parameters())
        for name, modules in model.parts().items()
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def _segments(model: TSFM) -> list[torch.nn.Module]:
    """The modules that activation checkpointing wraps."""
    layers = list(getattr(model.bottleneck, "layers", []))
    return [*model.encoder, *model.decoder, *layers]


class _SavedTensorCounter:
    """Bytes autograd saves, in total and per checkpointable segment (each tensor once)."""

    def __init__(self, segments: list[torch.nn.Module]):
        self.seen: dict[int, torch.Tensor] = {}
        self.total = 0
        self.per_segment = [0] * len(segments)
        self.active: list[int] = []
        for index, segment in enumerate(segments):
            segment.register_forward_pre_hook(lambda *_, i=index: self._enter(i))
            segment.register_forward_hook(lambda *_: self._leave())

    def _enter(self, index: int) -> None:
        self.active.append(index)

    def _leave(self) -> None:
        self.active.pop()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in self.seen:
            self.seen[id(tensor)] = tensor  # keep it referenced so ids stay unique
            size = tensor.numel() * tensor.element_size()
            self.total += size
            if self.active:
                self.per_segment[self.active[-1]] += size
        return tensor


def _meta_forward(config: TSFMConfig, count_flops: bool) -> tuple[int, _SavedTensorCounter]:
    with torch.device("meta"):
        model = TSFM(config)
        x = torch.empty(1, config.in_channels, *config.patch_size)
    counter = _SavedTensorCounter(_segments(model))
    flops = FlopCounterMode(display=False)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        if count_flops:
            with flops:
                model(x)
        else:
            model(x)
    return flops.get_total_flops() if count_flops else 0, counter


def summarize(config: TSFMConfig) -> dict:
    """Parameters per part, bottleneck grid and tokens, MACs per forward, activation memory."""
    plain = replace(config, checkpoint_stages=False, checkpoint_transformer=False)
    with torch.device("meta"):
        parameters = count_parameters(TSFM(plain))
    flops, counter = _meta_forward(plain, count_flops=True)
    checkpointed = replace(config, checkpoint_stages=True, checkpoint_transformer=True)
    _, outside = _meta_forward(checkpointed, count_flops=False)
    grid = config.bottleneck_grid
    return {
        "parameters": parameters,
        "patch_size": list(config.patch_size),
        "stem_stride": config.stem_stride,
        "strides": [list(s) for s in config.strides],
        "bottleneck_grid": list(grid),
        "tokens": int(grid[0] * grid[1] * grid[2]),
        "macs_per_forward": flops // 2,
        "activation_bytes": counter.total,
        "activation_bytes_checkpointed": outside.total + max(counter.per_segment, default=0),
    }


def format_summary(name: str, summary: dict) -> str:
    p = summary["parameters"]
    gib = 2**30
    lines = [
        f"{name}: {p['total']:,} parameters ({p['total'] / 1e6:,.2f}M) at patch "
        f"{'x'.join(map(str, summary['patch_size']))}"
    ]
    for part in ("encoder", "bottleneck", "decoder", "heads"):
        lines.append(f"  {part:<11} {p[part]:>15,}  ({100 * p[part] / p['total']:.1f}%)")
    grid = "x".join(map(str, summary["bottleneck_grid"]))
    if summary["stem_stride"] > 1:
        lines.append(f"  stem stride {summary['stem_stride']}: every stage at half resolution")
    lines += [
        f"  bottleneck grid {grid} = {summary['tokens']} tokens",
        f"  multiply-adds per forward (1 sample): {summary['macs_per_forward'] / 1e9:,.1f} G",
        f"  activation memory per sample (float32): {summary['activation_bytes'] / gib:,.2f} GiB"
        f" without checkpointing, {summary['activation_bytes_checkpointed'] / gib:,.2f} GiB with",
    ]
    return "\n".join(lines)
