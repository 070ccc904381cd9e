"""Label-free: do synthetic tumours in healthy livers replace real tumour labels? (issue 15, (a))

    .venv/bin/python -m benchmarks.synth_labelfree [--seeds 0 1 2]

Hu et al.'s claim (CVPR 2023), on data whose truth we know: CT phantoms (tumorfm.data.phantom).
PhantomLiver's scans hold liver tumours, labelled; PhantomMultiOrgan's livers are healthy. Per
seed, two trainings from scratch with the same preset, patch, iterations and seed:

- `real tumours`: PhantomLiver's training scans with their liver and liver-tumour labels;
- `synthetic only`: as many PhantomMultiOrgan scans, liver labelled, no tumour ever seen; the
  loader puts procedural tumours into the liver of half the patches (Hu et al.'s recipe, the
  engine's defaults: nothing tuned to the phantom's tumours) labelled liver_tumour.

Both predict the same held-out PhantomLiver scans (drawn with the seed), scored by `tumorfm
evaluate`: liver-tumour Dice (a scan without a tumour scores 1 if nothing is predicted, else 0),
lesion sensitivity and precision. Results: benchmarks/results/synth_labelfree.json.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import yaml

from tumorfm.data.phantom import DEFAULT_SITES, write_phantom_pool

from . import seeds
from .common import BIN, add_work_and_out, parser_for
from .measure import provenance, run
from .scoring import evaluated, predicted

SITES = {site.name: site for site in DEFAULT_SITES}
LIVER, HEALTHY = SITES["PhantomLiver"], SITES["PhantomMultiOrgan"]
TUMOUR = "liver_tumour"
SYNTHESIS = {"organ": "liver", "tumour": TUMOUR, "probability": 0.5, "size": "mixed"}
ARMS = {"real tumours": LIVER, "synthetic only": HEALTHY}


def pool_file(work: Path, arm: str) -> Path:
    """The arm's pool: its site, its labels (the healthy site's liver only), its synthesis."""
    site = ARMS[arm]
    folder = work / "phantoms" / site.folder_name
    if site is LIVER:
        entry = {"name": "liver", "path": str(folder), "labels": {1: "liver", 2: TUMOUR}}
    else:  # every organ it labels (a pool maps them all), the liver among them
        organs = {value: name for name, value in site.labels.items() if value}
        entry = {"name": "healthy", "path": str(folder), "labels": organs, "synthesis": SYNTHESIS}
    path = work / f"pool-{site.name}.yaml"
    path.write_text(yaml.safe_dump({"name": f"labelfree-{site.name}", "datasets": [entry]}))
    return path


def split_for(seed: int, cases: int, held_out: int) -> tuple[list[str], list[str]]:
    """(train, held-out) PhantomLiver case ids, drawn with `seed`."""
    ids = [f"{LIVER.case_prefix}_{i:03d}" for i in range(cases)]
    order = np.random.default_rng(seed).permutation(ids).tolist()
    return sorted(order[held_out:]), sorted(order[:held_out])


def one_run(args, arm: str, seed: int) -> dict:
    work, tumorfm = args.work, str(BIN / "tumorfm")
    site = ARMS[arm]
    cache, out = work / f"cache-{site.name}", work / f"seed{seed}" / site.name
    train, held = split_for(seed, args.cases, args.held_out)
    if site is HEALTHY:  # as many healthy scans as the real arm has labelled ones
        ids = [f"{HEALTHY.case_prefix}_{i:03d}" for i in range(args.cases)]
        train, val = ids[: len(train)], ids[len(train) :]
    else:
        val = held
    name = "liver" if site is LIVER else "healthy"
    split = {name: {"train": train, "val": val}}
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / f"split-{site.name}.json").write_text(json.dumps(split, indent=1))
    if not (cache / "pool.json").is_file():
        command = [tumorfm, "preprocess", str(pool_file(work, arm)), "-o", str(cache),
                   "--patch", *map(str, args.patch), "--workers", "2"]  # fmt: skip
        run(command, dict(os.environ), work / f"preprocess-{site.name}.log", 3600, arm)
    shutil.rmtree(out, ignore_errors=True)
    epochs, split_file = args.iterations // args.per_epoch, out.parent / f"split-{site.name}.json"
    command = [tumorfm, "pretrain", str(cache), "-o", str(out), "--profile", "cpu", "--model",
               args.model, "--patch", *map(str, args.patch), "--batch", "2", "--epochs",
               str(epochs), "--iterations", str(args.per_epoch), "--val-every", str(epochs),
               "--split", str(split_file), "--seed", str(seed)]  # fmt: skip
    log = out.parent / f"{site.name}.log"
    trained = run(command, dict(os.environ), log, 6 * 3600, f"{arm} {seed}")
    images, labels = held_out(work, held, out.parent / "held-out")
    predictions = out / "held-out"
    log = out.parent / f"{site.name}-predict.log"
    predicted(out / "last", images, predictions, log, ["--no-mirror"], what="predict")
    metrics = evaluated(predictions, labels, out.parent / f"{site.name}-evaluate.log")
    tumour = metrics["aggregates"][TUMOUR]
    return {
        "arm": arm,
        "dice": tumour["dice"]["mean"],
        "lesion_sensitivity": tumour["lesions"]["sensitivity"],
        "lesion_precision": tumour["lesions"]["precision"],
        "liver_dice": metrics["aggregates"]["liver"]["dice"]["mean"],
        "train_seconds": trained["wall_seconds"],
        "train_cases": train,
        "held_out": held,
    }


def held_out(work: Path, cases: list[str], out: Path) -> tuple[Path, Path]:
    """images/ and labels/ (with dataset.json) of the held-out PhantomLiver scans, fresh."""
    folder = work / "phantoms" / LIVER.folder_name
    shutil.rmtree(out, ignore_errors=True)
    images, labels = out / "images", out / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for case in cases:
        shutil.copy(folder / "imagesTr" / f"{case}_0000.nii.gz", images)
        shutil.copy(folder / "labelsTr" / f"{case}.nii.gz", labels)
    shutil.copy(folder / "dataset.json", labels)
    return images, labels


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    add_work_and_out(parser, "synth_labelfree", work="labelfree")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cases", type=int, default=24, help="phantom scans per site")
    parser.add_argument("--held-out", type=int, default=8, help="PhantomLiver scans scored")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--per-epoch", type=int, default=50)
    parser.add_argument("--model", default="tsfm-tiny")
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 64, 64])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    write_phantom_pool(args.work / "phantoms", args.cases, seed=0, sites=(LIVER, HEALTHY))
    rows = {seed: [one_run(args, arm, seed) for arm in ARMS] for seed in args.seeds}
    fields = ["dice", "lesion_sensitivity", "lesion_precision", "liver_dice", "train_seconds"]
    result = {
        "what": "liver-tumour Dice on held-out PhantomLiver scans: trained on their real tumour "
        "labels, or on healthy livers with procedural tumours only",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "synthesis": SYNTHESIS,
        "rows": seeds.merge(rows, ("arm",), fields),
        "per_seed": rows,
        "synthetic_minus_real": seeds.paired_difference(
            rows, {"arm": "synthetic only"}, {"arm": "real tumours"}, "dice"
        ),
        **provenance("synth_labelfree", ".venv", load),
    }
    args.out.write_text(json.dumps(result, indent=1))
    for row in result["rows"]:
        d = row["dice"]
        print(f"{row['arm']:>15}: tumour Dice {d['mean']:.3f} +- {d['std'] or 0:.3f}")


if __name__ == "__main__":
    main()
