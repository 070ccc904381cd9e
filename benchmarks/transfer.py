"""Transfer, on real scans: the paper's Table 2 protocol on the soft-tissue sarcoma CT set.

1. Pretrain `--model` (tsfm-tiny: what fits 2 CPU cores) on a pool that excludes the sarcoma set:
   the 16 glioblastoma T1 MR scans (Task102_BrainTumour), the single real cases of
   ../shared/data/cases (lung1 CT tumour, brain1 T1 MR tumour, breast1 MR lesion; each written as
   a one-case nnU-Net raw dataset) and the four synthetic CT phantom sites (`tumorfm phantom`),
   with `tumorfm preprocess --config lowres` (a spacing at which the patch holds most of a case)
   and `tumorfm pretrain` (1/sqrt(n) dataset sampling, partial-label loss).
2. Per seed (`--seeds`, default 0 1 2), `tumorfm transfer-study Dataset101_SarcomaCT --from
   PRETRAINED --seed S --epochs B1 B2 ...`: at each budget the same network is fine-tuned from
   the pretrained weights and trained from scratch (fresh weights, same recipe) on that seed's
   split (20% of the 36 cases held out), at lowres as the bundle; each final model segments the
   held-out cases (no mirroring), scored by `tumorfm evaluate` (Dice, HD95, NSD at 2 mm).
3. nnU-Net v2 on each seed's split (a results folder per seed, fold 0 of a one-split
   splits_final.json), with the same patch, batch and lowres target spacing
   (nnUNetv2_preprocess with nnUNetPlans_bench) and a
   PlainConvUNet of the same parameter count (benchmarks/nnunet_peer.py), trained with `--factor`
   (10) times the iterations of the smallest tumorfm budget (`nnUNetv2_train ... -tr
   nnUNetTrainerTrainBench`: nnU-Net's own recipe over that budget), then `nnUNetv2_predict
   --disable_tta`; its predictions are scored by the same command, as each study's reference row.

Every row is reported as the mean and standard deviation over seeds (benchmarks/seeds.py); a
difference between two rows is compared seed by seed, on the same split. Targets (issue 14):
pretrained at least 0.15 Dice above scratch at the smallest budget, in the mean over seeds and
larger than the spread of the paired differences; and at least nnU-Net v2's Dice with 10% of its
iterations. `--full` runs nnU-Net's own patch at full resolution and the paper's budgets, for a
GPU (`--device cuda`).

Run from the repository root in the benchmark environment. Every seed's study runs first, then
nnU-Net on each seed's split (1,000 iterations: on 2 cores of an AMD EPYC without AVX-512, 17 s an
iteration undisturbed, 866 s an epoch of 50, about 5 hours a seed, the training step itself, not the
data: nnU-Net's own bench_epochs.jsonl, 2026-12-04; on a Zen-4 EPYC with AVX-512, 8 s an iteration,
seeds 1 and 2 in 2.4 and 2.5 hours, 2026-12-06; shipped_nnunet's 900 iterations of a larger net took
108 min on one with AVX-512); each step is written to the results file as it ends, with the seed's
split, and a later run of the same settings keeps what is recorded (a pretraining or an nnU-Net
training a session's end stopped continues from its last epoch), so the seeds and the nnU-Net rows
can span sessions (`--skip-nnunet`: the studies alone, nnU-Net in a later run):
    make bench-env && .venv-bench/bin/python -m benchmarks.transfer
Writes benchmarks/results/transfer.json (settings, machine, rows per seed, merged rows, targets,
each network's parameters and multiply-adds per iteration). A run with nothing left to measure
rewrites the summary and keeps the command, machine and versions of the run that measured.

`--synthesis` (issue 15 (c)) pretrains with online procedural liver tumours in half of
PhantomMultiOrgan's samples (benchmarks/support.py), in its own work folder, and writes
transfer_synthesis.json: does the pretrained-vs-scratch gap grow? The smallest budget is the one
the target reads, so `--budgets 2 --skip-nnunet` answers it in about 100 minutes on 2 CPUs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path

import SimpleITK as sitk
import yaml

from . import seeds
from .common import (
    DATA,
    add_timeout,
    add_tumorfm,
    add_work_and_out,
    command_line,
    logged_epochs,
    parser_for,
    pretrain_or_resume,
    require_nnunet,
    require_tumorfm,
    sha256,
)
from .measure import CPU_KEYS, cpu, git_state, machine, run
from .nnunet_peer import count_params, gmacs
from .support import (
    PARENTS,
    SYNTHETIC_LIVER_TUMOURS,
    add_plan_and_seeds,
    parameter_count,
    support_datasets,
)
from .transfer_nnunet import SARCOMA, nnunet, nnunet_row, planned_network

SYNTHETIC = "transfer_synthesis"  # --synthesis: its work folder and results file


def pretrain_pool(args, work: Path) -> Path:
    """The pool without the sarcoma set: brain MR, the single real cases, the phantom sites."""
    datasets = [
        {
            "name": "brain_mr",
            "path": str((args.data / "Task102_BrainTumour").resolve()),
            "labels": {1: "brain_tumour"},
        }
    ]
    datasets += support_datasets(args.tumorfm, args.data, work, args.phantom_cases, args.timeout)
    for dataset in datasets if args.synthesis else []:
        if spec := SYNTHETIC_LIVER_TUMOURS.get(dataset["name"]):
            dataset["synthesis"] = spec
    pool = {
        "name": "transfer-pretrain" + ("-synthetic" if args.synthesis else ""),
        "description": "every real and synthetic set here except the sarcoma CT set",
        "parents": PARENTS,
        "datasets": datasets,
    }
    path = work / "pretrain-pool.yaml"
    path.write_text(yaml.safe_dump(pool, sort_keys=False))
    return path


def pretrain(args, work: Path) -> dict:
    """The pretraining every seed's study starts from: reused once finished (pretrain.json is
    written at its end), resumed where a session ended midway, else run afresh."""
    out, record = work / "pretrain", work / "pretrain.json"
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
        record.unlink(missing_ok=True)
    if record.is_file() and (out / "last" / "config.json").is_file():
        print(f"pretraining: reusing {out}")
        return json.loads(record.read_text())
    pool, cache = pretrain_pool(args, work), work / "pretrain-cache"
    command = [str(args.tumorfm), "preprocess", str(pool), "-o", str(cache)]
    command += ["--workers", str(args.workers), "--config", args.config]
    command += ["--patch", *map(str, args.patch)]
    log = work / "pretrain-preprocess.log"
    prep = run(command, dict(os.environ), log, args.timeout, "tumorfm preprocess (pool)")
    command = [str(args.tumorfm), "pretrain", str(cache), "-o", str(out), "--profile", "cpu"]
    command += ["--model", args.model, "--patch", *map(str, args.patch)]
    command += ["--batch", str(args.batch), "--epochs", str(args.pretrain_epochs)]
    command += ["--iterations", str(args.iterations), "--workers", str(args.workers)]
    command += ["--val-every", str(args.pretrain_epochs), "--device", args.device]
    command = pretrain_or_resume(command, out)
    train = run(command, dict(os.environ), work / "pretrain.log", args.timeout * 4,
                "tumorfm pretrain")  # fmt: skip
    epochs = logged_epochs(out)
    last = epochs[-1]
    result = {
        "pool": yaml.safe_load(pool.read_text()),
        "command": " ".join(command),
        "iterations": args.pretrain_epochs * args.iterations,
        "preprocess_seconds": prep["wall_seconds"],
        "train_seconds": train["wall_seconds"],  # this session's part, where it was resumed
        "epochs_seconds": round(sum(epoch["seconds"] for epoch in epochs), 1),
        "resumed": "--resume" in command,
        "peak_mb": train.get("peak_tree_pss_mb"),
        "val_mean_dice": last.get("val_mean_dice"),
        "val_dice": last.get("val_dice"),
        "weights_sha256": sha256(out / "last" / "model.safetensors"),
    }
    record.write_text(json.dumps(result, indent=1))
    return result


def transfer_study(args, work: Path, seed: int, reference: Path | None) -> dict:
    """One seed's study (its split and initialisations); finished runs are reused."""
    out = work / f"study-seed{seed}"
    command = [str(args.tumorfm), "transfer-study", str(args.data / SARCOMA)]
    command += ["--from", str(work / "pretrain" / "last"), "-o", str(out), "--seed", str(seed)]
    command += ["--epochs", ",".join(map(str, args.budgets)), "--iterations", str(args.iterations)]
    command += ["--patch", *map(str, args.patch), "--workers", str(args.workers)]
    command += ["--reference", f"nnunet={reference}"] if reference else []
    what = f"tumorfm transfer-study, seed {seed}" + (" (+ nnU-Net row)" if reference else "")
    process = run(command, dict(os.environ), work / f"study-seed{seed}.log", args.timeout * 4, what)
    study = json.loads((out / "study.json").read_text())
    return {"command": " ".join(command), "wall_seconds": process["wall_seconds"], **study}


