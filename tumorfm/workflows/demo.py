"""`tumorfm demo` (what `make demo` runs): the whole pipeline on synthetic phantoms, on a CPU.

Pretrain tsfm-tiny on three phantom sites (kidney, pancreas, multi-organ), fine-tune it on a
held-out site (liver and liver tumours, a class the pool never saw), segment that site's unseen
test cases, score them and write demo-output/report.html with a Dice table and overlay pictures.
Then the model shipped with tumorfm segments the real scans of tests/data (sarcoma CT, glioblastoma
MR, all held out of its training) and demo-output/real/<plan>/report.html show how it did.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import yaml

import tumorfm
from tumorfm.data.check import WARNING, check_dataset
from tumorfm.data.phantom import DEFAULT_SITES, write_phantom_pool
from tumorfm.data.pool import load_pool
from tumorfm.data.preprocess import preprocess_pool
from tumorfm.defaults import DEMO_PATCH
from tumorfm.errors import TumorFMError
from tumorfm.eval.evaluate import evaluate
from tumorfm.eval.report import report_from_evaluation
from tumorfm.eval.tables import format_summary
from tumorfm.files import ensure_writable, write_json
from tumorfm.infer.predict import predict
from tumorfm.infer.predictor import PredictOptions
from tumorfm.model.bundle import list_shipped
from tumorfm.train.config import make_config
from tumorfm.train.trainer import pretrain

SHIPPED = "tsfm-real-lowres"
REAL_SCANS = {  # the shipped model's plan -> a folder of real scans with labels (tests/data)
    "sarcoma_ct": "Dataset101_SarcomaCT",
    "brain_mr": "Task102_BrainTumour",
}
HELD_OUT = DEFAULT_SITES[0]  # PhantomLiver: its tumour class is new to the pretrained model
PRETRAIN_SITES = DEFAULT_SITES[1:]


def write_pool_file(folders: list[Path], path: Path, name: str = "phantom-demo") -> Path:
    """A pool file over phantom datasets: every local label keeps its own name as global name."""
    datasets = []
    for folder in folders:
        labels = json.loads((folder / "dataset.json").read_text())["labels"]
        dataset_name = re.sub(r"(?<!^)(?=[A-Z])", "_", folder.name.split("_", 1)[1]).lower()
        datasets.append(
            {
                "name": dataset_name,
                "path": os.path.relpath(folder, path.parent),
                "labels": {v: k for k, v in labels.items() if v != 0},
            }
        )
    classes = {name for d in datasets for name in d["labels"].values()}
    parents = {
        name: name.removesuffix("_tumour")
        for name in sorted(classes)
        if name.endswith("_tumour") and name.removesuffix("_tumour") in classes
    }
    pool = {"name": name, "parents": parents, "datasets": datasets}
    path.write_text(yaml.safe_dump(pool, sort_keys=False))
    return path


def _train(pool_file: Path, cache: Path, run: Path, workers: int, **config) -> tuple[dict, dict]:
    """Preprocess a pool and train on it; the demo's own run folder starts afresh every time."""
    pool = load_pool(pool_file)
    report = preprocess_pool(pool, cache, workers=workers, progress=True)
    shutil.rmtree(run, ignore_errors=True)
    settings = make_config("cpu", workers=min(workers, 2), **config)
    print(
        f"training {settings.model} on '{pool.name}' ({', '.join(pool.classes)}) for "
        f"{settings.epochs} x {settings.iterations_per_epoch} iterations, patch "
        f"{'x'.join(map(str, settings.patch_size))}"
    )
    last = pretrain(cache, run, settings)
    return last, {"pool": pool.summary(), "preprocess": report, "config": asdict(settings)}


