"""nnU-Net v2 as the benchmarks run it: a plans file with a chosen patch and a PlainConvUNet of
matched size, a trainer with a short timed run, and the folders nnU-Net reads from the environment.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from .common import BIN
from .measure import run

PLANS = "nnUNetPlans_bench"
TRAINER = "nnUNetTrainerTrainBench"

TRAINER_SOURCE = '''\
"""Written by tumorfm's benchmarks/nnunet_peer.py: nnUNetTrainer with a short, timed run.

Epochs, iterations per epoch and validation iterations come from the environment
(TRAIN_BENCH_EPOCHS, TRAIN_BENCH_ITERATIONS, TRAIN_BENCH_VAL_ITERATIONS). Each epoch appends a JSON
line to OUTPUT_FOLDER/bench_epochs.jsonl: seconds of the training loop (next(batch) + train_step,
as nnUNetTrainer.run_training runs them), seconds waited for batches, and nnU-Net's own pseudo
Dice. The full-case validation after training is skipped.

TRAIN_BENCH_SAVE_EVERY (default nnU-Net's 50) writes checkpoint_latest.pth every that many epochs,
so `nnUNetv2_train ... --c` can continue a run a session's end stopped.

TRAIN_BENCH_SECONDS gives a wall-clock budget instead of an epoch count: after every epoch the
number of epochs is re-planned from the mean epoch time so far (at least the epochs already run),
the poly learning rate is stretched to end at that epoch, and training stops there (final
checkpoint as usual). The budget counts from the start of training (after nnU-Net's setup).
"""

import json
import math
import os
import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class _TimedLoader:
    """Wraps the training data loader: time spent in next(), and when each call started."""

    def __init__(self, loader):
        self.loader, self.waited, self.starts = loader, 0.0, []

    def __iter__(self):
        return self

    def __next__(self):
        started = time.perf_counter()
        self.starts.append(started)
        batch = next(self.loader)
        self.waited += time.perf_counter() - started
        return batch

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _BudgetSpent(Exception):
    """Raised at the end of the epoch that spends the wall-clock budget."""


class nnUNetTrainerTrainBench(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("TRAIN_BENCH_EPOCHS", 2))
        self.num_iterations_per_epoch = int(os.environ.get("TRAIN_BENCH_ITERATIONS", 20))
        self.num_val_iterations_per_epoch = int(os.environ.get("TRAIN_BENCH_VAL_ITERATIONS", 20))
        self.budget_seconds = float(os.environ.get("TRAIN_BENCH_SECONDS", 0)) or None
        self.save_every = int(os.environ.get("TRAIN_BENCH_SAVE_EVERY", self.save_every))
        if self.budget_seconds:
            self.num_epochs = 100000  # re-planned after every epoch

    def run_training(self):
        try:
            super().run_training()
        except _BudgetSpent:
            self.on_train_end()

    def on_train_start(self):
        super().on_train_start()
        self.dataloader_train = _TimedLoader(self.dataloader_train)
        self._bench_training_started = time.perf_counter()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.dataloader_train.waited, self.dataloader_train.starts = 0.0, []
        self._bench_started = time.perf_counter()

    def on_train_epoch_end(self, train_outputs):
        ended = time.perf_counter()
        self._bench_seconds = ended - self._bench_started
        starts = self.dataloader_train.starts + [ended]
        self._bench_iteration_seconds = [b - a for a, b in zip(starts, starts[1:])]
        self._bench_waited = self.dataloader_train.waited
        super().on_train_epoch_end(train_outputs)

    def on_epoch_end(self):
        get = self.logger.get_value
        row = {
            "epoch": self.current_epoch,
            "iterations": self.num_iterations_per_epoch,
            "seconds": self._bench_seconds,
            "iterations_per_second": self.num_iterations_per_epoch / self._bench_seconds,
            "data_wait_share": self._bench_waited / self._bench_seconds,
            "iteration_seconds": self._bench_iteration_seconds,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "train_loss": float(get("train_losses", step=-1)),
            "val_loss": float(get("val_losses", step=-1)),
            "pseudo_dice": [float(d) for d in get("dice_per_class_or_region", step=-1)],
            "mean_fg_dice": float(get("mean_fg_dice", step=-1)),
            "ema_fg_dice": float(get("ema_fg_dice", step=-1)),
        }
        if self.budget_seconds:
            spent = time.perf_counter() - self._bench_training_started
            done = self.current_epoch + 1
            self.num_epochs = max(done, round(self.budget_seconds * done / spent))
            self.lr_scheduler.max_steps = self.num_epochs
            row |= {"spent_seconds": spent, "planned_epochs": self.num_epochs}
        with open(os.path.join(self.output_folder, "bench_epochs.jsonl"), "a") as stream:
            stream.write(json.dumps(row) + "\\n")
        self.print_to_log_file(
            f"bench: training loop {row['seconds']:.2f} s, "
            f"{row['iterations_per_second']:.4f} it/s, data wait {row['data_wait_share']:.1%}"
        )
        super().on_epoch_end()
        if self.budget_seconds and self.current_epoch >= self.num_epochs:
            raise _BudgetSpent

    def on_train_end(self):
        if isinstance(self.dataloader_train, _TimedLoader):
            self.dataloader_train = self.dataloader_train.loader
        super().on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("bench: full-case validation skipped")
'''


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def gmacs(model, batch: int, patch, channels: int = 1, backward: bool = True) -> float:
    """Multiply-adds of one forward (+ backward: a training iteration) on the meta device
    (FLOPs / 2 as FlopCounterMode counts them: convs and linear layers)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(batch, channels, *patch))
        if backward:
            out = out if isinstance(out, list | tuple) else [out]
            sum(o.float().sum() for o in out).backward()
    return counter.get_total_flops() / 2e9


def nnunet_network(arch: dict, outputs: int):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        1,
        outputs,
        allow_init=True,
        deep_supervision=True,
    )


