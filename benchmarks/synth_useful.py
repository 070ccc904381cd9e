"""Does online tumour synthesis help a segmenter that has few labelled scans? (issue 15, (b))

    .venv/bin/python -m benchmarks.synth_useful [--seeds 0 1 2] [--train-cases 8]

Per seed, two trainings from scratch that differ only in the pool's synthesis block: `real` learns
from `--train-cases` real sarcoma CTs (drawn with the seed), `real+synthetic` from the same scans
with procedural tumours put into half of its patches, in the scans' unlabelled soft tissue (HU
-20..100, outside the real tumour) and labelled as sarcoma; their HU shift and texture are those
measured on the seed's training sarcomas (tumorfm.synth.appearance, as `tumorfm synth appearance`
does), so the synthetic arm learns from the same labels as the real one, no more. Same preset, plan
(lowres), patch, iterations and seed. Both are scored on the shipped bundle's seven held-out
sarcomas (never trained on) by `tumorfm predict --no-mirror` and `tumorfm evaluate`, in the scans'
own geometry. The difference is reported per seed and as mean and spread (benchmarks/seeds.py); the
issue's target is +0.05 Dice. The results file is written after every arm; a run with the same
settings keeps the arms it records (benchmarks/seeds.recorded). `--probability P` measures the
synthetic arm with tumours in a share P of the patches instead of half, as one more arm beside the
recorded ones (the real arms are shared): the README gives it a line of its own. Each synthetic row
counts the patches its run drew for synthesis (the loader's own rule), the only ones that differ
from the real arm's: `--probability 0.001` changes a handful of 800, a control that shows what a
training moves when almost nothing changes.
Results: benchmarks/results/synth_useful.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from tumorfm.synth.appearance import measure
from tumorfm.synth.dataset import source_of
from tumorfm.train.loader import synthesis_draw

from . import seeds
from .common import (
    BIN,
    DATA,
    add_work_and_out,
    case_ids,
    logged_epochs,
    parser_for,
    pretrain_or_resume,
)
from .measure import cpu, provenance, run
from .scoring import case_scores, evaluated, predicted, stats
from .shipped_model import DATASETS, fixed_split, held_out

CLASS = "soft_tissue_sarcoma"
SYNTHESIS = {"organ_hu": [-20, 100], "tumour": CLASS, "probability": 0.5, "size": "mixed"}
MAIN = "real+synthetic"  # the synthetic arm at SYNTHESIS's probability
BATCH = 2


def arms_for(probability: float) -> dict[str, dict | None]:
    """The real arm and the synthetic one at `probability`: the default's is MAIN, another's is
    named by its probability and kept beside MAIN's rows in the same file."""
    name = MAIN if probability == SYNTHESIS["probability"] else f"{MAIN} p={probability:g}"
    return {"real": None, name: {**SYNTHESIS, "probability": probability}}


SAME_RUN = ("train_cases", "iterations", "per_epoch", "model", "patch")  # settings rows need


def pool_file(work: Path, data: Path, synthesis: dict | None, name: str) -> Path:
    entry = {"name": "sarcoma_ct", "path": str(data / DATASETS["sarcoma_ct"][0]),
             "labels": {1: CLASS}}  # fmt: skip
    if synthesis:
        entry["synthesis"] = synthesis
    path = work / f"pool-{name}.yaml"
    path.write_text(yaml.safe_dump({"name": f"sarcoma-{name}", "datasets": [entry]}))
    return path


def split_for(seed: int, data: Path, train_cases: int) -> dict:
    """The shipped bundle's held-out sarcomas, and `train_cases` of the rest drawn with `seed`."""
    val = fixed_split(data)["sarcoma_ct"]["val"]
    rest = [c for c in case_ids(data / DATASETS["sarcoma_ct"][0]) if c not in val]
    train = np.random.default_rng(seed).permutation(rest)[:train_cases].tolist()
    return {"sarcoma_ct": {"train": sorted(train), "val": val}}


def look_of(data: Path, train: list[str]) -> dict:
    """shift_hu and texture_hu ranges of the training cases' real sarcomas."""
    source = source_of(data / DATASETS["sarcoma_ct"][0], None, "CT")
    source = replace(source, cases=[c for c in source.cases if c.case_id in train])
    found = measure(source, "1", organ_hu=SYNTHESIS["organ_hu"], progress=False)
    return {key: found[key] for key in ("shift_hu", "texture_hu")}


def one_run(args, arm: str, spec: dict | None, seed: int) -> dict:
    work, tumorfm = args.work, str(BIN / "tumorfm")
    split = split_for(seed, args.data, args.train_cases)
    synthesis = spec and {**spec, **look_of(args.data, split["sarcoma_ct"]["train"])}
    name = "real"
    if synthesis:  # the look is the seed's
        other = synthesis["probability"] != SYNTHESIS["probability"]
        name = f"synthetic-seed{seed}" + (f"-p{synthesis['probability']:g}" if other else "")
    cache, out = work / f"cache-{name}", work / f"seed{seed}" / arm.replace(" ", "-")
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "split.json").write_text(json.dumps(split, indent=1))
    if not (cache / "pool.json").is_file():
        command = [
            tumorfm,
            "preprocess",
            str(pool_file(work, args.data, synthesis, name)),
            "-o",
            str(cache),
            "--config",
            "lowres",
            "--patch",
            *map(str, args.patch),
            "--workers",
            "2",
        ]
        run(command, dict(os.environ), work / f"preprocess-{arm}.log", 3600, f"preprocess {arm}")
    epochs = args.iterations // args.per_epoch
    predictions = out / "held-out"
    if _finished(out, epochs):  # a run of an interrupted benchmark: kept, not run again
        return _row(arm, out, predictions, split, synthesis)
    command = [tumorfm, "pretrain", str(cache), "-o", str(out), "--profile", "cpu", "--model",
               args.model, "--patch", *map(str, args.patch), "--batch", str(BATCH), "--epochs",
               str(epochs), "--iterations", str(args.per_epoch), "--val-every", str(epochs),
               "--split", str(out.parent / "split.json"), "--seed", str(seed)]  # fmt: skip
    command = pretrain_or_resume(command, out)
    run(command, dict(os.environ), out.parent / f"{arm}.log", 6 * 3600, f"{arm} {seed}")
    images, labels = held_out(args.data, split, "sarcoma_ct", work / "held-out")
    (labels / "dataset.json").write_text(json.dumps({"labels": {"background": 0, CLASS: 1}}))
    log = out.parent / f"{arm}-predict.log"
    predicted(out / "last", images, predictions, log, ["--no-mirror"], what=f"predict {arm}")
    evaluated(predictions, labels, out.parent / f"{arm}-evaluate.log", what=f"evaluate {arm}")
    return _row(arm, out, predictions, split, synthesis)


