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
    make bench-env && .venv-bench/bin/python -m benchmarks.train
"""

from __future__ import annotations

import json
import os
import sys
import time
from functools import partial
from importlib.metadata import version
from pathlib import Path

from .common import (
    DATA,
    add_timeout,
    add_tumorfm,
    add_work_and_out,
    parser_for,
    require_nnunet,
    require_tumorfm,
)
from .measure import (
    WAITED,
    add_disturbance_options,
    git_state,
    machine,
    undisturbed,
    wait_until_idle,
)
from .nnunet_peer import (
    PLANS,
    TRAINER,
    bench_plans,
    install_trainer,
)
from .train_runs import (
    DATASET,
    TSFM,
    TUMORFM_VAL_BATCHES,
    preprocess,
    product_versions,
    train_nnunet,
    train_tumorfm,
    tumorfm_network,
)

TARGET_RATIO = 2.5


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--data", type=Path, default=DATA / DATASET)
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
    add_timeout(parser, 1500)
    add_disturbance_options(parser, "training run")
    add_tumorfm(parser)
    add_work_and_out(parser, "train")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first is warm-up")
    require_nnunet("nnUNetv2_plan_and_preprocess", "nnUNetv2_train")
    require_tumorfm(args.tumorfm)
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

    def attempt(train, network: dict, idle: float | None) -> dict:
        r = train()
        r["cpu_busy_share_before_start"] = idle
        r["gmacs_per_second"] = network["forward_backward_gmacs"] * r["iterations_per_second"]
        print(
            f"  {r['iterations_per_second']:.4f} it/s ({r['precision']}); other processes "
            f"took {r['other_processes_cpu_share']:.0%} of the CPUs meanwhile",
            flush=True,
        )
        return r

    def without_epochs(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "epochs"}

    runs = {}
    for name, (train, network) in plan.items():
        r, _, discarded = undisturbed(partial(attempt, train, network), args, without_epochs)
        r["disturbed"] = r["other_processes_cpu_share"] > args.max_disturbance
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