def bench_plans(
    plans: dict, patch, batch: int, outputs: int, target_params: int, spacing=None
) -> tuple[dict, dict]:
    """nnUNetPlans.json -> nnUNetPlans_bench: 3d_fullres with this patch, batch and a PlainConvUNet
    planned for this patch by nnU-Net, its features capped for tsfm-small's parameter count.

    `spacing` (zyx, as tumorfm's plans) replaces nnU-Net's target spacing, e.g. tumorfm's lowres
    one; the configuration then names its own data folder, for `nnUNetv2_preprocess -plans_name`."""
    import torch
    from nnunetv2.experiment_planning.experiment_planners.network_topology import (
        get_pool_and_conv_props,
    )

    plans = copy.deepcopy(plans)
    plans["plans_name"] = PLANS
    full = plans["configurations"]["3d_fullres"]
    arch = full["architecture"]
    if not arch["network_class_name"].endswith("PlainConvUNet"):
        sys.exit(f"nnUNetPlans.json: expected the default PlainConvUNet, got {arch}")
    forward = plans["transpose_forward"]
    patch_t = [patch[i] for i in forward]  # the plans hold the transposed axes
    if spacing is not None:
        full["spacing"] = [float(spacing[i]) for i in forward]
        full["data_identifier"] = f"{PLANS}_3d_fullres"
    _, strides, kernels, planned, _ = get_pool_and_conv_props(full["spacing"], patch_t, 4, 999999)
    if [int(p) for p in planned] != patch_t:
        sys.exit(
            f"nnU-Net plans patch {patch_t} as {[int(p) for p in planned]} (each axis must divide "
            f"by 2**poolings): choose a patch nnU-Net keeps"
        )
    n = len(strides)
    kwargs = arch["arch_kwargs"]
    base, default_cap = kwargs["features_per_stage"][0], max(kwargs["features_per_stage"])
    kwargs.update(
        n_stages=n,
        kernel_sizes=[list(k) for k in kernels],
        strides=[list(s) for s in strides],
        n_conv_per_stage=(kwargs["n_conv_per_stage"] * n)[:n],
        n_conv_per_stage_decoder=(kwargs["n_conv_per_stage_decoder"] * n)[: n - 1],
    )
    full.update(patch_size=patch_t, batch_size=batch)

    def params_with(cap: int) -> tuple[int, list[int]]:
        features = [min(cap, base * 2**i) for i in range(n)]
        kwargs["features_per_stage"] = features
        with torch.device("meta"):
            return count_params(nnunet_network(arch, outputs)), features

    options = [params_with(cap) for cap in range(base, base * 2**n + 1, 8)]
    count, features = min(options, key=lambda o: abs(o[0] - target_params))
    kwargs["features_per_stage"] = features
    with torch.device("meta"):
        model = nnunet_network(arch, outputs)
        macs = gmacs(model, batch, patch_t)
    return plans, {
        "network": "PlainConvUNet (nnU-Net default)",
        "params": count,  # as trained: softmax outputs (background too), deep-supervision heads
        "forward_backward_gmacs": round(macs, 1),
        "features_per_stage": features,
        "feature_rule": f"min(cap, {base} * 2**stage), cap {max(features)} "
        f"(nnU-Net's default 3D cap: {default_cap})",
        "strides": [list(s) for s in strides],
        "kernel_sizes": [list(k) for k in kernels],
        "n_conv_per_stage": kwargs["n_conv_per_stage"],
        "n_conv_per_stage_decoder": kwargs["n_conv_per_stage_decoder"],
    }


