"""Training, side by side: `tumorfm pretrain` vs `nnUNetv2_train`, same data, same machine.

The 36 sarcoma CT cases are preprocessed once by each tool (`nnUNetv2_plan_and_preprocess -d 101
-c 3d_fullres`, `tumorfm preprocess`), then each trains `--epochs` epochs of `--iterations`
iterations on the same patch and batch with a network of matched parameter count, as a user runs
it from the command line:

  nnU-Net  `nnUNetv2_train 101 3d_fullres 0 -p nnUNetPlans_bench -tr nnUNetTrainerTrainBench
           -device cpu` (fp32: nnU-Net has no autocast on the CPU). nnUNetPlans_bench is a copy of
           nnUNetPlans.json whose 3d_fullres has the patch and batch, and the default PlainConvUNet
           re-planned for that patch by nnU-Net's own get_pool_and_conv_props (strides, kernels,
           2 convs per stage), features min(cap, 32 * 2**stage) with the cap (a multiple of 8)
           giving the parameter count closest to tsfm-small's. nnUNetTrainerTrainBench (written
           into nnU-Net's benchmarking variants at run time) is nnUNetTrainer with the epochs,
           iterations and validation iterations set, the training loop and its waits for the data
           loader timed, and the full-case validation after training skipped.
  tumorfm  `.venv/bin/tumorfm pretrain CACHE -o RUN --model tsfm-small --patch P --batch B
           --epochs E --iterations N --workers W --val-every E`, in the product environment, once
           with the default precision (auto: bf16 on a CPU with AVX-512 bf16) and once with
           `--precision fp32`.

Figures are from the last epoch (the earlier ones are warm-up): iterations/s of the training loop
(data loading included, validation excluded), the share of it spent waiting for batches, the pseudo
Dice of the validation patches after the same number of iterations (each tool's own validation
split and patches: nnU-Net's fold 0, tumorfm's 20% hold-out), and the peak memory of the training
process tree (RSS summed over the process and its loader workers, polled every 0.2 s; also PSS,
which counts pages shared between them once, polled every 5 s). The ratio is tumorfm/nnU-Net
iterations per second (higher is better for tumorfm). Also the multiply-adds of an iteration of
each network: equal parameter counts do not make equal arithmetic.

The machine may be shared: before each training run the script waits (`--wait-idle`) for the CPUs
to be idle, measures the CPU share other processes took during the run, repeats a run they
disturbed by more than `--max-disturbance` (`--retries` times) and flags it if it stays disturbed.

Run from the repository root in the benchmark environment (it holds nnU-Net; tumorfm trains in the
product environment .venv):
    make bench-env && .venv-bench/bin/python benchmarks/train.py
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "Dataset101_SarcomaCT"
BIN = Path(sys.executable).parent
DATASET = "Dataset101_SarcomaCT"
PLANS = "nnUNetPlans_bench"
TRAINER = "nnUNetTrainerTrainBench"
TSFM = "tsfm-small"
TUMORFM_VAL_BATCHES = 20  # PretrainConfig.val_batches of the paper profile (no CLI option)
TARGET_RATIO = 2.5

TRAINER_SOURCE = '''\
"""Written by tumorfm's benchmarks/train.py: nnUNetTrainer with a short, timed run.

Epochs, iterations per epoch and validation iterations come from the environment
(TRAIN_BENCH_EPOCHS, TRAIN_BENCH_ITERATIONS, TRAIN_BENCH_VAL_ITERATIONS). Each epoch appends a JSON
line to OUTPUT_FOLDER/bench_epochs.jsonl: seconds of the training loop (next(batch) + train_step,
as nnUNetTrainer.run_training runs them), seconds waited for batches, and nnU-Net's own pseudo
Dice. The full-case validation after training is skipped.
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


