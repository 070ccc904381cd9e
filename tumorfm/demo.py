"""`tumorfm demo` (what `make demo` runs): the pipeline end to end on synthetic phantoms.

Write phantom sites, check them, fuse them in a pool file, preprocess the pool into a cache and
pretrain tsfm-tiny on it for a few minutes. Prediction and evaluation join as they land.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import yaml

import tumorfm
from tumorfm.data.cache import cached_cases
from tumorfm.data.check import check_dataset
from tumorfm.data.phantom import DEFAULT_SITES, write_phantom_pool
from tumorfm.data.pool import load_pool
from tumorfm.data.preprocess import preprocess_pool
from tumorfm.errors import TumorFMError
from tumorfm.files import ensure_writable, write_json
from tumorfm.train.trainer import make_config, pretrain


def write_pool_file(folders: list[Path], path: Path) -> Path:
    """A pool file over phantom datasets: every local label keeps its own name as global name."""
    datasets = []
    for folder in folders:
        labels = json.loads((folder / "dataset.json").read_text())["labels"]
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", folder.name.split("_", 1)[1]).lower()
        datasets.append(
            {
                "name": name,
                "path": folder.name,
                "labels": {v: k for k, v in labels.items() if v != 0},
            }
        )
    classes = {name for d in datasets for name in d["labels"].values()}
    parents = {
        name: name.removesuffix("_tumour")
        for name in sorted(classes)
        if name.endswith("_tumour") and name.removesuffix("_tumour") in classes
    }
    pool = {"name": "phantom-demo", "parents": parents, "datasets": datasets}
    path.write_text(yaml.safe_dump(pool, sort_keys=False))
    return path


def run_demo(
    out: Path,
    workers: int = 2,
    cases_per_site: int = 8,
    seed: int = 0,
    epochs: int = 4,
    iterations: int = 25,
) -> dict:
    started = time.perf_counter()
    out = ensure_writable(Path(out))
    print(
        f"1/4 writing {len(DEFAULT_SITES)} synthetic phantom sites x {cases_per_site} cases "
        f"into {out / 'phantoms'}"
    )
    folders = write_phantom_pool(
        out / "phantoms", cases_per_site=cases_per_site, seed=seed, progress=True
    )
    print("2/4 checking every dataset")
    for folder in folders:
        problems = check_dataset(folder, workers=workers)
        if problems:
            raise TumorFMError("\n".join(problems))
    pool = load_pool(write_pool_file(folders, out / "phantoms" / "pool.yaml"))
    print(
        f"3/4 preprocessing pool '{pool.name}' ({len(pool.classes)} global classes) into "
        f"{out / 'cache'}"
    )
    report = preprocess_pool(pool, out / "cache", workers=workers, progress=True)
    print(f"\n{'dataset':<20} {'cases':>5}  {'spacing (mm)':<16} annotated classes")
    for dataset in pool.datasets:
        row = report["datasets"][dataset.name]
        cached = cached_cases(out / "cache", dataset.name)
        spacing = "x".join(f"{s:.2f}" for s in row["target_spacing"])
        print(f"{dataset.name:<20} {len(cached):>5}  {spacing:<16} {', '.join(dataset.annotated)}")
    run = out / "pretrain"
    shutil.rmtree(run, ignore_errors=True)  # the demo's own folder: every demo starts afresh
    config = make_config(
        "cpu",
        epochs=epochs,
        iterations_per_epoch=iterations,
        val_every=max(1, epochs // 2),
        workers=min(workers, 2),
    )
    print(
        f"\n4/4 pretraining {config.model} on the pool for {epochs} epochs x {iterations} "
        f"iterations (patch {'x'.join(map(str, config.patch_size))}) into {run}"
    )
    trained = pretrain(out / "cache", run, config)
    dice = trained.get("val_dice", {})
    print(f"\nvalidation pseudo-Dice after {trained['step']} iterations:")
    for dataset, per_class in dice.items():
        scores = ", ".join(f"{name} {value:.2f}" for name, value in per_class.items())
        print(f"  {dataset:<20} {scores}")
    summary = {
        "tumorfm_version": tumorfm.__version__,
        "workers": workers,
        "seed": seed,
        "cases_per_site": cases_per_site,
        "pool": pool.summary(),
        "preprocess": report,
        "pretrain": {"run": str(run), "config": asdict(config), "last_epoch": trained},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "demo.json", summary)
    print(
        f"\ndemo finished in {summary['seconds']:.0f} s; settings and results in "
        f"{out / 'demo.json'}"
    )
    return summary
