"""nnU-Net v2 in the transfer benchmark (benchmarks/transfer.py, step 3): trained on each seed's
split at tumorfm's lowres spacing and scored by the command that scores the study's rows."""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
from pathlib import Path

from .common import BIN
from .measure import run
from .nnunet_peer import (
    PLANS,
    TRAINER,
    bench_plans,
    count_params,
    gmacs,
    install_trainer,
    nnunet_env,
    nnunet_network,
    predict_command,
    raw_and_planned,
    trained_across_sessions,
    write_bench_plans,
)
from .scoring import evaluated

SARCOMA_ID, SARCOMA = 101, "Dataset101_SarcomaCT"


def nnunet_row(args, work: Path, seed: int, reference: dict) -> dict:
    """nnU-Net's predictions of the seed's held-out cases scored as the study scores its rows
    (`tumorfm evaluate`; Dice and NSD means, HD95 median), apart from the study's work folder."""
    split = reference["split"]
    labels = work / "nnunet" / f"labels-seed{seed}"
    shutil.rmtree(labels, ignore_errors=True)
    labels.mkdir(parents=True)
    source = args.data / SARCOMA
    for case in split["val"]:
        (labels / f"{case}.nii.gz").symlink_to((source / "labelsTr" / f"{case}.nii.gz").resolve())
    shutil.copy(source / "dataset.json", labels / "dataset.json")
    predictions = Path(reference["predictions"])
    metrics = evaluated(predictions, labels, work / "nnunet" / f"evaluate-seed{seed}.log",
                        tumorfm=[str(args.tumorfm)], timeout=args.timeout)  # fmt: skip
    row = {"arm": "nnunet", "epochs": None, "iterations": None}
    for name, aggregate in metrics["aggregates"].items():
        row |= {f"{name}_dice": aggregate["dice"]["mean"], f"{name}_hd95":
                aggregate["hd95"]["median"], f"{name}_nsd": aggregate["nsd"]["mean"]}  # fmt: skip
    row["mean_dice"] = statistics.fmean(v for k, v in row.items() if k.endswith("_dice"))
    return row


def planned_network(work: Path, batch: int) -> dict | None:
    """Parameters and multiply-adds of a training iteration of the PlainConvUNet the bench plans
    in `work` hold (None before nnU-Net is planned, or without nnunetv2 installed)."""
    path = work / "nnunet" / "nnUNet_preprocessed" / SARCOMA / f"{PLANS}.json"
    if not path.is_file() or importlib.util.find_spec("nnunetv2") is None:
        return None
    import torch

    full = json.loads(path.read_text())["configurations"]["3d_fullres"]
    with torch.device("meta"):
        model = nnunet_network(full["architecture"], 2)  # as trained: softmax, background too
        macs = gmacs(model, batch, full["patch_size"])
    features = full["architecture"]["arch_kwargs"]["features_per_stage"]
    return {"params": count_params(model), "forward_backward_gmacs": round(macs, 1),
            "features_per_stage": features}  # fmt: skip


def nnunet(args, work: Path, split: dict, seed: int, target_params: int, spacing) -> dict:
    """Plan, preprocess, train on seed `seed`'s `split` (tumorfm's: fold 0 of a splits file of
    one, results in a folder of the seed's own) with factor x the smallest budget, predict its
    held-out cases. `spacing` (zyx, mm): tumorfm's lowres target spacing, which nnU-Net then plans
    and preprocesses at too; None keeps nnU-Net's own."""
    nn, fold = work / "nnunet", 0
    env = nnunet_env(nn, args.workers)
    folder = raw_and_planned(args.data / SARCOMA, SARCOMA_ID, nn, env, args.timeout)
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    patch = args.patch or plans["configurations"]["3d_fullres"]["patch_size"]
    plans, network = bench_plans(plans, patch, args.batch, 2, target_params, spacing)
    log, timeout = nn / "preprocess-bench.log", args.timeout * 2
    stale = write_bench_plans(folder, plans, SARCOMA_ID, spacing, env, log, timeout, args.workers)
    (folder / "splits_final.json").write_text(json.dumps([split]))
    install_trainer()
    epochs = args.factor * min(args.budgets)
    env = {
        **env,
        "nnUNet_results": str(nn / f"nnUNet_results-seed{seed}"),
        "TRAIN_BENCH_EPOCHS": str(epochs),
        "TRAIN_BENCH_ITERATIONS": str(args.iterations),
        "TRAIN_BENCH_VAL_ITERATIONS": str(args.nnunet_val_iterations),
    }
    results = (
        Path(env["nnUNet_results"]) / SARCOMA / f"{TRAINER}__{PLANS}__3d_fullres" / f"fold_{fold}"
    )
    command = [str(BIN / "nnUNetv2_train"), str(SARCOMA_ID), "3d_fullres", str(fold), "-p", PLANS]
    command += ["-tr", TRAINER, "-device", args.device]
    record, log = nn / f"train-seed{seed}.json", nn / f"train-seed{seed}.log"
    train = trained_across_sessions(command, env, results, record, log, args.timeout * 8,
                                    "nnU-Net train", fresh=args.fresh or stale)  # fmt: skip
    images = nn / f"validation_images-seed{seed}"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    for case in split["val"]:
        name = f"{case}_0000.nii.gz"
        (images / name).symlink_to((args.data / SARCOMA / "imagesTr" / name).resolve())
    predictions = nn / f"predictions-seed{seed}"
    shutil.rmtree(predictions, ignore_errors=True)
    prediction = predict_command(images, predictions, SARCOMA_ID, fold, args.device)
    log = nn / f"predict-seed{seed}.log"
    predict = run(prediction, env, log, args.timeout, "nnU-Net predict")
    return {
        "train_command": train.get("command", " ".join(command)),
        "predict_command": " ".join(prediction),
        "network": network,
        "patch": list(patch),
        "spacing_zyx": list(spacing) if spacing is not None else None,
        "epochs": epochs,
        "iterations": epochs * args.iterations,
        "train_seconds": train.get("wall_seconds"),  # the last session's process
        "train_loop_seconds": train["train_loop_seconds"],  # every session's
        "median_iteration_seconds": train["median_iteration_seconds"],
        "train_peak_mb": train.get("peak_tree_pss_mb"),
        "predict_seconds": predict["wall_seconds"],
        "predictions": str(predictions),
        "split": split,
    }
