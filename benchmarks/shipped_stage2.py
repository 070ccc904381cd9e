"""A second stage per dataset: the shipped bundle fine-tuned on one dataset's training scans alone,
scored on the same held-out scans as the bundle.

Does a stage on one dataset, with that dataset's own plan and patch, do what the pool's training did
not? The sarcomas at the lowres plan and the bundle's 48x96x96 patch; the glioblastomas at full
resolution with a 32x128x128 patch (the choice of benchmarks/accuracy_arms.py, FULLRES_AT_LOWRES),
which the pool, with one patch for both, could not give them. Each stage is `tumorfm finetune --from
models/<bundle>` on the shipped split's training scans, `--epochs` x 50 iterations, seed 0; its
held-out scans are predicted without mirroring and cut at 0.5 (a new bundle has no calibrated
threshold), beside the shipped bundle's scores at 0.5 on the same scans. A finished stage in --work
(its log has every epoch) is scored again, not trained again.

    .venv/bin/python -m benchmarks.shipped_stage2 [--datasets sarcoma_ct brain_mr] [--epochs 8]

Writes benchmarks/results/shipped_stage2.json; about 13 min (sarcoma) and 23 min (glioblastoma)
of training on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .common import BIN, DATA, RESULTS, add_work_and_out, command_line, logged_epochs, parser_for
from .measure import git_state, machine, run
from .scoring import case_scores, evaluated, predicted, stats
from .shipped_card import NAME
from .shipped_model import DATASETS, fixed_split, held_out, name_the_truth, volumes

ITERATIONS = 50  # per epoch, as the shipped bundle's stages
STAGES = {  # dataset -> plan configuration, patch, finetune --map (its label to the bundle class)
    "sarcoma_ct": ("lowres", [48, 96, 96], "sarcoma=soft_tissue_sarcoma"),
    "brain_mr": ("fullres", [32, 128, 128], "tumour=brain_tumour"),
}


def finished(out: Path, epochs: int, patch: list[int]) -> bool:
    """Whether `out` holds a stage of these settings that ran all its epochs (a former run)."""
    if not ((out / "last").is_dir() and (out / "settings.json").is_file()):
        return False
    config = json.loads((out / "settings.json").read_text())["config"]
    wanted = {"patch_size": patch, "epochs": epochs, "iterations_per_epoch": ITERATIONS, "seed": 0}
    same = all(config.get(key) == value for key, value in wanted.items())
    return same and len(logged_epochs(out)) == epochs


def stage(args, name: str, split: dict) -> dict:
    """Fine-tune the shipped bundle on dataset `name`, then score its held-out scans."""
    from tumorfm.model.bundle import models_folder

    config, patch, mapping = STAGES[name]
    folder = DATASETS[name][0]
    out, split_file = args.work / name, args.work / f"split-{name}.json"
    args.work.mkdir(parents=True, exist_ok=True)
    split_file.write_text(json.dumps([split[name]]))  # nnU-Net's splits_final.json, one fold
    command = [str(BIN / "tumorfm"), "finetune", str(args.data / folder), "--from",
               str(models_folder() / NAME), "-o", str(out), "--epochs", str(args.epochs),
               "--iterations", str(ITERATIONS), "--patch", *map(str, patch), "--config", config,
               "--split", str(split_file), "--seed", "0", "--map", mapping]  # fmt: skip
    row = {"dataset": name, "config": config, "patch": patch, "command": " ".join(command)}
    if finished(out, args.epochs, patch):
        row["kept"] = f"a finished stage in {out}, trained by a former run"
    else:
        shutil.rmtree(out, ignore_errors=True)  # a stage a session's end stopped starts again
        row["train"] = run(command, dict(os.environ), args.work / f"{name}.log", 4 * 3600, name)
    epochs = logged_epochs(out)
    row["iterations"] = len(epochs) * ITERATIONS
    row["train_seconds"] = round(sum(e["seconds"] for e in epochs), 1)
    images, labels = held_out(args.data, split, name, args.work / "held-out" / name)
    predictions = args.work / "predictions" / name
    predicted(out / "last", images, predictions, args.work / f"predict-{name}.log", ["--no-mirror"])
    cls = name_the_truth(predictions, labels)
    cases = case_scores(evaluated(predictions, labels, args.work / f"evaluate-{name}.log"), cls)
    row |= {
        "class": cls,
        "cases": len(cases),
        **{m: stats([c[m] for c in cases.values()]) for m in ("dice", "hd95", "nsd")},
        "per_case_dice": {case: c["dice"] for case, c in cases.items()},
        **volumes(cases),
    }
    return row


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--datasets", nargs="+", choices=list(STAGES), default=list(STAGES))
    parser.add_argument("--epochs", type=int, default=8, help=f"of {ITERATIONS} iterations")
    add_work_and_out(parser, "shipped_stage2")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: a stage needs at least one epoch")
    shipped = json.loads((RESULTS / "shipped_model.json").read_text())
    split = fixed_split(args.data)
    if split != shipped["split"]:
        parser.error("the shipped bundle's split (shipped_model.json) is not fixed_split's")
    before = shipped.get("scores_at_0.5", shipped["scores"])
    rows = []
    for name in args.datasets:
        row = stage(args, name, split)
        row["shipped_at_0.5"] = {
            k: before[name][k] for k in ("dice", "per_case_dice", "volume_ratio")
        }
        rows.append(row)
        print(f"{name}: Dice {row['dice']['mean']:.3f} +- {row['dice']['std']:.3f} (shipped at "
              f"0.5: {before[name]['dice']['mean']:.3f}), volume "
              f"{row['volume_ratio']['median']:.2f}x")  # fmt: skip
    result = {
        "what": __doc__.splitlines()[0],
        "bundle": NAME,
        "command": command_line("shipped_stage2", ".venv"),
        "settings": {"epochs": args.epochs, "iterations_per_epoch": ITERATIONS, "mirror": False},
        "rows": rows,
        "machine": machine(os.getloadavg()),
        "git": git_state(),
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
