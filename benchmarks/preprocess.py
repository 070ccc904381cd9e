"""Preprocessing, side by side: `tumorfm preprocess` vs `nnUNetv2_plan_and_preprocess`.

Same 36 sarcoma CT cases, same machine, same worker count, one run. Both are timed as a user runs
them (the command line, imports included), from an empty output folder, `--repeats` times each;
the medians, the spread and the ratio are printed, and whether the plans agree (target spacing,
patch and batch size exactly; CT foreground intensity statistics within 1%).

Run from the repository root in the benchmark environment (it holds both tools):
    make bench-env && .venv-bench/bin/python -m benchmarks.preprocess
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .common import BIN, DATA, RESULTS, WORK, parser_for, require_nnunet
from .measure import machine
from .nnunet_peer import nnunet_env

TARGET_SPEEDUP = 3.0


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def run_nnunet(data: Path, work: Path, workers: int) -> tuple[float, dict, dict]:
    raw, pre, res = work / "nnUNet_raw", work / "nnUNet_preprocessed", work / "nnUNet_results"
    shutil.rmtree(pre, ignore_errors=True)
    for folder in (raw, pre, res):
        folder.mkdir(parents=True, exist_ok=True)
    link = raw / "Dataset101_SarcomaCT"
    if not link.exists():
        link.symlink_to(data.resolve())
    env = nnunet_env(work, workers)
    seconds = timed(
        [
            str(BIN / "nnUNetv2_plan_and_preprocess"),
            "-d",
            "101",
            "-c",
            "3d_fullres",
            "-np",
            str(workers),
            "-npfp",
            str(workers),
            "--no_pbar",
        ],
        env,
    )
    out = pre / "Dataset101_SarcomaCT"
    plans = json.loads((out / "nnUNetPlans.json").read_text())
    fingerprint = json.loads((out / "dataset_fingerprint.json").read_text())
    return seconds, plans, fingerprint


def run_tumorfm(data: Path, work: Path, workers: int) -> tuple[float, dict, dict]:
    pool = work / "sarcoma-pool.yaml"
    pool.write_text(
        yaml.safe_dump(
            {
                "name": "sarcoma",
                "datasets": [
                    {"name": "sarcoma_ct", "path": str(data.resolve()), "labels": {1: "sarcoma"}}
                ],
            }
        )
    )
    cache = work / "tumorfm_cache"
    shutil.rmtree(cache, ignore_errors=True)
    seconds = timed(
        [
            str(BIN / "tumorfm"),
            "preprocess",
            str(pool),
            "-o",
            str(cache),
            "--workers",
            str(workers),
        ],
        dict(os.environ),
    )
    plan = json.loads((cache / "sarcoma_ct" / "plan.json").read_text())
    fingerprint = json.loads((cache / "sarcoma_ct" / "fingerprint.json").read_text())
    return seconds, plan, fingerprint["fingerprint"]


def compare(nn_plans: dict, nn_fp: dict, plan: dict, fp: dict) -> dict:
    full = nn_plans["configurations"]["3d_fullres"]
    rows = {
        "target_spacing": (full["spacing"], plan["target_spacing_zyx"], 0.0),
        "patch_size": (full["patch_size"], plan["patch_size"], 0.0),
        "batch_size": (full["batch_size"], plan["batch_size"], 0.0),
    }
    theirs = nn_fp["foreground_intensity_properties_per_channel"]["0"]
    ours = fp["foreground_intensity_properties_per_channel"]["0"]
    for key in ("mean", "std", "percentile_00_5", "percentile_99_5"):
        rows[f"ct_{key}"] = (theirs[key], ours[key], 0.01)
    table = {}
    for name, (a, b, tolerance) in rows.items():
        if tolerance == 0.0:
            same = [round(float(x), 6) for x in (a if isinstance(a, list) else [a])] == [
                round(float(x), 6) for x in (b if isinstance(b, list) else [b])
            ]
        else:
            same = abs(float(a) - float(b)) <= tolerance * max(abs(float(a)), 1e-6)
        table[name] = {"nnunet": a, "tumorfm": b, "agree": same}
    return table


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--data", type=Path, default=DATA / "Dataset101_SarcomaCT")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=WORK / "preprocess")
    args = parser.parse_args()
    load_before = os.getloadavg()
    require_nnunet("nnUNetv2_plan_and_preprocess")
    args.work.mkdir(parents=True, exist_ok=True)
    times = {"nnunet": [], "tumorfm": []}
    for repeat in range(args.repeats):  # interleaved, so drift in machine load hits both
        seconds, nn_plans, nn_fp = run_nnunet(args.data, args.work, args.workers)
        times["nnunet"].append(seconds)
        seconds, plan, fp = run_tumorfm(args.data, args.work, args.workers)
        times["tumorfm"].append(seconds)
        print(
            f"run {repeat + 1}: nnU-Net {times['nnunet'][-1]:.1f} s, "
            f"tumorfm {times['tumorfm'][-1]:.1f} s",
            flush=True,
        )
    median = {k: statistics.median(v) for k, v in times.items()}
    speedup = median["nnunet"] / median["tumorfm"]
    agreement = compare(nn_plans, nn_fp, plan, fp)
    from importlib.metadata import version

    import nnunetv2  # noqa: F401  (version below)

    result = {
        "benchmark": "preprocess",
        "data": str(args.data),
        "cases": 36,
        "machine": machine(load_before),
        "versions": {"tumorfm": version("tumorfm"), "nnunetv2": version("nnunetv2")},
        "settings": {
            "workers": args.workers,
            "repeats": args.repeats,
            "nnunet_command": "nnUNetv2_plan_and_preprocess -d 101 -c 3d_fullres",
            "tumorfm_command": "tumorfm preprocess POOL -o CACHE",
        },
        "seconds": times,
        "median_seconds": median,
        "spread_seconds": {k: [min(v), max(v)] for k, v in times.items()},
        "speedup_tumorfm_vs_nnunet": round(speedup, 2),
        "target_speedup": TARGET_SPEEDUP,
        "plan_agreement": agreement,
        "plans_agree": all(row["agree"] for row in agreement.values()),
    }
    out = RESULTS / "preprocess.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        f"\nnnU-Net v2 {median['nnunet']:.1f} s (spread {min(times['nnunet']):.1f}-"
        f"{max(times['nnunet']):.1f}), tumorfm {median['tumorfm']:.1f} s (spread "
        f"{min(times['tumorfm']):.1f}-{max(times['tumorfm']):.1f}), workers {args.workers}"
    )
    print(f"speed-up tumorfm vs nnU-Net: {speedup:.2f}x (target {TARGET_SPEEDUP:.0f}x)")
    for name, row in agreement.items():
        print(
            f"  {name:<22} nnU-Net {row['nnunet']!s:<40} tumorfm {row['tumorfm']!s:<40} "
            f"{'agree' if row['agree'] else 'DIFFER'}"
        )
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
