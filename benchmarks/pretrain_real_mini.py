"""Pretrain on real scans: tsfm-tiny on configs/pools/real-mini.yaml (sarcoma CT, brain MR and
the phantom sites), as written and with online synthetic tumours switched on, and report the
validation pseudo-Dice per dataset and class of each (issue 15, (c)). tsfm-tiny because both arms
then fit a session on any 2-core CPU: tsfm-small took 11 s an iteration in fp32 (an AMD EPYC
without bf16), 110 minutes an arm; with AMX bf16 it took 19 minutes (`--model tsfm-small`).

    .venv/bin/python -m benchmarks.pretrain_real_mini      # phantoms, preprocess, two pretrainings

The two arms differ only in one synthesis block: procedural liver tumours (the engine's defaults)
in half of the samples of PhantomMultiOrgan, whose livers have none, labelled liver_tumour, the
class PhantomLiver annotates. Same preset, patch, iterations and seed; validation stays real (the
loader synthesises into training patches only), so PhantomLiver's liver_tumour pseudo-Dice says
whether the pretrained model learns that tumour class. PhantomLiver's tumours are synthetic CT
too (tumorfm phantom), drawn by another generator, never real. One seed: a trend, not a spread.

tumorfm runs from the product environment (`--tumorfm`, default .venv/bin/tumorfm), as does this.
Writes benchmarks/results/pretrain_real_mini.json (settings, each arm's curve and run folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from .common import RESULTS, ROOT, WORK, add_tumorfm, logged_epochs, parser_for
from .measure import provenance
from .support import SYNTHETIC_LIVER_TUMOURS

POOL = ROOT / "configs" / "pools" / "real-mini.yaml"
SYNTHESIS = SYNTHETIC_LIVER_TUMOURS  # dataset -> its synthesis block
ARMS = ("real-mini", "real-mini + synthetic liver tumours")


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def synthetic_pool(work: Path) -> Path:
    """real-mini.yaml with SYNTHESIS added, its dataset paths made absolute (the copy lives in
    `work`, the paths in the original are relative to configs/pools/)."""
    pool = yaml.safe_load(POOL.read_text())
    for dataset in pool["datasets"]:
        dataset["path"] = str((POOL.parent / dataset["path"]).resolve())
        if spec := SYNTHESIS.get(dataset["name"]):
            dataset["synthesis"] = spec
    pool["name"] += "-synthetic"
    path = work / "real-mini-synthetic.yaml"
    path.write_text(yaml.safe_dump(pool, sort_keys=False))
    return path


def pretrain(args, pool: Path, work: Path) -> dict:
    """Preprocess `pool` and pretrain on it; the validation curve and the speed, from log.jsonl."""
    cache, out = work / "cache", work / "run"
    tumorfm = str(args.tumorfm)
    run([tumorfm, "preprocess", str(pool), "-o", str(cache), "--workers", "2"])
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    run([tumorfm, "pretrain", str(cache), "-o", str(out), "--profile", "cpu",
         "--model", args.model, "--patch", *map(str, args.patch), "--epochs", str(args.epochs),
         "--iterations", str(args.iterations), "--val-every", str(args.val_every),
         "--workers", "2", "--seed", str(args.seed)])  # fmt: skip
    log = logged_epochs(out)
    keys = ("epoch", "step", "train_loss", "val_dice", "val_mean_dice")
    return {
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "pool": str(pool),
        "run": str(out),
        "iterations_per_second": [r["iterations_per_second"] for r in log],
        "curve": [{k: r[k] for k in keys} for r in log if "val_dice" in r],
    }


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--work", type=Path, default=WORK / "real-mini")
    parser.add_argument("--out", type=Path, default=RESULTS / "pretrain_real_mini.json")
    parser.add_argument("--model", default="tsfm-tiny")
    parser.add_argument("--patch", type=int, nargs=3, default=(48, 96, 96))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--val-every", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    add_tumorfm(parser)
    args = parser.parse_args()
    load_before = os.getloadavg()
    if not (ROOT / "phantoms" / "Dataset901_PhantomLiver").is_dir():
        run([str(args.tumorfm), "phantom", "-o", str(ROOT / "phantoms")])
    args.work.mkdir(parents=True, exist_ok=True)
    pools = {ARMS[0]: POOL, ARMS[1]: synthetic_pool(args.work)}
    result = {
        "benchmark": "pretrain_real_mini",
        **provenance("pretrain_real_mini", ".venv", load_before),
        "settings": {**vars(args), "profile": "cpu", "synthesis": SYNTHESIS},
        "arms": {},
    }
    for index, (arm, pool) in enumerate(pools.items()):
        result["arms"][arm] = pretrain(args, pool, args.work / f"arm{index}")
        args.out.write_text(json.dumps(result, indent=2, default=str))
        last = result["arms"][arm]["curve"][-1]
        print(f"\n{arm}, {result['arms'][arm]['minutes']:.0f} min, step {last['step']}:")
        for dataset, per in last["val_dice"].items():
            print(f"  {dataset}: " + ", ".join(f"{c} {v:.2f}" for c, v in per.items()))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
