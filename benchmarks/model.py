"""Training step, side by side: tsfm-small vs nnU-Net v2's residual-encoder U-Net (ResEnc).

One training iteration (forward, BCE loss against a random target, backward; no optimizer step)
of both networks on the same patch, batch, strides and threads, on this CPU. ResEnc is built as
nnU-Net's ResEnc planners build it (blocks per stage 1, 3, 4, 6, 6, 6, one conv per decoder
stage, 3x3x3 kernels, conv bias, InstanceNorm eps 1e-5 affine, LeakyReLU; deep supervision off),
with features min(cap, base * 2**stage), base tsfm-small's first width and the cap chosen for the
parameter count closest to tsfm-small's. Timings are interleaved (drift in machine load hits
both): `--warmup` steps, then `--repeats`; medians, spread and the ratio tumorfm/ResEnc (lower is
better for tumorfm). Peak memory: the peak-RSS increase of a training step, each model in its own
subprocess. Last, multiply-adds per second (FlopCounterMode) against a plain Conv3d fwd+bwd on
this machine, the practical limit.

Run from the repository root in the benchmark environment (it holds both networks):
    make bench-env && .venv-bench/bin/python -m benchmarks.model
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .common import RESULTS, ROOT, parser_for
from .measure import machine

TSFM, RESENC = "tsfm-small", "resenc"
LABELS = {TSFM: TSFM, RESENC: "ResEnc U-Net"}
RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)  # nnUNetPlannerResEnc{M,L,XL}


def tsfm_config(patch):
    from tumorfm.model import preset_config

    return preset_config(TSFM, in_channels=1, num_classes=2, patch_size=patch)


def resenc_strides(patch) -> list[list[int]]:
    return [[1, 1, 1]] + [list(s) for s in tsfm_config(patch).strides]


def build(name: str, patch, widths=None) -> nn.Module:
    """tsfm-small, or ResEnc with `widths` and tsfm-small's strides."""
    if name == TSFM:
        from tumorfm.model import create_model

        return create_model(TSFM, in_channels=1, num_classes=2, patch_size=patch)
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    n = len(widths)
    return ResidualEncoderUNet(  # nnU-Net's ResEnc planners' arch_kwargs
        1, n, list(widths), nn.Conv3d, kernel_sizes=[[3, 3, 3]] * n, strides=resenc_strides(patch),
        n_blocks_per_stage=RESENC_BLOCKS[:n], num_classes=2, n_conv_per_stage_decoder=[1] * (n - 1),
        conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )  # fmt: skip


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def resenc_widths(patch, target: int) -> list[int]:
    """min(cap, base * 2**i) for each of tsfm-small's stages, the cap a multiple of 8."""
    tsfm_widths = tsfm_config(patch).widths
    base, n = tsfm_widths[0], len(tsfm_widths)
    options = [[min(cap, base * 2**i) for i in range(n)] for cap in range(base, base * 2**n, 8)]
    with torch.device("meta"):
        return min(options, key=lambda w: abs(params(build(RESENC, patch, w)) - target))


def inputs(batch: int, patch, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, *patch, generator=g)
    return x, torch.randint(0, 2, (batch, 2, *patch), generator=g).float()


def step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    """One training step as a loop runs it (optimizer.zero_grad() sets grads to None); seconds."""
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    F.binary_cross_entropy_with_logits(model(x).float(), target).backward()
    return time.perf_counter() - started


