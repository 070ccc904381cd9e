"""The three models of the accuracy benchmark (benchmarks/accuracy.py), one function each: how
tumorfm, nnU-Net v2 and MONAI's SwinUNETR train on a dataset's split, segment its held-out scans
and are scored, and tumorfm's pretraining that every seed fine-tunes from."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import yaml

from tumorfm.train.finetune import dataset_classes, finetune_pool

from .common import BIN, logged_epochs, pretrain_or_resume
from .measure import run
from .nnunet_peer import (
    PLANS,
    TRAINER,
    bench_plans,
    install_trainer,
    nnunet_env,
    predict_command,
    raw_and_planned,
    trained_across_sessions,
    write_bench_plans,
)
from .scoring import evaluated
from .support import PARENTS, parameter_count, support_datasets

DATASETS = {  # name -> folder, nnU-Net id, class name in the pool, finetune --map
    "sarcoma_ct": ("Dataset101_SarcomaCT", 101, "sarcoma", []),
    "brain_mr": ("Task102_BrainTumour", 102, "brain_tumour", ["--map", "tumour=brain_tumour"]),
}


# The glioblastoma MRs are 24-slice slabs at 1 mm: the lowres plan coarsens them only in-plane (to
# 20x109x108, where a tumour is a few hundred voxels; configs/pools/real.yaml keeps them at full
# resolution for that reason), and a 48-slice patch is over twice their depth. At the lowres
# setting they keep full resolution, with a patch of about as many voxels that SwinUNETR can take
# (multiples of 32).
FULLRES_AT_LOWRES = {"brain_mr": [32, 128, 128]}


def plan_of(args, name: str) -> tuple[str, list[int]]:
    """The plan configuration and patch every model of dataset `name` trains with."""
    if args.config == "lowres" and name in FULLRES_AT_LOWRES:
        return "fullres", FULLRES_AT_LOWRES[name]
    return args.config, list(args.patch)


def score(predictions: Path, labels: Path, args, work: Path) -> dict:
    how = {"tumorfm": [str(args.tumorfm)], "timeout": args.timeout, "what": "tumorfm evaluate"}
    result = evaluated(predictions, labels, work / "evaluate.log", **how)
    (scores,) = result["aggregates"].values()  # one class per dataset
    return {
        "dice": scores["dice"]["mean"],
        "hd95": scores["hd95"]["median"],
        "nsd": scores["nsd"]["mean"],
        "dice_std": scores["dice"]["std"],
    }


def cli(*parts) -> list[str]:
    """A command line from paths, numbers and lists of them."""
    return [str(x) for part in parts for x in (part if isinstance(part, list | tuple) else [part])]


def _measured(process: dict) -> dict:
    return {"seconds": process["wall_seconds"], "peak_mb": process.get("peak_tree_pss_mb")}


def pretrain(args, work: Path, splits: dict) -> dict:
    """The pretraining every seed fine-tunes from: reused once finished with these settings
    (pretrain.json is written at its end), resumed where a session ended midway, else afresh."""
    out, record = work / "pretrain", work / "pretrain.json"
    cache, split_file = work / "pretrain-cache", work / "pool-split.json"
    epochs = max(1, round(args.pretrain_iterations * args.budget / args.per_epoch))
    command = cli(args.tumorfm, "pretrain", cache, "-o", out, "--profile", "cpu", "--model",
                  args.model, "--patch", args.patch, "--batch", args.batch, "--epochs", epochs,
                  "--iterations", args.per_epoch, "--val-every", epochs, "--split", split_file,
                  "--device", args.device)  # fmt: skip
    intended, former = " ".join(command), work / "pretrain-command.txt"
    if args.fresh or not former.is_file() or former.read_text() != intended:
        shutil.rmtree(out, ignore_errors=True)  # other settings' weights: never reused
        record.unlink(missing_ok=True)
    if record.is_file() and (out / "last" / "config.json").is_file():
        print(f"pretraining: reusing {out}")
        return json.loads(record.read_text())
    datasets = [
        {"name": name, "path": str((args.data / folder).resolve()), "labels": {1: label}}
        for name, (folder, _, label, _) in DATASETS.items()
    ]
    datasets += support_datasets(args.tumorfm, args.data, work, 8, args.timeout)
    pool = {"name": "accuracy-pretrain", "parents": PARENTS, "datasets": datasets}
    (work / "pool.yaml").write_text(yaml.safe_dump(pool, sort_keys=False))
    split_file.write_text(json.dumps(splits, indent=1))  # held-out cases validate, never train
    prep = cli(args.tumorfm, "preprocess", work / "pool.yaml", "-o", cache, "--workers", 2,
               "--config", args.config, "--patch", args.patch)  # fmt: skip
    prep = run(prep, dict(os.environ), work / "pretrain-prep.log", args.timeout,
               "tumorfm preprocess (pool)")  # fmt: skip
    former.write_text(intended)
    command = pretrain_or_resume(command, out)  # a session may have ended midway
    train = run(command, dict(os.environ), work / "pretrain.log", args.timeout * 8,
                "tumorfm pretrain")  # fmt: skip
    log = logged_epochs(out)
    result = {
        "command": intended,
        "iterations": epochs * args.per_epoch,
        "preprocess_seconds": prep["wall_seconds"],
        "seconds": round(sum(epoch["seconds"] for epoch in log), 1),  # every session's epochs
        "resumed": "--resume" in command,
        "peak_mb": train.get("peak_tree_pss_mb"),
    }
    record.write_text(json.dumps(result, indent=1))
    return result


def predicted_and_scored(args, work, name, model, out, train, predict, predictions, labels) -> dict:
    """Run the prediction command of the model trained in `out`, score it, make the row."""
    log = out.parent / f"{out.name}-predict.log"
    inference = run(predict, dict(os.environ), log, args.timeout, f"{model} predict ({name})")
    return {
        "model": model,
        "parameters": json.loads((out / "settings.json").read_text())["parameters"],
        "train": _measured(train),
        "predict": _measured(inference),
        **score(predictions, labels, args, work),
    }


def tumorfm_arm(args, work, name, split_file, images, labels, epochs, seed) -> dict:
    folder, _, _, mapping = DATASETS[name]
    config, patch = plan_of(args, name)
    out = work / "runs" / f"seed{seed}" / f"tumorfm-{name}"
    shutil.rmtree(out, ignore_errors=True)
    command = cli(args.tumorfm, "finetune", args.data / folder, "--from",
                  work / "pretrain" / "last", "-o", out, "--epochs", epochs, "--iterations",
                  args.per_epoch, "--patch", patch, "--config", config, "--split", split_file,
                  "--seed", seed, mapping)  # fmt: skip
    train = run(command, dict(os.environ), out.parent / f"tumorfm-{name}.log", args.timeout * 8,
                f"tumorfm finetune ({name})")  # fmt: skip
    predictions = work / "predictions" / f"seed{seed}" / f"tumorfm-{name}"
    shutil.rmtree(predictions, ignore_errors=True)
    predict = cli(args.tumorfm, "predict", "-i", images, "-o", predictions, "-m", out / "last",
                  "--no-mirror", "--device", args.device)  # fmt: skip
    model = f"tumorfm {args.model} (pretrained, fine-tuned)"
    return predicted_and_scored(args, work, name, model, out, train, predict, predictions, labels)


def prepared(args, work: Path, name: str) -> Path:
    """Dataset `name` preprocessed as tumorfm's fine-tuning preprocesses it (its pool, plan and
    patch: tumorfm.train.finetune.finetune_pool), once for every seed: SwinUNETR trains on it and
    predicts with its plan, nnU-Net takes tumorfm's lowres spacing from it."""
    folder, _, label, mapping = DATASETS[name]
    config, patch = plan_of(args, name)
    cache = work / "caches" / f"{name}-{config}-{'x'.join(map(str, patch))}"
    dataset = args.data / folder
    renamed = dict(pair.split("=") for pair in mapping[1::2])
    labels = dataset_classes(dataset, [label], renamed, new_head=False)
    pool = yaml.safe_dump(finetune_pool(dataset, labels, [label]), sort_keys=False)
    pool_file = cache.with_suffix(".yaml")
    if (cache / "pool.json").is_file() and pool_file.is_file() and pool_file.read_text() == pool:
        return cache  # made from this pool (another --data is another pool: made again)
    pool_file.parent.mkdir(parents=True, exist_ok=True)
    pool_file.write_text(pool)
    command = cli(args.tumorfm, "preprocess", pool_file, "-o", cache, "--workers", 2, "--config",
                  config, "--patch", patch)  # fmt: skip
    run(command, dict(os.environ), cache.with_suffix(".log"), args.timeout,
        f"tumorfm preprocess ({name})")  # fmt: skip
    return cache


