"""Transfer, on real scans: the paper's Table 2 protocol on the soft-tissue sarcoma CT set.

1. Pretrain `--model` (tsfm-tiny: what fits 2 CPU cores) on a pool that excludes the sarcoma set:
   the 16 glioblastoma T1 MR scans (Task102_BrainTumour), the single real cases of
   ../shared/data/cases (lung1 CT tumour, brain1 T1 MR tumour, breast1 MR lesion; each written as
   a one-case nnU-Net raw dataset) and the four synthetic CT phantom sites (`tumorfm phantom`),
   with `tumorfm preprocess` and `tumorfm pretrain` (1/sqrt(n) dataset sampling, partial-label
   loss).
2. `tumorfm transfer-study Dataset101_SarcomaCT --from PRETRAINED --epochs B1 B2 ...`: at each
   budget the same network is fine-tuned from the pretrained weights and trained from scratch
   (fresh weights, same recipe) on tumorfm's fixed split (20% of the 36 cases held out, seed 0);
   each final model segments the held-out cases (no mirroring), which are scored by
   `tumorfm evaluate` (Dice, HD95, NSD at 2 mm).
3. nnU-Net v2 on the same split (written as its splits_final.json fold 0), with the same patch and
   batch and a PlainConvUNet of the same parameter count (benchmarks/nnunet_peer.py's
   nnUNetPlans_bench), trained with `--factor` (10) times the iterations of the smallest tumorfm
   budget (`nnUNetv2_train ... -tr nnUNetTrainerTrainBench`: nnU-Net's own recipe, loss,
   augmentation and poly schedule over that budget), then `nnUNetv2_predict --disable_tta` on the
   held-out cases; its predictions are scored by the same command, as the study's reference row.

Targets (issue 6): pretrained at least 0.15 Dice above scratch at the smallest budget, and at
least nnU-Net v2's Dice with 10% of its iterations. Every model gets the same patch (default
32x64x64: nnU-Net's own plan, 64x160x192 with batch 2, trains at ~8 s per 64^3 iteration on this
CPU); `--full` runs nnU-Net's own patch and the paper's budgets, for a GPU (`--device cuda`).

Run from the repository root in the benchmark environment (~80 min with the defaults on 2 CPUs):
    make bench-env && .venv-bench/bin/python benchmarks/transfer.py
Writes benchmarks/results/transfer.json (settings, machine, every row, the targets).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path

import SimpleITK as sitk
import yaml
from measure import git_state, machine, run
from nnunet_peer import PLANS, TRAINER, bench_plans, install_trainer, nnunet_env

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent
SARCOMA_ID, SARCOMA = 101, "Dataset101_SarcomaCT"
PARENTS = {"liver_tumour": "liver", "pancreas_tumour": "pancreas"}  # the phantoms' tumours
SINGLES = {  # case -> (dataset folder, modality, class name of label 1)
    "lung1": ("Dataset811_Lung1", "CT", "lung_tumour"),
    "brain1": ("Dataset812_Brain1", "MR", "brain_tumour"),
    "breast1": ("Dataset813_Breast1", "MR", "breast_lesion"),
}
PHANTOMS = {
    "phantom_liver": ("Dataset901_PhantomLiver", {1: "liver", 2: "liver_tumour"}),
    "phantom_kidney": (
        "Dataset902_PhantomKidney",
        {1: "kidney_left", 2: "kidney_right", 3: "kidney_tumour"},
    ),
    "phantom_pancreas": ("Dataset903_PhantomPancreas", {1: "pancreas", 2: "pancreas_tumour"}),
    "phantom_multi_organ": (
        "Dataset904_PhantomMultiOrgan",
        {
            1: "stomach",
            2: "liver",
            3: "spleen",
            4: "pancreas",
            5: "kidney_left",
            6: "kidney_right",
            7: "aorta",
        },
    ),  # fmt: skip
}


def single_case_dataset(case: str, cases: Path, out: Path) -> dict:
    """One real NRRD case as a one-case nnU-Net raw dataset; its pool entry."""
    folder, modality, label = SINGLES[case]
    root = out / folder
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(cases / f"{case}_image.nrrd"))
    mask = sitk.ReadImage(str(cases / f"{case}_label.nrrd"))
    mask = sitk.Cast(mask > 0, sitk.sitkUInt8)
    mask.CopyInformation(image)
    sitk.WriteImage(image, str(root / "imagesTr" / f"{case}_0000.nii.gz"))
    sitk.WriteImage(mask, str(root / "labelsTr" / f"{case}.nii.gz"))
    dataset = {
        "name": case,
        "channel_names": {"0": modality},
        "labels": {"background": 0, label: 1},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return {"name": case, "path": str(root), "labels": {1: label}}


def support_datasets(tumorfm: Path, data: Path, work: Path, phantom_cases: int, timeout: float):
    """Pool entries every pretraining here shares: the single real cases and the phantom sites
    (written into `work` on first use)."""
    phantoms = work / "phantoms"
    if not (phantoms / PHANTOMS["phantom_multi_organ"][0] / "dataset.json").is_file():
        command = [str(tumorfm), "phantom", "-o", str(phantoms), "--cases", str(phantom_cases)]
        run(command, dict(os.environ), work / "phantom.log", timeout, "phantoms")
    datasets = [single_case_dataset(c, data / "cases", work / "singles") for c in SINGLES]
    return datasets + [
        {"name": name, "path": str(phantoms / folder), "labels": labels}
        for name, (folder, labels) in PHANTOMS.items()
    ]


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
    pool = {
        "name": "transfer-pretrain",
        "description": "every real and synthetic set here except the sarcoma CT set",
        "parents": PARENTS,
        "datasets": datasets,
    }
    path = work / "pretrain-pool.yaml"
    path.write_text(yaml.safe_dump(pool, sort_keys=False))
    return path


def pretrain(args, work: Path) -> dict:
    out = work / "pretrain"
    if (out / "last" / "config.json").is_file() and not args.fresh:
        print(f"pretraining: reusing {out}")
        return json.loads((work / "pretrain.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    pool, cache = pretrain_pool(args, work), work / "pretrain-cache"
    command = [str(args.tumorfm), "preprocess", str(pool), "-o", str(cache)]
    command += ["--workers", str(args.workers)]
    log = work / "pretrain-preprocess.log"
    prep = run(command, dict(os.environ), log, args.timeout, "tumorfm preprocess (pool)")
    command = [str(args.tumorfm), "pretrain", str(cache), "-o", str(out), "--profile", "cpu"]
    command += ["--model", args.model, "--patch", *map(str, args.patch)]
    command += ["--batch", str(args.batch), "--epochs", str(args.pretrain_epochs)]
    command += ["--iterations", str(args.iterations), "--workers", str(args.workers)]
    command += ["--val-every", str(args.pretrain_epochs), "--device", args.device]
    train = run(command, dict(os.environ), work / "pretrain.log", args.timeout * 4,
                "tumorfm pretrain")  # fmt: skip
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    result = {
        "pool": yaml.safe_load(pool.read_text()),
        "command": " ".join(command),
        "iterations": args.pretrain_epochs * args.iterations,
        "preprocess_seconds": prep["wall_seconds"],
        "train_seconds": train["wall_seconds"],
        "peak_mb": train.get("peak_tree_pss_mb"),
        "val_mean_dice": last.get("val_mean_dice"),
        "val_dice": last.get("val_dice"),
    }
    (work / "pretrain.json").write_text(json.dumps(result, indent=1))
    return result


def transfer_study(args, work: Path, reference: Path | None) -> dict:
    command = [str(args.tumorfm), "transfer-study", str(args.data / SARCOMA)]
    command += ["--from", str(work / "pretrain" / "last"), "-o", str(work / "study")]
    command += ["--epochs", ",".join(map(str, args.budgets)), "--iterations", str(args.iterations)]
    command += ["--patch", *map(str, args.patch), "--workers", str(args.workers)]
    command += ["--reference", f"nnunet={reference}"] if reference else []
    what = "tumorfm transfer-study" + (" (+ nnU-Net row)" if reference else "")
    process = run(command, dict(os.environ), work / "study.log", args.timeout * 4, what)
    study = json.loads((work / "study" / "study.json").read_text())
    return {"command": " ".join(command), "wall_seconds": process["wall_seconds"], **study}


def nnunet(args, work: Path, split: dict, target_params: int) -> dict:
    """Plan, preprocess, train on tumorfm's split with factor x the smallest budget, predict."""
    nn = work / "nnunet"
    env = nnunet_env(nn, args.workers)
    raw, pre = nn / "nnUNet_raw", nn / "nnUNet_preprocessed"
    for folder in (raw, pre, nn / "nnUNet_results"):
        folder.mkdir(parents=True, exist_ok=True)
    if not (raw / SARCOMA).exists():
        (raw / SARCOMA).symlink_to((args.data / SARCOMA).resolve())
    folder = pre / SARCOMA
    if not (folder / "nnUNetPlans.json").is_file():
        command = [str(BIN / "nnUNetv2_plan_and_preprocess"), "-d", str(SARCOMA_ID)]
        command += ["-c", "3d_fullres", "-np", str(args.workers), "--no_pbar"]
        run(command, env, nn / "preprocess.log", args.timeout * 2, "nnU-Net preprocess")
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    patch = args.patch or plans["configurations"]["3d_fullres"]["patch_size"]
    plans, network = bench_plans(plans, patch, args.batch, 2, target_params)
    (folder / f"{PLANS}.json").write_text(json.dumps(plans, indent=2))
    (folder / "splits_final.json").write_text(json.dumps([split]))
    install_trainer()
    epochs = args.factor * min(args.budgets)
    env = {
        **env,
        "TRAIN_BENCH_EPOCHS": str(epochs),
        "TRAIN_BENCH_ITERATIONS": str(args.iterations),
        "TRAIN_BENCH_VAL_ITERATIONS": str(args.nnunet_val_iterations),
    }
    results = nn / "nnUNet_results" / SARCOMA / f"{TRAINER}__{PLANS}__3d_fullres" / "fold_0"
    command = [str(BIN / "nnUNetv2_train"), str(SARCOMA_ID), "3d_fullres", "0", "-p", PLANS]
    command += ["-tr", TRAINER, "-device", args.device]
    if not (results / "checkpoint_final.pth").is_file() or args.fresh:
        shutil.rmtree(results, ignore_errors=True)
        train = run(command, env, nn / "train.log", args.timeout * 8, "nnU-Net train")
        (nn / "train.json").write_text(json.dumps(train))
    train = json.loads((nn / "train.json").read_text())
    images = nn / "validation_images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    for case in split["val"]:
        name = f"{case}_0000.nii.gz"
        (images / name).symlink_to((args.data / SARCOMA / "imagesTr" / name).resolve())
    predictions = nn / "predictions"
    shutil.rmtree(predictions, ignore_errors=True)
    predict_command = [str(BIN / "nnUNetv2_predict"), "-i", str(images), "-o", str(predictions)]
    predict_command += ["-d", str(SARCOMA_ID), "-p", PLANS, "-tr", TRAINER, "-c", "3d_fullres"]
    predict_command += ["-f", "0", "--disable_tta", "-device", args.device, "-npp", "0"]
    predict_command += ["-nps", "0", "-chk", "checkpoint_final.pth"]
    predict = run(predict_command, env, nn / "predict.log", args.timeout, "nnU-Net predict")
    return {
        "train_command": " ".join(command),
        "predict_command": " ".join(predict_command),
        "network": network,
        "patch": list(patch),
        "epochs": epochs,
        "iterations": epochs * args.iterations,
        "train_seconds": train["wall_seconds"],
        "train_peak_mb": train.get("peak_tree_pss_mb"),
        "predict_seconds": predict["wall_seconds"],
        "predictions": str(predictions),
    }


