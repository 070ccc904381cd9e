"""Pretrain on real scans: tsfm-small on configs/pools/real-mini.yaml (sarcoma CT, brain MR and
the phantom sites) for about 30 minutes of CPU, and report the validation pseudo-Dice curve per
dataset and class.

    .venv-bench/bin/python -m benchmarks.pretrain_real_mini      # phantoms, preprocess, pretrain

tumorfm runs from the product environment (`--tumorfm`, default .venv/bin/tumorfm).

Writes benchmarks/results/pretrain_real_mini.json (settings, the curve, the run folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .common import RESULTS, ROOT, WORK, add_tumorfm, parser_for
from .measure import machine


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--work", type=Path, default=WORK / "real-mini")
    parser.add_argument("--model", default="tsfm-small")
    parser.add_argument("--patch", type=int, nargs=3, default=(48, 96, 96))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--val-every", type=int, default=2)
    add_tumorfm(parser)
    args = parser.parse_args()
    load_before = os.getloadavg()
    if not (ROOT / "phantoms" / "Dataset901_PhantomLiver").is_dir():
        run([str(args.tumorfm), "phantom", "-o", str(ROOT / "phantoms")])
    cache, out = args.work / "cache", args.work / "run"
    run(
        [
            str(args.tumorfm),
            "preprocess",
            str(ROOT / "configs" / "pools" / "real-mini.yaml"),
            "-o",
            str(cache),
            "--workers",
            "2",
        ]
    )
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    run(
        [
            str(args.tumorfm),
            "pretrain",
            str(cache),
            "-o",
            str(out),
            "--profile",
            "cpu",
            "--model",
            args.model,
            "--patch",
            *map(str, args.patch),
            "--epochs",
            str(args.epochs),
            "--iterations",
            str(args.iterations),
            "--val-every",
            str(args.val_every),
            "--workers",
            "2",
        ]
    )
    minutes = (time.perf_counter() - started) / 60
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    curve = [
        {
            "epoch": r["epoch"],
            "step": r["step"],
            "train_loss": r["train_loss"],
            "val_dice": r["val_dice"],
            "val_mean_dice": r["val_mean_dice"],
        }
        for r in log
        if "val_dice" in r
    ]
    result = {
        "benchmark": "pretrain_real_mini",
        "minutes": round(minutes, 1),
        "machine": machine(load_before),
        "settings": {**vars(args), "work": str(args.work), "profile": "cpu"},
        "iterations_per_second": [r["iterations_per_second"] for r in log],
        "curve": curve,
    }
    path = RESULTS / "pretrain_real_mini.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\n{args.model} on real-mini, {minutes:.0f} min; validation pseudo-Dice:")
    for point in curve:
        print(
            f"  step {point['step']:>5}  mean {point['val_mean_dice']:.3f}  "
            + "; ".join(
                f"{d}: " + ", ".join(f"{c} {v:.2f}" for c, v in per.items())
                for d, per in point["val_dice"].items()
            )
        )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
