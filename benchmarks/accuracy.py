"""Accuracy, the paper's Table 1 protocol: tumorfm, nnU-Net v2 and MONAI's SwinUNETR on real scans.

Datasets: the soft-tissue sarcoma CTs (Dataset101_SarcomaCT, 36 cases) and the glioblastoma T1 MRs
(Task102_BrainTumour, 16 scans of 8 patients), each with a fixed split (seed 0): 20% of the
sarcoma cases, and 2 of the 8 brain patients (both their scans: no patient on both sides) are
held out. Every model trains `--iterations` (x `--budget`) iterations on the rest, with the same
patch and batch, at the lowres plan (`--config`: a spacing at which the patch holds most of a
case; nnU-Net is given tumorfm's; the glioblastoma slabs keep full resolution and a 32x128x128
patch, FULLRES_AT_LOWRES), then segments the held-out scans without mirroring; `tumorfm
evaluate` scores every model's label maps against the truth (Dice, HD95, NSD at 2 mm). Each model
trains once per seed (`--seeds`, default 0 1 2) on the same split (tumorfm's pretraining holds the
split's held-out cases out, so one split keeps it paid once); rows are the mean and standard
deviation over seeds (benchmarks/seeds.py). A seed takes about three hours here: a run keeps the
rows a former run of the same settings wrote to its results file (`--fresh` measures them again),
and an nnU-Net or SwinUNETR training a session's end stopped continues from its last saved state
(nnU-Net's epoch, SwinUNETR's 25 iterations), so the seeds can be measured over several sessions.

  tumorfm    `tumorfm pretrain` tsfm-tiny on a pool of both sets' training cases (the split file
             keeps the held-out ones out), the single real cases and the four phantom sites, then
             `tumorfm finetune` per dataset (`--split`), `tumorfm predict --no-mirror`.
  nnU-Net v2 `nnUNetv2_plan_and_preprocess`, `nnUNetv2_train` with nnU-Net's own recipe on the
             same split (splits_final.json), patch and batch, a PlainConvUNet of tumorfm's
             parameter count (benchmarks/nnunet_peer.py), `nnUNetv2_predict --disable_tta`.
  SwinUNETR  MONAI's network on tumorfm's patches and pre/post-processing (benchmarks/swinunetr.py).

tumorfm's pretraining is extra compute the others do not get: the paper's point is that it is
paid once. Its time is reported on its own row. Wall time and peak memory (PSS of the process
tree) of each training and prediction. `--full` is for a GPU: 250 iterations per epoch and the
paper's budgets (`--device cuda --patch 64 160 192` for nnU-Net's own sarcoma patch).

Run from the repository root in the benchmark environment (with the defaults on 2 CPUs, about 3 h
a seed and the pretraining once; `--seeds 0` in one session and `--seeds 1 2` in the next add up):
    make bench-env && .venv-bench/bin/python -m benchmarks.accuracy [--seeds 0] [--budget 0.5]
Writes benchmarks/results/accuracy.json. The models themselves: benchmarks/accuracy_arms.py.
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

from . import seeds
from .accuracy_arms import DATASETS, nnunet_arm, plan_of, pretrain, swinunetr_arm, tumorfm_arm
from .accuracy_cases import fixed_split, held_out_folders, recorded, same, to_measure
from .common import (
    DATA,
    add_timeout,
    add_tumorfm,
    add_work_and_out,
    case_ids,
    command_line,
    parser_for,
    require_nnunet,
    require_tumorfm,
)
from .measure import cpu, git_state, machine
from .support import add_plan_and_seeds


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--budget", type=float, default=1.0, help="scales every training budget")
    parser.add_argument("--iterations", type=int, default=400, help="per dataset, every model")
    parser.add_argument("--pretrain-iterations", type=int, default=800)
    parser.add_argument("--per-epoch", type=int, default=40, help="iterations per epoch")
    parser.add_argument("--model", default="tsfm-tiny")
    parser.add_argument("--swin-features", type=int, default=12, help="SwinUNETR feature size")
    add_plan_and_seeds(parser, "each model trains once per seed, on one fixed split")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument(
        "--models",
        nargs="+",
        default=["tumorfm", "nnunet", "swinunetr"],
        choices=["tumorfm", "nnunet", "swinunetr"],
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="for a GPU: 250 iterations per epoch, "
        "the paper's budgets; add --patch 64 160 192 for nnU-Net's own patch",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fresh", action="store_true", help="pretrain and measure every row again")
    add_timeout(parser, 3600, "short command")
    add_tumorfm(parser)
    add_work_and_out(parser, "accuracy")
    args = parser.parse_args()
    if args.full:
        args.per_epoch, args.iterations, args.pretrain_iterations = 250, 250 * 100, 250 * 1000
        args.config = "fullres"  # a GPU patch holds the case at full resolution
    if "nnunet" in args.models:
        require_nnunet()
    require_tumorfm(args.tumorfm)
    args.models = [m for m in ("tumorfm", "nnunet", "swinunetr") if m in args.models]
    for folder, *_ in DATASETS.values():
        if not (args.data / folder / "dataset.json").is_file():
            sys.exit(f"{args.data / folder}: dataset missing (give --data)")
    started, load_before = time.perf_counter(), os.getloadavg()
    work = args.work.resolve()
    (work / "runs").mkdir(parents=True, exist_ok=True)
    splits = {
        name: fixed_split(name, case_ids(args.data / folder))
        for name, (folder, *_) in DATASETS.items()
    }
    before = {} if args.fresh else recorded(args.out, args)
    rows, pretrained = before.get("rows_per_seed", []), before.get("pretrain")
    sessions = before.get("sessions", [])
    epochs = max(1, round(args.iterations * args.budget / args.per_epoch))

    def write(complete: bool) -> None:
        """After every model, so a failure later keeps what was measured ("complete": false)."""
        measured = sorted({r["seed"] for r in rows})
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        command, host = command_line("accuracy"), machine(load_before)
        session = {"command": command, **cpu(),
                   "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
        result = {
            "benchmark": "accuracy",
            "command": command,
            "complete": complete,
            "machine": host,
            "versions": {
                "torch_bench_env": version("torch"),
                "monai": version("monai"),
                "nnunetv2": version("nnunetv2"),
                **git_state(),
            },
            "settings": settings
            | {
                "seeds": measured,
                "plans": {
                    name: dict(zip(("config", "patch"), plan_of(args, name))) for name in DATASETS
                },
            },
            "splits": splits,
            "pretrain": pretrained,
            "sessions": [*sessions, session],
            "rows_per_seed": rows,
            "rows": seeds.merge(
                {s: [r for r in rows if r["seed"] == s] for s in measured},
                ("dataset", "model", "cases", "iterations", "parameters"),
                ["dice", "hd95", "nsd", "train_seconds", "predict_seconds"],
            ),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")

    for seed in args.seeds:  # seed by seed: a session that ends midway leaves whole seeds
        for name in args.datasets:
            folder = args.data / DATASETS[name][0]
            split_file = work / f"split-{name}.json"
            split_file.write_text(json.dumps([splits[name]], indent=1))  # nnU-Net's format
            images, labels = held_out_folders(folder, splits[name], work / "held-out" / name)
            config, patch = plan_of(args, name)
            common = {"dataset": name, "cases": len(splits[name]["val"]), "seed": seed,
                      "config": config, "patch": patch,
                      "iterations": epochs * args.per_epoch}  # fmt: skip
            for model in to_measure(args, rows, seed, name):
                if model == "tumorfm":
                    pretrained = pretrain(args, work, splits)
                    row = tumorfm_arm(args, work, name, split_file, images, labels, epochs, seed)
                elif model == "nnunet":
                    row = nnunet_arm(args, work, name, splits[name], images, labels, epochs, seed)
                else:
                    iterations = epochs * args.per_epoch
                    row = swinunetr_arm(
                        args, work, name, split_file, images, labels, iterations, seed
                    )
                timing = {f"{k}_seconds": row[k]["seconds"] for k in ("train", "predict")}
                rows = [r for r in rows if not same(r, name, model, seed)]
                rows.append({**common, "arm": model, **row, **timing, "machine": cpu()})
                write(complete=False)
                print(f"{name} {row['model']}, seed {seed}: Dice {row['dice']:.3f}", flush=True)
    write(complete=True)
    for r in rows:
        print(
            f"{r['dataset']:<11}{r['model']:<55}seed {r['seed']}  {r['dice']:.3f}  "
            f"HD95 {r['hd95']:.1f}  NSD {r['nsd']:.3f}  train {r['train']['seconds']:.0f} s"
        )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
