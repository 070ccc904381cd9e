"""The training benchmark's two runs (benchmarks/train.py): each tool preprocesses the sarcoma
set and trains as a user runs it from the command line, timed by its own log."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from .common import (
    BIN,
    logged_epochs,
)
from .measure import (
    run,
)
from .nnunet_peer import (
    PLANS,
    TRAINER,
    count_params,
    gmacs,
    nnunet_env,
)

DATASET = "Dataset101_SarcomaCT"
TSFM = "tsfm-small"
TUMORFM_VAL_BATCHES = 20  # PretrainConfig.val_batches of the paper profile (no CLI option)


def tumorfm_network(patch, batch: int) -> dict:
    import torch

    from tumorfm.model import create_model

    with torch.device("meta"):
        plain = create_model(TSFM, 1, 1, tuple(patch))
        trained = create_model(TSFM, 1, 1, tuple(patch), deep_supervision=True)
        return {
            "network": f"{TSFM} (tumorfm)",
            "params": count_params(plain),
            "params_as_trained": count_params(trained),  # with deep-supervision heads
            "forward_backward_gmacs": round(gmacs(trained, batch, patch), 1),
        }


def preprocess(args, work: Path, tumorfm: Path) -> dict:
    raw, pre = work / "nnUNet_raw", work / "nnUNet_preprocessed"
    shutil.rmtree(pre / DATASET, ignore_errors=True)
    for folder in (raw, pre, work / "nnUNet_results"):
        folder.mkdir(parents=True, exist_ok=True)
    link = raw / DATASET
    if link.is_symlink() and link.resolve() != args.data.resolve():
        link.unlink()
    if not link.exists():
        link.symlink_to(args.data.resolve())
    command = [str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", "101", "-c", "3d_fullres"]
    command += ["-np", str(args.workers), "-npfp", str(args.workers), "--no_pbar"]
    nn = run(command, nnunet_env(work, args.workers), work / "nnunet_preprocess.log",
             args.timeout, "nnU-Net preprocess")  # fmt: skip

    pool = work / "sarcoma-pool.yaml"
    pool.write_text(
        yaml.safe_dump(
            {
                "name": "sarcoma",
                "datasets": [
                    {
                        "name": "sarcoma_ct",
                        "path": str(args.data.resolve()),
                        "labels": {1: "sarcoma"},
                    }
                ],
            }
        )
    )
    cache = work / "tumorfm_cache"
    shutil.rmtree(cache, ignore_errors=True)
    command = [str(tumorfm), "preprocess", str(pool), "-o", str(cache)]
    command += ["--workers", str(args.workers)]
    tf = run(command, dict(os.environ), work / "tumorfm_preprocess.log", args.timeout,
             "tumorfm preprocess")  # fmt: skip
    return {"nnunet_seconds": nn["wall_seconds"], "tumorfm_seconds": tf["wall_seconds"]}


def train_nnunet(args, work: Path) -> dict:
    out = work / "nnUNet_results" / DATASET / f"{TRAINER}__{PLANS}__3d_fullres"
    shutil.rmtree(out, ignore_errors=True)
    env = {
        **nnunet_env(work, args.workers),
        "TRAIN_BENCH_EPOCHS": str(args.epochs),
        "TRAIN_BENCH_ITERATIONS": str(args.iterations),
        "TRAIN_BENCH_VAL_ITERATIONS": str(args.val_iterations),
    }
    command = [str(BIN / "nnUNetv2_train"), "101", "3d_fullres", "0", "-p", PLANS, "-tr", TRAINER]
    command += ["-device", "cpu"]
    process = run(command, env, work / "nnunet_train.log", args.timeout, "nnU-Net train")
    fold = out / "fold_0"
    rows = [json.loads(x) for x in (fold / "bench_epochs.jsonl").read_text().splitlines()]
    logs = sorted(fold.glob("training_log_*.txt"))
    epoch_times = re.findall(r"Epoch time: ([\d.]+) s", logs[-1].read_text()) if logs else []
    if len(rows) != args.epochs:
        sys.exit(f"nnU-Net logged {len(rows)} epochs, expected {args.epochs}: see {fold}")
    last = rows[-1]
    per_iteration = last.pop("iteration_seconds")
    for row in rows[:-1]:
        row.pop("iteration_seconds")
    return {
        "command": " ".join(command),
        "precision": "fp32",
        "iterations_per_second": last["iterations_per_second"],
        "seconds_per_iteration": last["seconds"] / last["iterations"],
        "iteration_seconds_median_min_max": [
            round(statistics.median(per_iteration), 3),
            round(min(per_iteration), 3),
            round(max(per_iteration), 3),
        ],
        "data_wait_share": last["data_wait_share"],
        "pseudo_dice": last["mean_fg_dice"],
        "pseudo_dice_per_class": last["pseudo_dice"],
        "validation": f"{args.val_iterations} batches of {args.batch} patches, fold 0 of nnU-Net's "
        "5-fold split, 33% foreground-centred",
        "epochs": rows,
        "nnunet_logged_epoch_seconds": [float(s) for s in epoch_times],  # incl. validation
        "log": str(logs[-1]) if logs else None,
        **process,
    }


def train_tumorfm(args, work: Path, tumorfm: Path, precision: str | None) -> dict:
    name = f"tumorfm_run_{precision or 'default'}"
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    command = [str(tumorfm), "pretrain", str(work / "tumorfm_cache"), "-o", str(out)]
    command += ["--model", TSFM, "--patch", *map(str, args.patch), "--batch", str(args.batch)]
    command += ["--epochs", str(args.epochs), "--iterations", str(args.iterations)]
    command += ["--workers", str(args.workers), "--val-every", str(args.epochs)]
    command += ["--precision", precision] if precision else []
    process = run(command, dict(os.environ), work / f"{name}.log", args.timeout,
                  f"tumorfm pretrain ({precision or 'default precision'})")  # fmt: skip
    rows = logged_epochs(out)
    settings = json.loads((out / "settings.json").read_text())
    if len(rows) != args.epochs or "val_mean_dice" not in rows[-1]:
        sys.exit(
            f"tumorfm logged {len(rows)} epochs (expected {args.epochs}) or no validation: {out}"
        )
    last = rows[-1]
    split = json.loads((out / "split.json").read_text())
    val_cases = sum(len(d["val"]) for d in split.values())
    return {
        "command": " ".join(command),
        "precision": settings["precision"],
        "torch": settings["torch_version"],
        "iterations_per_second": last["iterations_per_second"],
        "seconds_per_iteration": last["seconds"] / args.iterations,
        "data_wait_share": last["data_wait_share"],
        "pseudo_dice": last["val_mean_dice"],
        "pseudo_dice_per_class": last["val_dice"],
        "validation": f"{TUMORFM_VAL_BATCHES} batches of {args.batch} patches from {val_cases} "
        "held-out cases (tumorfm's split), 33% foreground-centred",
        "epochs": rows,
        **process,
    }


# ---------------------------------------------------------------------------------------------


def product_versions(tumorfm: Path) -> dict:
    python = tumorfm.parent / "python"
    code = (
        "import torch, tumorfm, json; print(json.dumps([torch.__version__, tumorfm.__version__]))"
    )
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{python} cannot import torch and tumorfm:\n{result.stderr[-2000:]}")
    torch_version, tumorfm_version = json.loads(result.stdout)
    return {"tumorfm": tumorfm_version, "torch_product_env": torch_version}