def study_split(work: Path, seed: int, budget: int) -> tuple[dict, list[float] | None]:
    """A seed's split (train/val case ids) and the lowres target spacing it was planned at."""
    run_folder = work / f"study-seed{seed}" / f"pretrained-{budget}"
    split = next(iter(json.loads((run_folder / "split.json").read_text()).values()))
    bundle = json.loads((run_folder / "last" / "config.json").read_text())
    (plan,) = bundle["plan"]["datasets"].values()
    lowres = plan.get("configuration") == "3d_lowres"
    return split, plan["target_spacing_zyx"] if lowres else None


SAME_RUN = ("model", "patch", "config", "batch", "iterations", "budgets", "factor",
            "pretrain_epochs", "phantom_cases", "full", "device", "synthesis")  # fmt: skip
PROVENANCE = ("command", "machine", "versions", "session_seconds")  # of the run that measured
ADDED_LATER = {"synthesis": False}  # settings a file recorded before they existed: their value


def recorded(out: Path, args) -> dict:
    """What a former run of these settings wrote to `out` (its seeds' rows, studies, nnU-Net
    runs, pretrainings), else {}: a run of three seeds outlasts a session and its work folder."""
    old = seeds.former_run(out, args, SAME_RUN, ADDED_LATER)
    if old is None or "pretrain_per_seed" not in old:
        return {}
    keys = ("studies", "nnunet", "rows_per_seed", "pretrain_per_seed")
    kept = {k: {int(seed): v for seed, v in (old.get(k) or {}).items()} for k in keys}
    ran_on = {k: v for k, v in old.get("machine", {}).items() if k in CPU_KEYS}
    for row in (row for rows in kept["rows_per_seed"].values() for row in rows):
        row.setdefault("machine", ran_on)  # rows recorded before rows named their CPU
    return kept