def swinunetr_arm(args, work, name, split_file, images, labels, iterations, seed) -> dict:
    out = work / "runs" / f"seed{seed}" / f"swinunetr-{name}"  # kept: its state, if any, resumes
    script = [sys.executable, "-m", "benchmarks.swinunetr"]
    cache = prepared(args, work, name)
    patch = plan_of(args, name)[1]
    command = cli(script, "train", cache, "--split", split_file, "-o", out, "--iterations",
                  iterations, "--patch", patch, "--batch", args.batch, "--feature-size",
                  args.swin_features, "--seed", seed)  # fmt: skip
    train = run(command, dict(os.environ), out.parent / f"swinunetr-{name}.log",
                args.timeout * 8, f"SwinUNETR train ({name})")  # fmt: skip
    predictions = work / "predictions" / f"seed{seed}" / f"swinunetr-{name}"
    shutil.rmtree(predictions, ignore_errors=True)
    predict = cli(script, "predict", out, "--cache", cache, "-i", images, "-o", predictions)
    model = f"MONAI SwinUNETR (feature size {args.swin_features})"
    row = predicted_and_scored(args, work, name, model, out, train, predict, predictions, labels)
    settings = json.loads((out / "settings.json").read_text())
    if settings.get("continued"):  # over sessions: the loop's time of the iterations kept
        row["train"] = {**row["train"], "seconds": settings["seconds"], "continued": True}
    return row