def _finished(out: Path, epochs: int) -> bool:
    """Trained for every epoch, predicted and scored."""
    log = out / "log.jsonl"
    if not (log.is_file() and (out / "held-out" / "evaluation" / "metrics.json").is_file()):
        return False
    return sum(1 for line in log.read_text().splitlines() if line.strip()) >= epochs


def _row(arm: str, out: Path, predictions: Path, split: dict, synthesis: dict | None) -> dict:
    """The run's scores on the held-out sarcomas; training seconds = the epochs' own (the
    run's log), without start-up and validation."""
    metrics = json.loads((predictions / "evaluation" / "metrics.json").read_text())
    cases = list(case_scores(metrics, CLASS).values())
    dice = stats([c["dice"] for c in cases])
    epochs = logged_epochs(out)
    return {
        "arm": arm,
        "dice": dice["mean"],
        "dice_over_cases": dice,
        "hd95_median": stats([c["hd95"] for c in cases])["median"],
        "train_seconds": round(sum(e["seconds"] for e in epochs), 1),
        "train_cases": split["sarcoma_ct"]["train"],
        "synthesis": synthesis,
        "machine": cpu(),
    }


def synthetic_patches(args, seed: int, synthesis: dict) -> dict:
    """How many of the run's patches the loader drew for synthesis (the only ones that differ
    from the real arm's), by the loader's own rule, and of how many."""
    steps, p = range(args.iterations // args.per_epoch * args.per_epoch), synthesis["probability"]
    drawn = sum(synthesis_draw(seed, s, i, p)[0] for s in steps for i in range(BATCH))
    return {"drawn": drawn, "of": len(steps) * BATCH}


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    add_work_and_out(parser, "synth_useful", work="synth")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-cases", type=int, default=8, help="real scans each model sees")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--per-epoch", type=int, default=50)
    parser.add_argument("--model", default="tsfm-tiny")
    parser.add_argument("--patch", type=int, nargs=3, default=[48, 96, 96])
    parser.add_argument("--probability", type=float, default=SYNTHESIS["probability"],
                        help="of a patch getting synthetic tumours (another value: another arm, "
                        "beside the recorded ones)")  # fmt: skip
    args = parser.parse_args()
    if not 0 < args.probability <= 1:
        parser.error(f"--probability {args.probability}: give a value in (0, 1]")
    arms = arms_for(args.probability)
    args.work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    before = seeds.recorded(args.out, args, SAME_RUN, synthesis=SYNTHESIS)
    # every seed and arm a former run recorded (other seeds and probabilities too) stays in the
    # file from its first write: a run of seeds 1 2, or one killed in seed 0, loses none of them
    rows = {seed: list(by_arm.values()) for seed, by_arm in sorted(before.items())}
    for seed in args.seeds:
        kept = before.get(seed, {})
        for arm, spec in arms.items():
            kept[arm] = kept.get(arm) or one_run(args, arm, spec, seed)
            rows = dict(sorted({**rows, seed: list(kept.values())}.items()))
            for at, row in ((at, row) for at, rs in rows.items() for row in rs if row["synthesis"]):
                if "synthetic_patches" not in row:  # new rows, and rows recorded before the count
                    row["synthetic_patches"] = synthetic_patches(args, at, row["synthesis"])
            synthetic = sorted({r["arm"] for rs in rows.values() for r in rs} - {"real"})
            gains = {
                name: seeds.paired_difference(rows, {"arm": name}, {"arm": "real"}, "dice")
                for name in synthetic
            }
            result = {
                "what": "Dice on 7 held-out real sarcomas, trained from scratch with and without "
                "online synthetic tumours",
                "settings": {
                    k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                },
                "complete": all(
                    arms.keys() <= {r["arm"] for r in rows.get(s, [])} for s in args.seeds
                ),
                "synthesis": SYNTHESIS,
                "rows": seeds.merge(rows, ("arm",), ["dice", "hd95_median", "train_seconds"]),
                "per_seed": rows,
                "gain": gains.get(MAIN),
                "gains": gains,
                "target": 0.05,
                **provenance("synth_useful", ".venv", load),
            }
            args.out.write_text(json.dumps(result, indent=1))  # after every arm: nothing is lost
    for row in result["rows"]:
        print(f"{row['arm']:>15}: Dice {row['dice']['mean']:.3f} +- {row['dice']['std'] or 0:.3f}")
    for name, gain in gains.items():
        print(f"{name} - real: {gain['mean']:+.3f} +- {gain['std'] or 0:.3f} (target +0.05)")


if __name__ == "__main__":
    main()