def run_demo(
    out: Path,
    workers: int = 2,
    cases_per_site: int = 8,
    test_cases: int = 4,
    seed: int = 0,
    epochs: int = 6,
    iterations: int = 40,
    finetune_epochs: int = 8,
    patch_size: tuple[int, int, int] = DEMO_PATCH,
) -> dict:
    started = time.perf_counter()
    steps: dict[str, float] = {}  # seconds per step: where a slow machine spends the demo

    def done(step: str) -> None:
        steps[step] = round(time.perf_counter() - started - sum(steps.values()), 1)

    out = ensure_writable(Path(out))
    phantoms = out / "phantoms"
    print(f"1/7 writing synthetic phantom sites into {phantoms}")
    train_folders = write_phantom_pool(
        phantoms, cases_per_site=cases_per_site, seed=seed, progress=True
    )
    test_folder = write_phantom_pool(
        out / "test", cases_per_site=test_cases, seed=seed + 1, sites=(HELD_OUT,)
    )[0]
    done("phantoms")
    print("2/7 checking every dataset")
    for folder in [*train_folders, test_folder]:
        problems = [p for p in check_dataset(folder, workers=workers) if not p.startswith(WARNING)]
        if problems:
            raise TumorFMError("\n".join(problems))
    held_out = [f for f in train_folders if f.name == HELD_OUT.folder_name]
    others = [f for f in train_folders if f.name != HELD_OUT.folder_name]
    done("check")
    print(f"3/7 pretraining on {len(others)} sites (the {HELD_OUT.name} site is held out)")
    pool_file = write_pool_file(others, phantoms / "pretrain-pool.yaml")
    common = dict(
        iterations_per_epoch=iterations, val_every=max(1, epochs // 2), patch_size=patch_size
    )
    pretrained, pretrain_info = _train(
        pool_file, out / "cache" / "pretrain", out / "pretrain", workers, epochs=epochs, **common
    )
    done("pretrain")
    print(f"4/7 fine-tuning on the held-out {HELD_OUT.name} site ({cases_per_site} cases)")
    target_file = write_pool_file(held_out, phantoms / "finetune-pool.yaml", "phantom-liver")
    bundle = out / "pretrain" / "best"
    finetuned, finetune_info = _train(
        target_file,
        out / "cache" / "finetune",
        out / "finetune",
        workers,
        epochs=finetune_epochs,
        init_from=str(bundle),
        **common,
    )
    model = out / "finetune" / "best"
    done("finetune")
    print(f"5/7 segmenting {test_cases} unseen test cases with {model}")
    predictions = out / "predictions"
    shutil.rmtree(predictions, ignore_errors=True)
    options = PredictOptions()  # nnU-Net's defaults: mirroring, overlap 0.5, no post-processing
    predict(test_folder / "imagesTr", model, predictions, options, statistics=True)
    done("predict")
    print("6/7 scoring against the ground truth and writing the report")
    scores = evaluate(predictions, test_folder / "labelsTr", predictions / "evaluation")
    print("\n" + format_summary(scores))
    seconds = round(time.perf_counter() - started, 1)
    notes = [
        f"tumorfm {tumorfm.__version__}; synthetic CT phantoms (not patient data), seed {seed}.",
        f"Pretrained tsfm-tiny on {', '.join(f.name for f in others)}: {epochs} epochs x "
        f"{iterations} iterations; fine-tuned on {HELD_OUT.folder_name} ({cases_per_site} "
        f"cases) for {finetune_epochs} x {iterations} iterations from the pretrained weights.",
        f"Test: {test_cases} cases generated with another seed, never seen in training; "
        f"mirroring on, overlap 0.5, no post-processing. Whole demo: {seconds:.0f} s.",
    ]
    report = report_from_evaluation(
        scores,
        test_folder / "imagesTr",
        out / "report.html",
        "tumorfm demo: fine-tuned on a held-out phantom site",
        notes,
    )
    done("evaluate_and_report")
    real = segment_real_scans(out / "real")
    done("real_scans")
    summary = {
        "tumorfm_version": tumorfm.__version__,
        "workers": workers,
        "seed": seed,
        "cases_per_site": cases_per_site,
        "test_cases": test_cases,
        "pretrain": {"run": str(out / "pretrain"), **pretrain_info, "last_epoch": pretrained},
        "finetune": {"run": str(out / "finetune"), **finetune_info, "last_epoch": finetuned},
        "predictions": str(predictions),
        "evaluation": str(predictions / "evaluation" / "metrics.json"),
        "dice": {
            name: None if math.isnan(row["dice"]["mean"]) else round(row["dice"]["mean"], 4)
            for name, row in scores["aggregates"].items()
        },
        "report": str(report),
        "real_scans": real,
        "seconds": round(time.perf_counter() - started, 1),
        "step_seconds": steps,
    }
    write_json(out / "demo.json", summary)
    print(f"\ndemo finished in {summary['seconds']:.0f} s; open {report}")
    print("steps: " + ", ".join(f"{step} {seconds:.0f} s" for step, seconds in steps.items()))
    for plan, page in real.get("reports", {}).items():
        print(f"the shipped model on real {plan} scans: open {page}")
    print(f"settings and results: {out / 'demo.json'}")
    return summary


def segment_real_scans(out: Path) -> dict:
    """The shipped model on the real scans of tests/data, scored against their labels."""
    data = Path(__file__).resolve().parents[2] / "tests" / "data"
    if SHIPPED not in list_shipped() or not data.is_dir():
        print(f"7/7 skipped: no shipped model {SHIPPED} or no {data} (an installed copy)")
        return {}
    print(f"7/7 segmenting the real scans of {data} with the shipped model {SHIPPED}")
    shutil.rmtree(out, ignore_errors=True)
    result, tables = {}, []
    for plan, folder in REAL_SCANS.items():
        predictions = out / plan
        options = PredictOptions(plan=plan, mirror=False)  # seconds, not minutes, on a CPU
        predict(data / folder / "imagesTr", SHIPPED, predictions, options)
        truth = _truth_named_as(predictions, data / folder / "labelsTr", out / "truth" / plan)
        scores = evaluate(predictions, truth, predictions / "evaluation")
        tables.append(format_summary(scores))
        result[plan] = {
            name: round(row["dice"]["mean"], 4) for name, row in scores["aggregates"].items()
        }
        report_from_evaluation(
            scores,
            data / folder / "imagesTr",
            predictions / "report.html",
            f"tumorfm's shipped model {SHIPPED} on real {plan} scans",
            [
                f"Real scans of tests/data, held out of the model's training (see "
                f"models/{SHIPPED}/MODEL_CARD.md); predicted without mirroring."
            ],
        )
    print("\n" + "\n".join(tables))
    reports = {plan: str(out / plan / "report.html") for plan in REAL_SCANS}
    return {"model": SHIPPED, "dice": result, "reports": reports}


def _truth_named_as(predictions: Path, labels: Path, out: Path) -> Path:
    """The label maps (links) with a dataset.json naming their label 1 as the prediction names
    its class, so evaluate matches them by name (the datasets call it sarcoma or tumour)."""
    names = json.loads((predictions / "dataset.json").read_text())["labels"]
    (name,) = [n for n in names if n != "background"]
    out.mkdir(parents=True, exist_ok=True)
    for label in labels.glob("*.nii.gz"):
        (out / label.name).symlink_to(label.resolve())
    write_json(out / "dataset.json", {"labels": {"background": 0, name: 1}})
    return out
