"""Mixed precision, one rule for training and prediction: bf16 where the device computes it."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from tumorfm.errors import TumorFMError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on a device with bf16 arithmetic (CUDA Ampere+, AVX512-BF16/AMX CPUs)."""
    if precision not in PRECISIONS:
        raise TumorFMError(f"precision '{precision}': choose {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


def autocast(precision: str, device: torch.device):
    """(context manager, resolved precision) for running a model at `precision` on `device`."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return nullcontext(), precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), precision


def store_lower(network: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Keep the convolutions' and linear layers' weights in bf16 (or fp16) for a network that
    only ever runs under autocast at that precision: autocast casts exactly those to it at every
    forward, so the outputs are the same, each forward skips the cast (a sliding window's
    forward per window) and the network holds about half its memory. For inference: an
    optimiser would then step bf16 weights."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is not None:
        for module in network.modules():
            if isinstance(module, (torch.nn.Conv3d, torch.nn.Linear)):
                module.to(dtype)
    return network
