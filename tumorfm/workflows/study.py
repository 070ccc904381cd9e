"""`tumorfm transfer-study`: the paper's Table 2 protocol on your dataset.

At each epoch budget, the same network is trained twice on the same fixed split: from the
pretrained bundle and from scratch (the bundle's architecture, fresh weights); each final model
segments the held-out cases, which are scored. A finished run is reused when the study is run
again, and a run a kill stopped midway is resumed exactly, so an interrupted study continues where
it stopped. A reference row (e.g. nnU-Net v2 at its
full budget, trained on the same split in its own environment) is added by scoring a folder of
its predictions for the same held-out cases.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from pathlib import Path

from tumorfm.checkpoint import has_state
from tumorfm.data.formats import read_dataset
from tumorfm.defaults import CPU_PATCH
from tumorfm.errors import TumorFMError
from tumorfm.eval.evaluate import evaluate
from tumorfm.eval.model import evaluate_model
from tumorfm.eval.plot import line_chart
from tumorfm.files import ensure_writable, write_json, write_text
from tumorfm.infer.predictor import PredictOptions
from tumorfm.train.finetune import finetune
from tumorfm.train.logs import read_rows
from tumorfm.train.trainer import pretrain

ARMS = ("pretrained", "scratch")


def _row(arm: str, epochs: int | None, iterations: int | None, scores: dict) -> dict:
    row = {"arm": arm, "epochs": epochs, "iterations": iterations}
    for name, aggregate in scores["aggregates"].items():
        row[f"{name}_dice"] = aggregate["dice"]["mean"]
        row[f"{name}_hd95"] = aggregate["hd95"]["median"]
        row[f"{name}_nsd"] = aggregate["nsd"]["mean"]
    dice = [v for k, v in row.items() if k.endswith("_dice") and not math.isnan(v)]
    row["mean_dice"] = sum(dice) / len(dice) if dice else math.nan
    return row


def _markdown(rows: list[dict], settings: dict) -> str:
    columns = [k for k in rows[0] if k not in ("arm", "epochs", "iterations")]
    lines = [
        f"# Transfer study on {settings['dataset']}",
        "",
        f"Pretrained bundle `{settings['bundle']}`; {len(settings['validation_cases'])} held-out "
        f"cases; {settings['iterations_per_epoch']} iterations per epoch; patch "
        f"{'x'.join(map(str, settings['patch_size']))}.",
        "",
        "| start | epochs | iterations | " + " | ".join(columns) + " |",
        "|---|---:|---:|" + "---:|" * len(columns),
    ]
    for row in rows:
        cells = [f"{row[c]:.3f}" if not math.isnan(row[c]) else "n/a" for c in columns]
        budget = [str(row[c]) if row[c] is not None else "-" for c in ("epochs", "iterations")]
        lines.append(f"| {row['arm']} | {' | '.join(budget)} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _scores(run: Path, dataset: Path, cases: list[str], mirror: bool, progress: bool) -> dict:
    """The run's final model scored on its held-out cases; kept in the run, so a study run again
    (e.g. to add a reference row) does not predict them again."""
    kept = run / "evaluation" / "scores.json"
    if kept.is_file():
        saved = json.loads(kept.read_text())
        if saved["cases"] == cases and saved["mirror"] == mirror:
            return saved["scores"]
    scores = evaluate_model(
        run / "last", dataset, run / "evaluation", cases,
        options=PredictOptions(mirror=mirror), progress=progress,
    )  # fmt: skip
    saved = {"cases": cases, "mirror": mirror, "scores": {"aggregates": scores["aggregates"]}}
    kept.write_text(json.dumps(saved, default=float))  # NaN kept as NaN
    return scores


def _train(run: Path, epochs: int, progress: bool, **finetune_args) -> None:
    """One arm's run at one budget: kept when its log holds every epoch, resumed exactly when a
    kill stopped it after an epoch, started afresh when it stopped before its first (nothing of it
    is worth keeping; its last/ bundle alone does not make a run finished)."""
    rows = read_rows(run)
    if (run / "last" / "config.json").is_file() and rows and rows[-1]["epoch"] + 1 >= epochs:
        return
    if has_state(run):
        pretrain(resume=run, progress=progress)
        return
    shutil.rmtree(run, ignore_errors=True)
    finetune(out=run, epochs=epochs, progress=progress, **finetune_args)


def _pool_predictions(folders: list[Path], out: Path) -> Path:
    """One folder holding every fold's label maps (hard links, or copies across devices)."""
    pooled = out / "predictions"
    shutil.rmtree(pooled, ignore_errors=True)
    pooled.mkdir(parents=True)
    for folder in folders:
        for path in folder.glob("*.nii.gz"):
            try:
                os.link(path, pooled / path.name)
            except OSError:
                shutil.copy2(path, pooled / path.name)
    shutil.copy2(folders[0] / "dataset.json", pooled / "dataset.json")
    return pooled


