"""Parameter-efficient fine-tuning: bottleneck adapters, LoRA, and which parameters train.

A pretrained TSFM is adapted to a new tumour task by training only a small part of it:

    full      every parameter
    decoder   all but the CNN encoder (stem + encoder stages are frozen)
    head      only the 1x1x1 output heads (a linear probe of the pretrained features)
    adapter   only the bottleneck adapters (Houlsby et al. 2019, AdaptFormer) + the heads
    lora      only the low-rank LoRA updates of the transformer's linears (Hu et al. 2021) + heads

Adapters and LoRA start as the identity (their last factor is zero), so a network built with them
and loaded with pretrained weights computes exactly what the pretrained network computes; only
training moves it away.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("full", "decoder", "head", "adapter", "lora")


class Adapter(nn.Module):
    """x + up(GELU(down(x))): a residual bottleneck, the identity while `up` is zero."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.down = nn.Linear(width, dim)
        self.up = nn.Linear(dim, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


class LoRALinear(nn.Module):
    """base(x) + (alpha / rank) * B(A(x)), with the base weights frozen in `lora` mode.

    The base layer's parameters become this module's own `weight` and `bias`, so the state-dict
    names stay those of the plain nn.Linear (`...qkv.weight`, `...qkv.bias`) and pretrained weights
    load by name; the update adds `...qkv.lora_a` (rank, in) and `...qkv.lora_b` (out, rank).
    A starts Kaiming-uniform (as nn.Linear), B at zero: the layer starts as `base`.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float = 16.0):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.weight = base.weight
        self.bias = base.bias
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(x, self.lora_a), self.lora_b)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain nn.Linear with W + scale * B @ A: the tuned layer without the LoRA cost."""
        factory = dict(device=self.weight.device, dtype=self.weight.dtype)
        merged = nn.Linear(self.in_features, self.out_features, self.bias is not None, **factory)
        merged.weight.copy_(self.weight + self.scale * self.lora_b @ self.lora_a)
        if self.bias is not None:
            merged.bias.copy_(self.bias)
        return merged

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha}"


def _parameters(*modules: nn.Module) -> list[nn.Parameter]:
    return [p for module in modules for p in module.parameters()]


def trainable_parameters(model: nn.Module, mode: str) -> list[nn.Parameter]:
    """The parameters a TSFM trains in `mode` (one of MODES), in `model.parameters()` order."""
    if mode not in MODES:
        raise ValueError(f"unknown fine-tuning mode '{mode}'; choose one of {', '.join(MODES)}")
    heads = _parameters(model.head, model.aux_heads)
    if mode == "full":
        chosen = list(model.parameters())
    elif mode == "decoder":
        frozen = {id(p) for p in _parameters(model.stem, model.encoder)}
        chosen = [p for p in model.parameters() if id(p) not in frozen]
    elif mode == "head":
        chosen = heads
    elif mode == "adapter":
        adapters = [m for m in model.modules() if isinstance(m, Adapter)]
        if not adapters:
            raise ValueError("mode 'adapter' needs a network built with adapter_dim > 0")
        chosen = _parameters(*adapters) + heads
    else:
        loras = [m for m in model.modules() if isinstance(m, LoRALinear)]
        if not loras:
            raise ValueError("mode 'lora' needs a network built with lora_rank > 0")
        chosen = [p for m in loras for p in (m.lora_a, m.lora_b)] + heads
    keep = {id(p) for p in chosen}
    return [p for p in model.parameters() if id(p) in keep]


def freeze(model: nn.Module, mode: str) -> list[nn.Parameter]:
    """Set requires_grad for `mode`: True on its trainable parameters, False on every other.
    Returns the trainable ones (hand these to the optimizer)."""
    chosen = trainable_parameters(model, mode)
    keep = {id(p) for p in chosen}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return chosen


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


__all__ = [
    "MODES",
    "Adapter",
    "LoRALinear",
    "count_trainable",
    "freeze",
    "trainable_parameters",
]