def parameter_count(preset: str, patch) -> int:
    """The network's parameters (single output, no deep-supervision heads): nnU-Net's target."""
    import torch

    from tumorfm.model import create_model

    with torch.device("meta"):
        return sum(p.numel() for p in create_model(preset, 1, 1, tuple(patch)).parameters())


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="../shared/data")
    parser.add_argument("--model", default="tsfm-tiny")
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64], metavar=("Z", "Y", "X"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=40, help="per epoch, every model")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 4], help="epochs")
    parser.add_argument("--factor", type=int, default=10, help="nnU-Net: x the smallest budget")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--phantom-cases", type=int, default=8, help="per phantom site")
    parser.add_argument("--nnunet-val-iterations", type=int, default=5)
    parser.add_argument("--skip-nnunet", action="store_true", help="tumorfm rows only")
    parser.add_argument("--full", action="store_true",
                        help="for a GPU: nnU-Net's own patch, 250 iterations per epoch, the "
                        "paper's budgets (50 and 100 epochs; nnU-Net 1000)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda (every model)")
    parser.add_argument("--fresh", action="store_true", help="retrain what a former run left")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds, per short command")
    parser.add_argument("--tumorfm", type=Path, default=ROOT / ".venv" / "bin" / "tumorfm")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "transfer")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "transfer.json"
    )
    args = parser.parse_args()
    if args.full:
        args.patch, args.iterations, args.budgets, args.pretrain_epochs = None, 250, [50, 100], 1000
        args.factor = 20  # nnU-Net's 1000 epochs vs 50 (5%) and 100 (10%)
    if not args.skip_nnunet and not (BIN / "nnUNetv2_train").exists():
        sys.exit("nnU-Net v2 is not in this environment: run `make bench-env`, use .venv-bench")
    if not args.tumorfm.exists():
        sys.exit(f"{args.tumorfm}: no tumorfm in the product environment; run `make test` first")
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
    pretrained = pretrain(args, work)
    study = transfer_study(args, work, None)
    split_file = work / "study" / f"pretrained-{min(args.budgets)}" / "split.json"
    split = next(iter(json.loads(split_file.read_text()).values()))
    reference = None
    if not args.skip_nnunet:
        reference = nnunet(args, work, split, parameter_count(args.model, args.patch))
        study = transfer_study(args, work, Path(reference["predictions"]))
    rows = study["rows"]
    smallest = min(args.budgets)

    def dice(arm: str, epochs: int | None) -> float | None:
        return next((r["mean_dice"] for r in rows if r["arm"] == arm and r["epochs"] == epochs),
                    None)  # fmt: skip

    gap = dice("pretrained", smallest) - dice("scratch", smallest)
    targets = {"pretrained_minus_scratch_at_smallest_budget": round(gap, 4),
               "meets_gap_0.15": gap >= 0.15}  # fmt: skip
    if reference:
        tenth = reference["iterations"] // 10
        at_tenth = [r for r in rows if r["arm"] == "pretrained" and r["iterations"] <= tenth]
        best = max((r["mean_dice"] for r in at_tenth), default=None)
        targets.update(
            nnunet_dice=dice("nnunet", None),
            pretrained_dice_with_at_most_10pct_of_nnunet_iterations=best,
            meets_nnunet_with_10pct=best is not None and best >= dice("nnunet", None),
        )
    result = {
        "benchmark": "transfer",
        "command": " ".join([".venv-bench/bin/python benchmarks/transfer.py", *sys.argv[1:]]),
        "machine": machine(load_before),
        "versions": {
            "torch_bench_env": version("torch"),
            "SimpleITK": sitk.Version_VersionString(),
            **({"nnunetv2": version("nnunetv2")} if reference else {}),
            **git_state(),
        },  # fmt: skip
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pretrain": pretrained,
        "study": {k: v for k, v in study.items() if k != "rows"},
        "nnunet": reference,
        "rows": rows,
        "targets": targets,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nsarcoma CT, {len(split['val'])} held-out cases, patch {args.patch}:")
    print(f"{'model':<12}{'iterations':>11}{'Dice':>8}{'HD95 mm':>9}{'NSD':>7}")
    for r in rows:
        it = r["iterations"] if r["iterations"] is not None else reference["iterations"]
        print(f"{r['arm']:<12}{it:>11}{_fmt(r['mean_dice']):>8}"
              f"{_fmt(r.get('sarcoma_hd95')):>9}{_fmt(r.get('sarcoma_nsd')):>7}")  # fmt: skip
    print(json.dumps(targets, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
