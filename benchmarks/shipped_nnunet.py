"""The shipped bundle against nnU-Net v2 trained on its split for the same wall-clock time.

    .venv-bench/bin/python -m benchmarks.shipped_nnunet   # needs models/<bundle>, its results

nnU-Net v2 trains on the bundle's sarcoma training scans (the split of benchmarks/work/shipped), at
the bundle's lowres spacing, patch and batch, with a PlainConvUNet of the bundle's parameter count,
for as long as the bundle's pretraining took on this machine: its trainer re-plans its epochs after
each one so that the poly learning rate ends on the budget (nnunet_peer.TRAINER_SOURCE). It predicts
the held-out scans with test-time mirroring if the bundle was scored with it, and `tumorfm evaluate`
scores both in the scans' own geometry. Note the handicap: the bundle's pretraining split its time
between sarcomas and glioblastomas (configs/pools/real.yaml); nnU-Net spends all of it on sarcomas.
Results: benchmarks/results/shipped_nnunet.json (the README's shipped-model table reads it).
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import version
from pathlib import Path

from .accuracy_cases import held_out_folders
from .common import (
    BIN,
    DATA,
    RESULTS,
    ROOT,
    add_timeout,
    add_work_and_out,
    parser_for,
    require_nnunet,
)
from .measure import provenance, run
from .nnunet_peer import (
    PLANS,
    TRAINER,
    bench_plans,
    install_trainer,
    nnunet_env,
    predict_command,
    raw_and_planned,
    write_bench_plans,
)
from .scoring import case_scores, evaluated, stats
from .shipped_model import DATASETS
from .support import parameter_count

DATASET, DATASET_ID = "sarcoma_ct", 101


def bundle_plan(name: str) -> dict:
    """The sarcoma plan the shipped bundle records (its lowres spacing), so that this benchmark
    needs the shipped bundle and its results, not the work folder that trained it."""
    config = json.loads((ROOT / "models" / name / "config.json").read_text())
    return config["plan"]["datasets"][DATASET]


def train_and_predict(args, info: dict, budget: float, images: Path, mirror: bool) -> dict:
    """nnU-Net trained for `budget` seconds on the bundle's split; its held-out predictions
    (mirrored at test time when the bundle's were)."""
    t, nn = info["train"], args.work / "nnunet"
    env = nnunet_env(nn, 2)
    pre = raw_and_planned(args.data / DATASETS[DATASET][0], DATASET_ID, nn, env, args.timeout)
    spacing = bundle_plan(info["name"])["target_spacing_zyx"]
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    target = parameter_count(t["model"], t["patch"])
    plans, network = bench_plans(plans, t["patch"], t["batch"], 2, target, spacing)
    log = nn / "preprocess-bench.log"
    write_bench_plans(pre, plans, DATASET_ID, spacing, env, log, args.timeout, 2)
    (pre / "splits_final.json").write_text(json.dumps([info["split"][DATASET]]))
    install_trainer()
    env |= {
        "TRAIN_BENCH_SECONDS": str(budget),
        "TRAIN_BENCH_ITERATIONS": str(args.iterations or t["iterations"]),
        "TRAIN_BENCH_VAL_ITERATIONS": str(args.val_iterations),
    }
    results = nn / "nnUNet_results" / pre.name / f"{TRAINER}__{PLANS}__3d_fullres" / "fold_0"
    shutil.rmtree(results, ignore_errors=True)
    command = [str(BIN / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-p", PLANS,
               "-tr", TRAINER, "-device", "cpu"]  # fmt: skip
    train = run(command, env, nn / "train.log", budget * 2 + 3600, "nnU-Net train (time budget)")
    epochs = [json.loads(line) for line in (results / "bench_epochs.jsonl").open()]
    predictions = args.work / "predictions" / "nnunet"
    shutil.rmtree(predictions, ignore_errors=True)
    command = predict_command(images, predictions, DATASET_ID, 0, "cpu", mirror)
    predict = run(command, env, nn / "predict.log", args.timeout, "nnU-Net predict")
    return {
        "model": "nnU-Net v2 (PlainConvUNet, matched size, the bundle's lowres spacing and patch)",
        "parameters": network["params"],
        "network": network,
        "train_seconds": train["wall_seconds"],
        "train_peak_mb": train.get("peak_tree_pss_mb"),
        "epochs": len(epochs),
        "iterations": sum(e["iterations"] for e in epochs),
        "last_pseudo_dice": epochs[-1]["pseudo_dice"],
        "predict_seconds": predict["wall_seconds"],
        "predict_peak_mb": predict.get("peak_tree_pss_mb"),
        "predictions": predictions,
    }


def scored(predictions: Path, labels: Path, args) -> dict:
    log = args.work / "evaluate-nnunet.log"
    cases = case_scores(evaluated(predictions, labels, log, timeout=args.timeout))
    return {
        "cases": len(cases),
        **{m: stats([c[m] for c in cases.values()]) for m in ("dice", "hd95", "nsd")},
        "per_case_dice": {case: c["dice"] for case, c in cases.items()},
    }


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--budget", type=float, help="seconds (default: the bundle's pretraining CPU time / 2)"
    )
    parser.add_argument("--iterations", type=int, help="per epoch (default: the bundle's)")
    parser.add_argument("--val-iterations", type=int, default=5, help="nnU-Net's, per epoch")
    add_timeout(parser, 3600.0)
    add_work_and_out(parser, "shipped_nnunet", work="shipped")
    args = parser.parse_args()
    require_nnunet()
    info = bundle = json.loads((RESULTS / "shipped_model.json").read_text())
    # the pretraining shared the machine (its wall time counts other work's share): its CPU
    # seconds over the two cores are the wall time it would have taken alone
    budget = args.budget or info["pretrain"]["cpu_seconds"] / 2
    load = os.getloadavg()
    images, labels = held_out_folders(
        args.data / DATASETS[DATASET][0], info["split"][DATASET], args.work / "nnunet" / "held-out"
    )
    ours = bundle["scores"][DATASET]
    nnunet = train_and_predict(args, info, budget, images, ours["mirror"])
    nnunet |= scored(nnunet.pop("predictions"), labels, args)
    result = {
        "what": "the shipped bundle vs nnU-Net v2 trained on its split for its wall-clock time",
        "budget_seconds": budget,
        "bundle_pretrain_wall_seconds": info["pretrain"]["wall_seconds"],
        "budget_note": "the bundle's pretraining CPU seconds over the 2 cores (its wall time "
        "undisturbed), which it split between sarcoma and glioblastoma; nnU-Net spends it all "
        "on sarcoma; neither counts preprocessing",
        "held_out": info["split"][DATASET]["val"],
        "mirror": ours["mirror"],
        "tumorfm": {"bundle": bundle["name"], "train_seconds": budget, **ours},
        "nnunet": nnunet,
        "dice_difference": ours["dice"]["mean"] - nnunet["dice"]["mean"],
        "per_case_difference": {
            case: ours["per_case_dice"][case] - dice
            for case, dice in nnunet["per_case_dice"].items()
        },
        "nnunetv2": version("nnunetv2"),
        **provenance("shipped_nnunet", ".venv-bench", load),
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(
        f"sarcoma Dice: tumorfm {ours['dice']['mean']:.3f} +- {ours['dice']['std']:.3f}, "
        f"nnU-Net {nnunet['dice']['mean']:.3f} +- {nnunet['dice']['std']:.3f} "
        f"({nnunet['iterations']} iterations in {budget / 60:.0f} min)"
    )


if __name__ == "__main__":
    main()