def lowres_spacing(args, work: Path, name: str) -> list[float] | None:
    """The target spacing tumorfm plans `name` at, when that plan is lowres (None: lowres equals
    full resolution there, and the plan says so)."""
    plan = json.loads(next(prepared(args, work, name).glob("*/plan.json")).read_text())
    return plan["target_spacing_zyx"] if plan.get("configuration") == "3d_lowres" else None


def _train_seconds(train: dict) -> float:
    """nnU-Net's training time: its process's wall time, or for a run continued over sessions
    (or whose process left no measurement) the training loops of all its sessions."""
    if train.get("continued") or train.get("wall_seconds") is None:
        return train["train_loop_seconds"]
    return train["wall_seconds"]


def nnunet_arm(args, work, name, split, images, labels, epochs, seed) -> dict:
    """nnU-Net on `split`, once per seed: fold k of its splits_final.json is the same split, so
    fold `seed` is one more training with nnU-Net's own randomness (its CLI takes no seed)."""
    fold = seed
    folder, dataset_id, _, _ = DATASETS[name]
    nn = work / "nnunet"
    env = nnunet_env(nn, 2)
    pre = raw_and_planned(args.data / folder, dataset_id, nn, env, args.timeout)
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    config, patch = plan_of(args, name)
    spacing = lowres_spacing(args, work, name) if config == "lowres" else None
    params = parameter_count(args.model, patch)
    plans, network = bench_plans(plans, patch, args.batch, 2, params, spacing)
    log = nn / f"preprocess-bench-{name}.log"
    stale = write_bench_plans(pre, plans, dataset_id, spacing, env, log, args.timeout * 2, 2)
    (pre / "splits_final.json").write_text(json.dumps([split] * (seed + 1)))
    install_trainer()
    env = {**env, "TRAIN_BENCH_EPOCHS": str(epochs), "TRAIN_BENCH_ITERATIONS": str(args.per_epoch),
           "TRAIN_BENCH_VAL_ITERATIONS": "5"}  # fmt: skip
    results = nn / "nnUNet_results" / pre.name / f"{TRAINER}__{PLANS}__3d_fullres" / f"fold_{fold}"
    command = cli(BIN / "nnUNetv2_train", dataset_id, "3d_fullres", fold, "-p", PLANS, "-tr",
                  TRAINER, "-device", args.device)  # fmt: skip
    record, log = nn / f"train-{name}-fold{fold}.json", nn / f"train-{name}-fold{fold}.log"
    train = trained_across_sessions(command, env, results, record, log, args.timeout * 8,
                                    f"nnU-Net train ({name}, fold {fold})",
                                    fresh=args.fresh or stale)  # fmt: skip
    predictions = work / "predictions" / f"seed{seed}" / f"nnunet-{name}"
    shutil.rmtree(predictions, ignore_errors=True)
    predict = predict_command(images, predictions, dataset_id, fold, args.device)
    inference = run(
        predict,
        env,
        nn / f"predict-{name}-fold{fold}.log",
        args.timeout,
        f"nnU-Net predict ({name})",
    )
    return {
        "model": "nnU-Net v2 (PlainConvUNet, matched size"
        + (", tumorfm's lowres spacing)" if spacing else ", 3d_fullres)"),
        "parameters": network["params"],
        "train": {
            "seconds": _train_seconds(train),
            "peak_mb": train.get("peak_tree_pss_mb"),
            "continued": bool(train.get("continued")),
        },
        "predict": _measured(inference),
        "network": network,
        **score(predictions, labels, args, work),
    }