def network_costs(args, work: Path, references: dict) -> dict:
    """Each network's parameters and multiply-adds of a training iteration (forward and backward,
    `--batch` patches): matched by parameters, nnU-Net's PlainConvUNet keeps 32 features at full
    resolution, so its iteration costs several of tsfm's; the targets count iterations."""
    import torch

    from tumorfm.model import create_model

    with torch.device("meta"):
        model = create_model(args.model, 1, 1, tuple(args.patch))
        macs = gmacs(model, args.batch, args.patch)
    tumorfm = {"params": count_params(model),  # the model parameter_count builds, built once
               "forward_backward_gmacs": round(macs, 1),
               "features_per_stage": list(model.config.widths)}  # fmt: skip
    trained = next((ref["network"] for ref in references.values()), None)
    if trained is not None:
        theirs = {k: trained[k] for k in ("params", "forward_backward_gmacs", "features_per_stage")}
    else:
        theirs = planned_network(work, args.batch)
    return {"tumorfm": tumorfm, "nnunet": theirs}


def summarise(args, load_before, pretrained, studies, references, rows_per_seed) -> dict:
    """The results file: every seed's rows, the rows over seeds and the paired targets."""
    smallest = min(args.budgets)
    fields = ["mean_dice", "sarcoma_hd95", "sarcoma_nsd"]
    rows = seeds.merge(rows_per_seed, ("arm", "epochs", "iterations"), fields)
    gap = seeds.paired_difference(
        rows_per_seed, {"arm": "pretrained", "epochs": smallest},
        {"arm": "scratch", "epochs": smallest}, "mean_dice",
    )  # fmt: skip
    targets = {
        "pretrained_minus_scratch_at_smallest_budget": gap,
        "meets_gap_0.15": gap["mean"] is not None and gap["mean"] >= 0.15 and gap["beats_spread"],
    }
    if references:
        nnunet_iterations = next(iter(references.values()))["iterations"]
        tenth = max(
            (b for b in args.budgets if b * args.iterations <= nnunet_iterations // 10),
            default=None,
        )
        if tenth is not None:
            versus = seeds.paired_difference(
                rows_per_seed, {"arm": "pretrained", "epochs": tenth},
                {"arm": "nnunet", "epochs": None}, "mean_dice",
            )  # fmt: skip
            targets["pretrained_at_10pct_minus_nnunet"] = versus
            targets["meets_nnunet_with_10pct"] = versus["mean"] is not None and versus["mean"] >= 0
    return {
        "benchmark": "transfer",
        "command": command_line("transfer"),
        "machine": machine(load_before),
        "versions": {
            "torch_bench_env": version("torch"),
            "SimpleITK": sitk.Version_VersionString(),
            **({"nnunetv2": version("nnunetv2")} if references else {}),
            **git_state(),
        },  # fmt: skip
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pretrain": next(iter(pretrained.values())),
        "pretrain_per_seed": pretrained,
        "studies": studies,
        "nnunet": references or None,
        "rows_per_seed": rows_per_seed,
        "rows": rows,
        "targets": targets,
    }


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--data", type=Path, default=DATA, help="../shared/data")
    parser.add_argument("--model", default="tsfm-tiny")
    add_plan_and_seeds(parser, "one study per seed: its split and initialisation")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=50, help="per epoch, every model")
    parser.add_argument("--budgets", type=int, nargs="+", default=[2, 4, 8], help="epochs")
    parser.add_argument("--factor", type=int, default=10, help="nnU-Net: x the smallest budget")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--phantom-cases", type=int, default=8, help="per phantom site")
    parser.add_argument("--nnunet-val-iterations", type=int, default=5)
    parser.add_argument("--skip-nnunet", action="store_true", help="tumorfm rows only")
    parser.add_argument("--synthesis", action="store_true",
                        help="pretrain with online synthetic liver tumours in PhantomMultiOrgan "
                        "(issue 15 (c)): own work folder, transfer_synthesis.json")  # fmt: skip
    parser.add_argument("--full", action="store_true",
                        help="for a GPU: nnU-Net's own patch, 250 iterations per epoch, the "
                        "paper's budgets (50 and 100 epochs; nnU-Net 1000)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda (every model)")
    parser.add_argument("--fresh", action="store_true", help="retrain what a former run left")
    parser.add_argument("--workers", type=int, default=2)
    add_timeout(parser, 1800, "short command")
    add_tumorfm(parser)
    add_work_and_out(parser, "transfer")
    args = parser.parse_args()
    if args.synthesis:  # a pretraining of its own: never mixed with the one without synthesis
        for name in ("work", "out"):
            if getattr(args, name) == parser.get_default(name):
                default = parser.get_default(name)
                setattr(args, name, default.with_name(default.name.replace("transfer", SYNTHETIC)))
    if args.full:
        args.patch, args.iterations, args.budgets, args.pretrain_epochs = None, 250, [50, 100], 1000
        args.factor = 20  # nnU-Net's 1000 epochs vs 50 (5%) and 100 (10%)
        args.config = "fullres"  # a GPU patch holds the case at full resolution
    if not args.skip_nnunet:
        require_nnunet()
    require_tumorfm(args.tumorfm)
    if not (args.data / SARCOMA / "dataset.json").is_file():
        sys.exit(f"{args.data / SARCOMA}: the sarcoma CT set is missing")
    if args.patch is None:  # --full: nnU-Net's own patch for every model
        plans = args.work / "nnunet" / "nnUNet_preprocessed" / SARCOMA / "nnUNetPlans.json"
        if not plans.is_file():
            sys.exit(f"--full: run once without --full first to plan nnU-Net ({plans})")
        args.patch = json.loads(plans.read_text())["configurations"]["3d_fullres"]["patch_size"]
    started, load_before = time.perf_counter(), os.getloadavg()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    before = {} if args.fresh else recorded(args.out, args)
    studies, references = dict(before.get("studies", {})), dict(before.get("nnunet") or {})
    rows_per_seed = dict(before.get("rows_per_seed", {}))
    pretrained = dict(before.get("pretrain_per_seed", {}))

    former = json.loads(args.out.read_text()) if before else {}
    measured = False

    def write() -> None:  # after every step: a session may end at any point
        result = summarise(args, load_before, pretrained, studies, references, rows_per_seed)
        result["networks"] = network_costs(args, work, references)
        result["session_seconds"] = round(time.perf_counter() - started, 1)
        if not measured:  # the summary rewritten: where and by what code the rows were measured
            result |= {k: former[k] for k in PROVENANCE if k in former}
            result["summary_rewritten"] = {"command": command_line("transfer"), **git_state()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")

    order = args.seeds if args.skip_nnunet else [*args.seeds, *args.seeds]
    for turn, seed in enumerate(order):  # every seed's studies first, then nnU-Net on each
        if turn < len(args.seeds):
            if seed in rows_per_seed:
                print(f"seed {seed}: recorded in {args.out}, kept (--fresh measures it again)")
                continue
            pretrained[seed] = pretrain(args, work)
            studies[seed] = transfer_study(args, work, seed, None)
            split, spacing = study_split(work, seed, min(args.budgets))
            studies[seed] |= {"split": split, "lowres_spacing_zyx": spacing}
            ran_on = cpu()  # one look at the machine for the seed's rows
            rows_per_seed[seed] = [row | {"machine": ran_on} for row in studies[seed].pop("rows")]
        elif seed not in references:  # the seed's split, nnU-Net at tumorfm's lowres spacing
            study = studies[seed]
            params = parameter_count(args.model, args.patch)
            references[seed] = nnunet(args, work, study["split"], seed, params,
                                      study["lowres_spacing_zyx"])  # fmt: skip
            row = nnunet_row(args, work, seed, references[seed])
            rows_per_seed[seed].append(row | {"machine": cpu()})
        else:
            continue
        measured = True
        write()
    if not measured:  # nothing left to measure: the summary brought up to date all the same
        write()
    result = json.loads(args.out.read_text())
    rows, targets = result["rows"], result["targets"]
    held = [len(st["validation_cases"]) for st in studies.values()]
    nnunet_iterations = next(iter(references.values()), {}).get("iterations")
    print(f"\nsarcoma CT, held-out cases per seed {held}, patch {args.patch}, "
          f"seeds {sorted(rows_per_seed)}:")  # fmt: skip
    print(f"{'model':<12}{'iterations':>11}{'Dice mean':>11}{'std':>7}")
    for r in rows:
        it = r["iterations"] if r["iterations"] is not None else nnunet_iterations
        d = r["mean_dice"]
        print(f"{r['arm']:<12}{it:>11}{_fmt(d['mean']):>11}{_fmt(d['std']):>7}")
    print(json.dumps(targets, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