def nnunet_env(work: Path, workers: int) -> dict:
    return {
        **os.environ,
        "nnUNet_raw": str(work / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
        "nnUNet_results": str(work / "nnUNet_results"),
        "nnUNet_n_proc_DA": str(workers),
    }


def predict_command(
    images: Path, out: Path, dataset_id: int, fold: int, device: str, mirror: bool = False
) -> list[str]:
    """nnUNetv2_predict with the bench trainer's final checkpoint, in-process (no worker pools, so
    the time and memory measured are the predictor's), mirrored at test time only if asked."""
    return [str(BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d",
            str(dataset_id), "-p", PLANS, "-tr", TRAINER, "-c", "3d_fullres", "-f", str(fold),
            *([] if mirror else ["--disable_tta"]), "-device", device, "-npp", "0", "-nps", "0",
            "-chk", "checkpoint_final.pth"]  # fmt: skip


def install_trainer() -> Path:
    """Write the trainer into nnU-Net's benchmarking variants (where nnUNetv2_train finds it)."""
    import nnunetv2

    folder = Path(nnunetv2.__file__).parent / "training" / "nnUNetTrainer" / "variants"
    path = folder / "benchmarking" / f"{TRAINER}.py"
    if not path.is_file() or path.read_text() != TRAINER_SOURCE:
        path.write_text(TRAINER_SOURCE)
    return path


def write_bench_plans(
    folder: Path,
    plans: dict,
    dataset_id: int,
    spacing,
    env: dict,
    log: Path,
    timeout: float,
    workers: int,
) -> bool:
    """Write `plans` as the dataset's nnUNetPlans_bench.json (its preprocessed `folder`); at a
    spacing of its own (`spacing` not None), preprocess its data when the plans changed or the
    data are missing. Returns whether the plans changed: a model trained on the old is stale."""
    path = folder / f"{PLANS}.json"
    stale = not path.is_file() or json.loads(path.read_text()) != plans
    path.write_text(json.dumps(plans, indent=2))
    data = folder / plans["configurations"]["3d_fullres"]["data_identifier"]
    if spacing is not None and (stale or not data.is_dir()):
        command = [str(BIN / "nnUNetv2_preprocess"), "-d", str(dataset_id),
                   "-plans_name", PLANS, "-c", "3d_fullres", "-np", str(workers)]  # fmt: skip
        run(command, env, log, timeout, "nnU-Net preprocess (tumorfm's lowres spacing)")
    return stale


def raw_and_planned(source: Path, dataset_id: int, work: Path, env: dict, timeout: float) -> Path:
    """nnU-Net's raw dataset from `source` (a DatasetNNN_ folder is linked, an MSD Task folder
    converted) and its nnUNetPlans.json; returns the dataset's preprocessed folder."""
    raw, pre = work / "nnUNet_raw", work / "nnUNet_preprocessed"
    for sub in (raw, pre, work / "nnUNet_results"):
        sub.mkdir(parents=True, exist_ok=True)
    name = f"Dataset{dataset_id}_" + source.name.split("_", 1)[1]
    if not (raw / name / "dataset.json").is_file():
        shutil.rmtree(raw / name, ignore_errors=True)  # a half-finished conversion
        if source.name.startswith("Dataset"):
            (raw / name).unlink(missing_ok=True)
            (raw / name).symlink_to(source.resolve())
        else:  # MSD layout: nnU-Net converts it, and insists on an imagesTs folder
            shadow = work / "msd" / source.name
            shutil.rmtree(shadow, ignore_errors=True)
            (shadow / "imagesTs").mkdir(parents=True)
            for item in ("dataset.json", "imagesTr", "labelsTr"):
                (shadow / item).symlink_to((source / item).resolve())
            command = [str(BIN / "nnUNetv2_convert_MSD_dataset"), "-i", str(shadow),
                       "-overwrite_id", str(dataset_id), "-np", "2"]  # fmt: skip
            run(command, env, work / f"convert-{name}.log", timeout, "nnU-Net convert MSD")
    if not (pre / name / "nnUNetPlans.json").is_file():
        command = [str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c",
                   "3d_fullres", "-np", "2", "--no_pbar"]  # fmt: skip
        run(command, env, work / f"preprocess-{name}.log", timeout * 2, "nnU-Net preprocess")
    return pre / name


def continue_or_restart(command: list[str], results: Path, fresh: bool) -> list[str]:
    """`nnUNetv2_train` continuing (`--c`) from the latest checkpoint a former session left,
    else from scratch in a cleared results folder; `fresh` (new settings or plans) always starts
    over."""
    if not fresh and (results / "checkpoint_latest.pth").is_file():
        print(f"{results}: nnU-Net continues from its latest checkpoint")
        return [*command, "--c"]
    shutil.rmtree(results, ignore_errors=True)
    return command


def training_loop(results: Path) -> dict:
    """nnU-Net's training-loop time over every session of a run (`--c` continued it; the last
    process times only its own part): each epoch's seconds from bench_epochs.jsonl, an epoch a
    session's end cut off and ran again counted once (its last run), and the median iteration.
    Pauses (another job on the machine, SIGSTOP) are in the seconds; the median passes them by."""
    per_epoch = {}
    for line in (results / "bench_epochs.jsonl").read_text().splitlines():
        row = json.loads(line)
        per_epoch[row["epoch"]] = row
    iterations = [t for row in per_epoch.values() for t in row["iteration_seconds"]]
    return {
        "train_loop_seconds": round(sum(row["seconds"] for row in per_epoch.values()), 1),
        "median_iteration_seconds": round(statistics.median(iterations), 2),
    }


def trained_across_sessions(
    command: list[str], env: dict, results: Path, record: Path, log: Path, timeout: float,
    what: str, fresh: bool,
) -> dict:  # fmt: skip
    """`nnUNetv2_train` (`command`) to its final checkpoint in `results`, over as many sessions
    as it takes: a checkpoint every epoch, a run a session's end stopped continued from its
    latest, a finished one kept unless `fresh` (new plans). The run's settings (env's
    TRAIN_BENCH_*) go to `record` before it starts, so a later run with other settings starts
    over instead of continuing. Returns the last process's measurement, the command it ran and
    the training loop over every session (training_loop)."""
    env = {**env, "TRAIN_BENCH_SAVE_EVERY": "1"}  # a session's end loses one epoch at most
    settings = {k: v for k, v in sorted(env.items()) if k.startswith("TRAIN_BENCH_")}
    former = json.loads(record.read_text()) if record.is_file() else None
    fresh = fresh or (former is not None and former.get("settings") != settings)
    if fresh or not (results / "checkpoint_final.pth").is_file():
        command = continue_or_restart(command, results, fresh)
        started = {
            "settings": settings,
            "command": " ".join(command),
            "continued": "--c" in command,
        }
        record.write_text(json.dumps(started))
        record.write_text(json.dumps(started | run(command, env, log, timeout, what)))
    return json.loads(record.read_text()) | training_loop(results)