def transfer_study(
    dataset: str | Path,
    bundle: str | Path,
    out: str | Path,
    budgets: list[int] = (10, 20, 50, 100),
    iterations_per_epoch: int = 50,
    patch_size: tuple[int, int, int] = CPU_PATCH,
    mapping: dict[str, str] | None = None,
    mirror: bool = False,
    workers: int = 2,
    progress: bool = True,
    references: dict[str, str | Path] | None = None,
    folds: int = 0,
    **settings,
) -> list[dict]:
    """Pretrained vs scratch at each budget, on one fixed split or `folds`-fold cross-validation,
    plus a row per folder of `references` predictions (name -> folder); writes transfer.md,
    transfer.csv, transfer.svg and study.json."""
    if not budgets or min(budgets) < 1:
        raise TumorFMError("give at least one epoch budget, each at least 1")
    for name, folder in (references or {}).items():
        if not Path(folder).is_dir():
            raise TumorFMError(f"--reference {name}={folder}: not a folder of predictions")
    if folds == 1 or folds < 0:
        raise TumorFMError(f"--folds {folds}: use 0 (one fixed split) or at least 2")
    out = ensure_writable(Path(out))
    labels = Path(read_dataset(dataset).labelled_cases[0].label).parent
    rows, validation = [], None
    for epochs in sorted(budgets):
        for arm in ARMS:
            predicted, cases = [], []
            for fold in range(max(folds, 1)):
                run = out / (f"{arm}-{epochs}" + (f"-fold{fold}" if folds else ""))
                _train(
                    run, epochs, progress, dataset=dataset, bundle=bundle, mode="full",
                    mapping=mapping, new_head=True, from_scratch=arm == "scratch",
                    cache=out / "cache", workers=workers, iterations_per_epoch=iterations_per_epoch,
                    patch_size=tuple(patch_size), folds=folds, fold=fold, **settings,
                )  # fmt: skip
                split = json.loads((run / "split.json").read_text())
                held_out = sorted(c for part in split.values() for c in part["val"])
                scores = _scores(run, dataset, held_out, mirror, progress)
                predicted.append(run / "evaluation" / "predictions")
                cases += held_out
            cases = sorted(cases)
            if validation is not None and cases != validation:
                raise TumorFMError(f"{run}: another validation split than the other runs")
            validation = cases
            if folds:  # every case was held out once: score the folds' predictions together
                pooled = _pool_predictions(predicted, out / f"{arm}-{epochs}-folds")
                scores = evaluate(pooled, labels, pooled.parent / "evaluation",
                                  progress=progress, cases=cases)  # fmt: skip
            rows.append(_row(arm, epochs, epochs * iterations_per_epoch, scores))
    for name, folder in (references or {}).items():
        scores = evaluate(folder, labels, out / f"reference-{name}", progress=progress,
                          cases=validation)  # fmt: skip
        rows.append(_row(name, None, None, scores))
    summary = {
        "dataset": str(dataset),
        "bundle": str(bundle),
        "budgets": sorted(budgets),
        "iterations_per_epoch": iterations_per_epoch,
        "patch_size": list(patch_size),
        "mirror": mirror,
        "folds": folds,
        "validation_cases": validation,
        "references": {name: str(folder) for name, folder in (references or {}).items()},
        "settings": settings,
    }
    write_text(out / "transfer.md", _markdown(rows, summary))
    write_text(out / "transfer.csv", _csv(rows))
    series = {arm: [(r["epochs"], r["mean_dice"]) for r in rows if r["arm"] == arm] for arm in ARMS}
    lines = {r["arm"]: r["mean_dice"] for r in rows if r["epochs"] is None}
    chart = line_chart(
        series, f"Transfer study: {Path(dataset).name}", "epochs", "mean Dice", lines
    )
    write_text(out / "transfer.svg", chart)
    clean = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in rows
    ]
    write_json(out / "study.json", {**summary, "rows": clean})
    return rows