def macs(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """(forward, forward + backward) multiply-adds = FLOPs / 2 of convs and linear layers."""
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        logits = model(x)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        F.binary_cross_entropy_with_logits(logits.float(), target).backward()
    return forward // 2, (forward + counter.get_total_flops()) // 2


def status_mb(field: str) -> float:
    return int(Path("/proc/self/status").read_text().split(f"{field}:")[1].split()[0]) / 1024


def peak_child(args) -> None:
    """Hidden mode: one model's training steps in a fresh process; peak-RSS increase as JSON.

    The peak is the process's VmHWM, reset to the current RSS before the steps. Not ru_maxrss:
    that also keeps the import peaks and, through exec, the parent's RSS at fork."""
    patch = tuple(args.patch)
    model = build(args._peak, patch, args._widths)
    x, target = inputs(args.batch, patch)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status_mb("VmRSS")
    for _ in range(2):
        step(model, x, target)
    peak = status_mb("VmHWM")
    print(json.dumps({"rss_before_mb": before, "peak_rss_mb": peak, "step_mb": peak - before}))


def peak_memory(name: str, widths) -> dict:
    command = [sys.executable, "-m", "benchmarks.model", *sys.argv[1:], "--_peak", name]
    command += ["--_widths", *map(str, widths or [])]
    result = subprocess.run(command, capture_output=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"peak-memory run of {name} failed:\n{result.stderr.decode()[-2000:]}")
    return {k: round(v, 1) for k, v in json.loads(result.stdout.splitlines()[-1]).items()}


def spread(seconds: list[float]) -> dict:
    return {
        "seconds": [round(s, 4) for s in seconds],
        "median_seconds": round(statistics.median(seconds), 4),
        "min_seconds": round(min(seconds), 4),
        "max_seconds": round(max(seconds), 4),
    }


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64], metavar=("Z", "Y", "X"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--conv-channels", type=int, default=32, help="of the reference Conv3d")
    parser.add_argument("--_peak", help=argparse.SUPPRESS)
    parser.add_argument("--_widths", type=int, nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args._peak:
        return peak_child(args)
    if importlib.util.find_spec("dynamic_network_architectures") is None:
        sys.exit("dynamic_network_architectures is missing: use .venv-bench/bin/python")
    patch, load_before = tuple(args.patch), os.getloadavg()

    widths = {TSFM: list(tsfm_config(patch).widths)}
    widths[RESENC] = resenc_widths(patch, params(build(TSFM, patch)))
    models = {name: build(name, patch, widths[name]) for name in (TSFM, RESENC)}
    counts = {name: params(model) for name, model in models.items()}
    for name in models:
        print(f"{LABELS[name]}: {counts[name]:,} parameters, widths {widths[name]}")
    print(
        f"strides {resenc_strides(patch)}; ResEnc/tsfm params {counts[RESENC] / counts[TSFM]:.3f}"
    )

    x, target = inputs(args.batch, patch)
    times = {name: [] for name in models}
    for _ in range(args.warmup):
        for model in models.values():
            step(model, x, target)
    for repeat in range(args.repeats):  # interleaved
        for name, model in models.items():
            times[name].append(step(model, x, target))
        runs = ", ".join(f"{LABELS[name]} {t[-1]:.2f} s" for name, t in times.items())
        print(f"run {repeat + 1}: {runs}", flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}

    # multiply-adds per second vs a plain Conv3d, as a layer mid-network (input gradient too)
    work = {name: macs(model, x, target) for name, model in models.items()}
    c = args.conv_channels
    conv = nn.Conv3d(c, c, 3, padding=1)
    conv_x = inputs(args.batch, patch, c)[0].requires_grad_()
    conv_target = torch.rand(args.batch, c, *patch)
    conv_work = macs(conv, conv_x, conv_target)
    conv_times = [step(conv, conv_x, conv_target) for _ in range(args.warmup + args.repeats)]
    conv_times = conv_times[args.warmup :]
    conv_rate = conv_work[1] / statistics.median(conv_times)
    rate = {name: work[name][1] / median[name] for name in models}

    del models
    peaks = {name: peak_memory(name, widths[name] if name == RESENC else None) for name in times}
    ratio = {
        "params": round(counts[TSFM] / counts[RESENC], 3),
        "seconds_per_iteration": round(median[TSFM] / median[RESENC], 3),
        "step_memory": round(peaks[TSFM]["step_mb"] / peaks[RESENC]["step_mb"], 3),
    }
    result = {
        "benchmark": "model",
        "machine": machine(load_before),
        "versions": {
            name: version(name)
            for name in ("torch", "tumorfm", "dynamic_network_architectures", "nnunetv2")
        },
        "settings": {
            "patch": list(patch),
            "batch": args.batch,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "threads": args.threads,
            "step": "zero_grad(set_to_none), forward, BCE-with-logits vs random target, backward",
            "strides": resenc_strides(patch),
            "resenc": {
                "blocks_per_stage": RESENC_BLOCKS[: len(widths[RESENC])],
                "decoder_convs": 1,
            },
        },
        "models": {
            name: {
                "params": counts[name],
                "widths": widths[name],
                **spread(times[name]),
                **peaks[name],
                "forward_gmacs": work[name][0] / 1e9,
                "forward_backward_gmacs": work[name][1] / 1e9,
                "gmacs_per_second": rate[name] / 1e9,
                "fraction_of_conv3d": round(rate[name] / conv_rate, 3),
            }
            for name in times
        },
        "ratio_tumorfm_vs_resenc": ratio,
        "conv3d_reference": {
            "layer": f"Conv3d({c}, {c}, 3, padding=1) on {[args.batch, c, *patch]}",
            "forward_backward_gmacs": conv_work[1] / 1e9,
            **spread(conv_times),
            "gmacs_per_second": conv_rate / 1e9,
        },
        "macs_counted": "FlopCounterMode, FLOPs / 2: convs and linear layers (not CPU attention)",
    }
    out = RESULTS / "model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print(
        f"\npatch {'x'.join(map(str, patch))}, batch {args.batch}, threads {args.threads}, "
        f"{args.repeats} repeats after {args.warmup} warm-up"
    )
    print(f"{'':<13}{'params':>11}  s/iter median (min-max)  step MB  GMAC/iter  GMAC/s")
    for name, t in times.items():
        print(
            f"{LABELS[name]:<13}{counts[name]:>11,}  {median[name]:>6.2f} ({min(t):.2f}-"
            f"{max(t):.2f}){peaks[name]['step_mb']:>14.0f}{work[name][1] / 1e9:>11.1f}"
            f"{rate[name] / 1e9:>8.1f}"
        )
    print(
        f"ratio tumorfm/ResEnc: time {ratio['seconds_per_iteration']:.2f}x, step memory "
        f"{ratio['step_memory']:.2f}x, params {ratio['params']:.2f}x (lower is better for tumorfm)"
    )
    print(
        f"Conv3d({c},{c},3) fwd+bwd on {args.batch}x{c}x{'x'.join(map(str, patch))}: "
        f"{conv_rate / 1e9:.1f} GMAC/s; {TSFM} achieves {rate[TSFM] / conv_rate:.0%} of it, "
        f"ResEnc {rate[RESENC] / conv_rate:.0%}"
    )
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
