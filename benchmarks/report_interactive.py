"""The README's table of Dice per click, from benchmarks/results/interactive.json (issue 19)."""

from __future__ import annotations

from pathlib import Path

from .report_format import PRODUCT, _command, _cpu, _load


def interactive_table(results: Path) -> list[str]:
    r = _load(results, "interactive")
    if r is None:
        return [f"Not measured yet: `{PRODUCT}.interactive`."]
    s = r["settings"]
    counts = sorted(int(k.rsplit("_", 1)[1]) for k in r["rows"][0] if k.startswith("dice_after_"))
    cases = len(next(iter(r["per_case"].values())))
    lines = [
        f"A simulated reader on {cases} held-out real sarcoma CTs: a first click inside the "
        f"tumour or its jittered box, then corrective clicks, each at the centre of the largest "
        f"error. The promptable bundle (`finetune --promptable` from the shipped one, "
        f"{s['epochs']} epochs of {s['iterations']} iterations, seed {s['seed']}) against the "
        f"automatic bundle, which ignores prompts, and SimpleITK's ConfidenceConnected region "
        f"growing from the clicks; Dice mean +- standard deviation over the cases; {_cpu(r)}; "
        f"`{_command(r)}`.",
        "",
        "| segmenter, first prompt | "
        + " | ".join("first prompt" if n == 0 else f"+{n} clicks" for n in counts)
        + " |",
        "|---|" + "---:|" * len(counts),
    ]
    for row in r["rows"]:
        cells = [row[f"dice_after_{n}"] for n in counts]
        lines.append(
            f"| {row['arm']} | "
            + " | ".join(f"{c['mean']:.3f} +- {c['std']:.3f}" for c in cells)
            + " |"
        )
    clicks, goal = r["seconds_per_click"], r["targets"]
    best = max(
        (row for row in r["rows"] if row["arm"].startswith("promptable")),
        key=lambda row: row["dice_after_5"]["mean"],
    )
    after5 = best["dice_after_5"]["mean"]
    first, following = clicks["first"]["mean"], clicks["following"]["mean"]
    reached = "met" if after5 >= goal["dice_after_5"] else "**missed**"
    lines += [
        "",
        f"After 5 corrective clicks the promptable bundle reaches {after5:.3f} ({best['arm']}; "
        f"target >= {goal['dice_after_5']:g}: {reached}). "
        f"Seconds per click: {first:.1f} for the first, "
        f"{following:.1f} for each following one (target <= {goal['seconds_per_click']:g}: "
        f"{'met' if following <= goal['seconds_per_click'] else '**missed**'}); peak memory "
        f"{r['peak_memory_mb']:,.0f} MB.",
    ]
    return lines
