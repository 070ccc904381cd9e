"""What `tumorfm evaluate` writes beside its metrics.json: the CSV of every case and class, and
the Markdown summary it prints (one row per class)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import fields

from tumorfm.eval import metrics

CSV_COLUMNS = ["case", "class", "pred_value", "gt_value", "dice", "hd95", "nsd", "tolerance_mm"]
CSV_COLUMNS += ["pred_ml", "gt_ml", *(f.name for f in fields(metrics.LesionCounts))]


def json_safe(value):
    """NaN becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def csv_text(result: dict) -> str:
    """metrics.csv: one row per case and class; an undefined metric is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    values = {c["name"]: c for c in result["settings"]["classes"]}
    for case in result["cases"]:
        for name, row in case["scores"].items():
            cells = [case["case"], name, values[name]["pred_value"], values[name]["gt_value"]]
            cells += [row[k] for k in CSV_COLUMNS[4:]]
            writer.writerow(["" if isinstance(c, float) and math.isnan(c) else c for c in cells])
    return buffer.getvalue()


def _cell(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def format_summary(result: dict) -> str:
    """The Markdown table of summary.md: one row per class."""
    settings = result["settings"]
    lines = [
        f"# Evaluation of {len(result['cases'])} case(s)",
        "",
        f"Prediction `{settings['pred']}`, ground truth `{settings['gt']}`; classes matched by "
        f"{settings['matching']}.",
        "",
        "| class | cases | Dice mean ± std | HD95 median (mm) | NSD mean | lesion sensitivity "
        "| lesion precision | lesion F1 | patient sensitivity | patient specificity |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["aggregates"].items():
        dice, nsd, lesions, patient = row["dice"], row["nsd"], row["lesions"], row["patient"]
        lines.append(
            f"| {name} | {row['cases']} | {_cell(dice['mean'])} ± {_cell(dice['std'])} "
            f"| {_cell(row['hd95']['median'], 2)} | {_cell(nsd['mean'])} at "
            f"{nsd['tolerance_mm']:g} mm | {_cell(lesions['sensitivity'])} "
            f"({lesions['detected']}/{lesions['gt_lesions']}) | {_cell(lesions['precision'])} "
            f"({lesions['true_positive_pred']}/{lesions['pred_lesions']}) "
            f"| {_cell(lesions['f1'])} | {_cell(patient['sensitivity'])} "
            f"| {_cell(patient['specificity'])} |"
        )
    conventions = metrics.CONVENTIONS
    lines += [
        "",
        f"Both masks empty: {conventions['both_empty']}. One empty: {conventions['one_empty']}. "
        "Lesion counts are pooled over cases.",
    ]
    return "\n".join(lines) + "\n"