class nnUNetTrainerTrainBench(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("TRAIN_BENCH_EPOCHS", 2))
        self.num_iterations_per_epoch = int(os.environ.get("TRAIN_BENCH_ITERATIONS", 20))
        self.num_val_iterations_per_epoch = int(os.environ.get("TRAIN_BENCH_VAL_ITERATIONS", 20))

    def on_train_start(self):
        super().on_train_start()
        self.dataloader_train = _TimedLoader(self.dataloader_train)

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
        with open(os.path.join(self.output_folder, "bench_epochs.jsonl"), "a") as stream:
            stream.write(json.dumps(row) + "\\n")
        self.print_to_log_file(
            f"bench: training loop {row['seconds']:.2f} s, "
            f"{row['iterations_per_second']:.4f} it/s, data wait {row['data_wait_share']:.1%}"
        )
        super().on_epoch_end()

    def on_train_end(self):
        if isinstance(self.dataloader_train, _TimedLoader):
            self.dataloader_train = self.dataloader_train.loader
        super().on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("bench: full-case validation skipped")
'''


# ---------------------------------------------------------------------------------------------
# processes: run with a timeout, poll the memory of the whole process tree


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(parent, []).append(int(entry))
    return tree


def _kb(path: str, field: str) -> int:
    try:
        text = Path(path).read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


class MemoryPoll(threading.Thread):
    """Peak memory of a process and all its descendants: RSS summed over them every `interval` s
    (the tree re-read every second), the process's own peak RSS (VmHWM, exact), and PSS summed over
    them every `pss_interval` s (smaps_rollup walks the page tables: ~40 ms per GB-sized process,
    too dear to read more often on 2 cores)."""

    def __init__(self, pid: int, interval: float = 0.2, pss_interval: float = 5.0):
        super().__init__(daemon=True)
        self.pid, self.interval, self.pss_interval = pid, interval, pss_interval
        self.done = threading.Event()
        self.peak_rss = self.peak_pss = self.peak_main_hwm = self.peak_processes = 0
        self.cpu_seconds = 0.0

    def _tree(self) -> list[int]:
        tree, pids, i = _children(), [self.pid], 0
        while i < len(pids):
            pids += tree.get(pids[i], [])
            i += 1
        return pids

    def run(self) -> None:
        pids, tree_read, pss_read = [self.pid], -math.inf, -math.inf
        while not self.done.is_set():
            now = time.monotonic()
            if now - tree_read >= 1.0:
                pids, tree_read = self._tree(), now
                self.peak_processes = max(self.peak_processes, len(pids))
            rss = sum(_kb(f"/proc/{p}/status", "VmRSS") for p in pids)
            self.peak_rss = max(self.peak_rss, rss)
            hwm = _kb(f"/proc/{self.pid}/status", "VmHWM")
            self.peak_main_hwm = max(self.peak_main_hwm, hwm)
            if now - pss_read >= self.pss_interval:
                pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss") for p in pids)
                self.peak_pss, pss_read = max(self.peak_pss, pss), now
            self.done.wait(self.interval)
        self.cpu_seconds = time.thread_time()

    def result(self) -> dict:
        return {
            "peak_tree_rss_mb": round(self.peak_rss / 1024, 1),
            "peak_tree_pss_mb": round(self.peak_pss / 1024, 1),
            "peak_main_process_rss_mb": round(self.peak_main_hwm / 1024, 1),
            "processes_in_tree": self.peak_processes,
            "memory_poll_cpu_seconds": round(self.cpu_seconds, 1),
        }


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def busy_share(seconds: float = 3.0) -> float:
    (busy0, total0), _ = _cpu_jiffies(), time.sleep(seconds)
    busy1, total1 = _cpu_jiffies()
    return (busy1 - busy0) / max(total1 - total0, 1)


WAITED = [0.0]  # seconds spent in wait_until_idle


def wait_until_idle(limit: float, threshold: float = 0.1) -> float | None:
    """Wait (at most `limit` s) until the CPUs are less than `threshold` busy; the last share."""
    if limit <= 0:
        return None
    started = time.monotonic()
    deadline, told = started + limit, False
    while True:
        share = busy_share()
        if share < threshold or time.monotonic() > deadline:
            if share >= threshold:
                print(f"warning: CPUs still {share:.0%} busy with other work; measuring anyway")
            WAITED[0] += time.monotonic() - started
            return share
        if not told:
            print(f"waiting for other work to finish (CPUs {share:.0%} busy) ...", flush=True)
            told = True
        time.sleep(10)


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of every descendant it has reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(command: list[str], env: dict, log: Path, timeout: float, what: str) -> dict:
    """Run `command` (output to `log`), polling its memory; exit with the log's tail on error.

    Also measures the CPU time other processes on the machine took meanwhile (all CPUs' busy time
    minus ours), as a share of the CPUs: a shared machine shows up there."""
    print(f"{what}: {' '.join(command)}", flush=True)
    load_before = os.getloadavg()
    busy_before, ours_before = _cpu_jiffies()[0], _own_cpu_seconds()
    started = time.perf_counter()
    with open(log, "w") as stream:
        process = subprocess.Popen(
            command, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )
        poll = MemoryPoll(process.pid)
        poll.start()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: only what we started
            process.wait()
            code = None
        finally:
            poll.done.set()
            poll.join()
    seconds = time.perf_counter() - started
    busy = (_cpu_jiffies()[0] - busy_before) / os.sysconf("SC_CLK_TCK")
    ours = _own_cpu_seconds() - ours_before
    if code != 0:
        tail = log.read_text()[-3000:]
        reason = f"timed out after {timeout:.0f} s" if code is None else f"exited with {code}"
        sys.exit(f"{what} {reason}:\n  {' '.join(command)}\n--- {log} (tail) ---\n{tail}")
    return {
        "wall_seconds": round(seconds, 1),
        "cpu_seconds": round(ours, 1),
        "other_processes_cpu_share": round(max(busy - ours, 0) / (seconds * os.cpu_count()), 3),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **poll.result(),
    }


# ---------------------------------------------------------------------------------------------
# networks: parameter counts and multiply-adds, on the meta device


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _gmacs(model, batch: int, patch, channels: int = 1) -> float:
    """Forward + backward multiply-adds of one iteration (FLOPs / 2: convs and linear layers)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(batch, channels, *patch))
        out = out if isinstance(out, list | tuple) else [out]
        sum(o.float().sum() for o in out).backward()
    return counter.get_total_flops() / 2e9


def tumorfm_network(patch, batch: int) -> dict:
    import torch

    from tumorfm.model import create_model

    with torch.device("meta"):
        plain = create_model(TSFM, 1, 1, tuple(patch))
        trained = create_model(TSFM, 1, 1, tuple(patch), deep_supervision=True)
        return {
            "network": f"{TSFM} (tumorfm)",
            "params": _count(plain),
            "params_as_trained": _count(trained),  # with deep-supervision heads
            "forward_backward_gmacs": round(_gmacs(trained, batch, patch), 1),
        }


def _nnunet_model(arch: dict, outputs: int):
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
    plans: dict, patch, batch: int, outputs: int, target_params: int
) -> tuple[dict, dict]:
    """nnUNetPlans.json -> nnUNetPlans_bench: 3d_fullres with this patch, batch and a PlainConvUNet
    planned for this patch by nnU-Net, its features capped for tsfm-small's parameter count."""
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
            return _count(_nnunet_model(arch, outputs)), features

    options = [params_with(cap) for cap in range(base, base * 2**n + 1, 8)]
    count, features = min(options, key=lambda o: abs(o[0] - target_params))
    kwargs["features_per_stage"] = features
    with torch.device("meta"):
        model = _nnunet_model(arch, outputs)
        gmacs = _gmacs(model, batch, patch_t)
    return plans, {
        "network": "PlainConvUNet (nnU-Net default)",
        "params": count,  # as trained: softmax outputs (background too), deep-supervision heads
        "forward_backward_gmacs": round(gmacs, 1),
        "features_per_stage": features,
        "feature_rule": f"min(cap, {base} * 2**stage), cap {max(features)} "
        f"(nnU-Net's default 3D cap: {default_cap})",
        "strides": [list(s) for s in strides],
        "kernel_sizes": [list(k) for k in kernels],
        "n_conv_per_stage": kwargs["n_conv_per_stage"],
        "n_conv_per_stage_decoder": kwargs["n_conv_per_stage_decoder"],
    }


# ---------------------------------------------------------------------------------------------
# the two tools


def nnunet_env(work: Path, workers: int) -> dict:
    return {
        **os.environ,
        "nnUNet_raw": str(work / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
        "nnUNet_results": str(work / "nnUNet_results"),
        "nnUNet_n_proc_DA": str(workers),
    }


def install_trainer() -> Path:
    """Write the trainer into nnU-Net's benchmarking variants (where nnUNetv2_train finds it)."""
    import nnunetv2

    folder = Path(nnunetv2.__file__).parent / "training" / "nnUNetTrainer" / "variants"
    path = folder / "benchmarking" / f"{TRAINER}.py"
    if not path.is_file() or path.read_text() != TRAINER_SOURCE:
        path.write_text(TRAINER_SOURCE)
    return path


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
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
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


def machine(load_before: tuple[float, ...]) -> dict:
    """The machine a result comes from: CPU model (speed ratios differ between CPUs; bf16 runs
    fast only where the CPU has AVX-512 bf16), memory, load before and after."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = re.search(r"model name\s*:\s*(.+)", info)
    return {
        "platform": platform.platform(),
        "cpu": model.group(1).strip() if model else platform.processor(),
        "avx512_bf16": "avx512_bf16" in info,
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def git_state() -> dict:
    def git(*words: str) -> str:
        result = subprocess.run(["git", "-C", str(ROOT), *words], capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else "unknown"

    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty_tumorfm": bool(git("status", "--porcelain", "--", "tumorfm")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64], metavar=("Z", "Y", "X"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20, help="per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="the last is measured (>= 2)")
    parser.add_argument(
        "--val-iterations",
        type=int,
        default=TUMORFM_VAL_BATCHES,
        help="nnU-Net's validation batches per epoch (tumorfm's are fixed at 20)",
    )
    parser.add_argument("--workers", type=int, default=2, help="preprocessing and loader workers")
    parser.add_argument("--timeout", type=float, default=1500, help="seconds, per command")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=600,
        help="before each training run, wait at most this many seconds for other work on the "
        "machine to finish (0: do not wait)",
    )
    parser.add_argument(
        "--max-disturbance",
        type=float,
        default=0.1,
        help="a training run during which other processes took more than this share of the "
        "CPUs is repeated (up to --retries times) and flagged if it stays disturbed",
    )
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--tumorfm", type=Path, default=ROOT / ".venv" / "bin" / "tumorfm")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "train")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train.json")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first is warm-up")
    for tool in ("nnUNetv2_plan_and_preprocess", "nnUNetv2_train"):
        if not (BIN / tool).exists():
            sys.exit(
                "nnU-Net v2 is not in this environment: run `make bench-env` and use "
                ".venv-bench/bin/python"
            )
    if not args.tumorfm.exists():
        sys.exit(f"{args.tumorfm}: no tumorfm in the product environment; run `make test` first")
    if not (args.data / "dataset.json").is_file():
        sys.exit(f"{args.data}: not an nnU-Net raw dataset (no dataset.json)")
    started = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(f"warning: load average {load_before[0]:.2f} before the start: figures may suffer")
    versions = {
        **product_versions(args.tumorfm),
        **{
            name: version(name)
            for name in ("nnunetv2", "dynamic_network_architectures", "batchgeneratorsv2")
        },
        "torch_bench_env": version("torch"),
        **git_state(),
    }

    ours = tumorfm_network(args.patch, args.batch)
    print(f"{ours['network']}: {ours['params']:,} parameters", flush=True)
    wait_until_idle(args.wait_idle)
    preprocessed = preprocess(args, work, args.tumorfm)
    folder = work / "nnUNet_preprocessed" / DATASET
    heads = len(json.loads((folder / "dataset.json").read_text())["labels"])  # background too
    plans, theirs = bench_plans(
        json.loads((folder / "nnUNetPlans.json").read_text()),
        args.patch,
        args.batch,
        heads,
        ours["params"],
    )
    (folder / f"{PLANS}.json").write_text(json.dumps(plans, indent=2))
    params_ratio = theirs["params"] / ours["params"]
    print(
        f"{theirs['network']}: {theirs['params']:,} parameters ({params_ratio:.3f}x tsfm-small), "
        f"features {theirs['features_per_stage']}, strides {theirs['strides']}",
        flush=True,
    )
    if abs(params_ratio - 1) > 0.1:
        sys.exit("no nnU-Net feature cap matches tsfm-small's parameter count within 10%")
    trainer_file = install_trainer()

    plan = {
        "nnunet": (lambda: train_nnunet(args, work), theirs),
        "tumorfm": (lambda: train_tumorfm(args, work, args.tumorfm, None), ours),
        "tumorfm_fp32": (lambda: train_tumorfm(args, work, args.tumorfm, "fp32"), ours),
    }
    runs = {}
    for name, (train, network) in plan.items():
        discarded = []
        for attempt in range(args.retries + 1):
            idle = wait_until_idle(args.wait_idle)
            r = train()
            r["cpu_busy_share_before_start"] = idle
            r["gmacs_per_second"] = network["forward_backward_gmacs"] * r["iterations_per_second"]
            share = r["other_processes_cpu_share"]
            print(
                f"  {r['iterations_per_second']:.4f} it/s ({r['precision']}); other processes "
                f"took {share:.0%} of the CPUs meanwhile",
                flush=True,
            )
            if share <= args.max_disturbance or attempt == args.retries:
                break
            print(f"  more than {args.max_disturbance:.0%}: discarded, running it again")
            discarded.append({k: v for k, v in r.items() if k != "epochs"})
        r["disturbed"] = share > args.max_disturbance
        r["discarded_attempts"] = discarded
        runs[name] = r

    base = runs["nnunet"]
    ratio = {
        name: {
            "iterations_per_second": round(
                r["iterations_per_second"] / base["iterations_per_second"], 2
            ),
            "peak_tree_rss": round(r["peak_tree_rss_mb"] / base["peak_tree_rss_mb"], 2),
            "peak_tree_pss": round(r["peak_tree_pss_mb"] / base["peak_tree_pss_mb"], 2),
        }
        for name, r in runs.items()
        if name != "nnunet"
    }
    total = time.perf_counter() - started
    measured = args.epochs - 1
    result = {
        "benchmark": "train",
        "data": str(args.data),
        "cases": len(list((args.data / "imagesTr").glob("*_0000.*"))),
        "machine": machine(load_before),
        "versions": versions,
        "settings": {
            "patch": args.patch,
            "batch": args.batch,
            "epochs": args.epochs,
            "iterations_per_epoch": args.iterations,
            "measured_epoch": measured,
            "iterations_before_validation": args.epochs * args.iterations,
            "workers": args.workers,
            "nnunet_val_iterations_per_epoch": args.val_iterations,
            "tumorfm_val_batches": TUMORFM_VAL_BATCHES,
            "nnunet_plans": PLANS,
            "nnunet_trainer": f"{TRAINER} ({trainer_file})",
            "recipes": "each tool's own: nnU-Net softmax CE + Dice, lr 1e-2, wd 3e-5; tumorfm "
            "sigmoid BCE + batch Dice (partial-label), lr 1e-3, wd 1e-3; both SGD Nesterov 0.99, "
            "poly lr, deep supervision, grad clip 12",
            "networks": {"tumorfm": ours, "nnunet": theirs},
            "params_ratio_nnunet_vs_tumorfm": round(params_ratio, 3),
        },
        "preprocess": preprocessed,
        "runs": runs,
        "ratio_tumorfm_vs_nnunet": ratio,
        "gmacs_per_iteration_ratio_nnunet_vs_tumorfm": round(
            theirs["forward_backward_gmacs"] / ours["forward_backward_gmacs"], 2
        ),
        "target_ratio": TARGET_RATIO,
        "meets_target": {
            name: r["iterations_per_second"] >= TARGET_RATIO for name, r in ratio.items()
        },
        "notes": [
            "iterations/s: the training loop of the last epoch (data loading included, validation "
            "and checkpoints excluded), from each tool's own timing: tumorfm's log.jsonl, "
            "nnU-Net's through nnUNetTrainerTrainBench's timestamps around its loop",
            "pseudo Dice: each tool's own validation patches and split after the same number of "
            "iterations; not the same cases, so only a sanity check, not a quality comparison",
            "memory: RSS summed over the process tree double-counts pages shared by forked "
            "workers; PSS counts them once",
            "same parameter count is not the same arithmetic: GMAC per iteration (forward + "
            "backward, convs and linear layers, FlopCounterMode) differ, see settings.networks; "
            "gmacs_per_second of each run is that count times its iterations/s",
            "other_processes_cpu_share: CPU time of processes not started by this benchmark, "
            "as a share of all CPUs during the run (the machine may be shared)",
        ],
        "total_seconds": round(total, 1),
        "waited_for_other_work_seconds": round(WAITED[0], 1),
        "discarded_attempts": sum(len(r["discarded_attempts"]) for r in runs.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    labels = {
        "nnunet": "nnU-Net v2 (fp32)",
        "tumorfm": f"tumorfm ({runs['tumorfm']['precision']}, default)",
        "tumorfm_fp32": "tumorfm (fp32)",
    }
    print(
        f"\npatch {'x'.join(map(str, args.patch))}, batch {args.batch}, {args.epochs} epochs x "
        f"{args.iterations} iterations (the last epoch measured), {args.workers} loader workers, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"networks: {TSFM} {ours['params']:,} params, "
        f"{ours['forward_backward_gmacs']:.0f} GMAC/it; "
        f"nnU-Net PlainConvUNet {theirs['params']:,} params ({params_ratio:.3f}x), "
        f"{theirs['forward_backward_gmacs']:.0f} GMAC/it, features {theirs['features_per_stage']}"
    )
    print(
        f"{'':<24}{'it/s':>8}{'s/it':>8}{'GMAC/s':>8}{'data wait':>11}{'peak RSS MB':>13}"
        f"{'peak PSS MB':>13}{'pseudo Dice':>13}{'wall s':>8}{'others CPU':>12}"
    )
    for name, r in runs.items():
        print(
            f"{labels[name]:<24}{r['iterations_per_second']:>8.4f}"
            f"{r['seconds_per_iteration']:>8.2f}{r['gmacs_per_second']:>8.1f}"
            f"{r['data_wait_share']:>11.1%}{r['peak_tree_rss_mb']:>13.0f}"
            f"{r['peak_tree_pss_mb']:>13.0f}{r['pseudo_dice']:>13.4f}{r['wall_seconds']:>8.0f}"
            f"{r['other_processes_cpu_share']:>12.0%}{'  DISTURBED' if r['disturbed'] else ''}"
        )
    mid, lo, hi = base["iteration_seconds_median_min_max"]
    print(
        f"nnU-Net per-iteration seconds in the measured epoch: median {mid:.2f} ({lo:.2f}-{hi:.2f})"
    )
    for name, r in ratio.items():
        print(
            f"ratio {labels[name]} / nnU-Net: {r['iterations_per_second']:.2f}x iterations/s "
            f"(target {TARGET_RATIO}x, higher is better), peak PSS {r['peak_tree_pss']:.2f}x"
        )
    print(
        f"nnU-Net's network does {result['gmacs_per_iteration_ratio_nnunet_vs_tumorfm']:.1f}x the "
        f"multiply-adds of {TSFM} per iteration; per multiply-add, tumorfm runs at "
        + ", ".join(
            f"{r['gmacs_per_second'] / base['gmacs_per_second']:.2f}x ({r['precision']})"
            for name, r in runs.items()
            if name != "nnunet"
        )
        + " nnU-Net's rate"
    )
    print(
        f"preprocess: nnU-Net {preprocessed['nnunet_seconds']:.0f} s, tumorfm "
        f"{preprocessed['tumorfm_seconds']:.0f} s; total {total / 60:.1f} min ("
        f"{WAITED[0] / 60:.1f} min waiting for other work, {result['discarded_attempts']} "
        "disturbed run(s) repeated)"
    )
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
