"""The README's tables of Dice per click, from benchmarks/results/interactive.json (issue 19)."""

from __future__ import annotations

from pathlib import Path

from .report_format import PRODUCT, _command, _cpu, _load

SCANS = {"sarcoma_ct": "real sarcoma CTs", "brain_mr": "real glioblastoma T1 MRs"}


def interactive_table(results: Path) -> list[str]:
    r = _load(results, "interactive")
    if r is None:
        return [f"Not measured yet: `{PRODUCT}.interactive`."]
    if "datasets" not in r:  # a file from before the glioblastomas: the sarcomas alone
        r = {"datasets": {"sarcoma_ct": r}, "targets": r["targets"]}
    lines: list[str] = []
    for name, scans in SCANS.items():
        entry = r["datasets"].get(name)
        if entry is None:
            lines += [f"Held-out {scans}: not measured yet (`{PRODUCT}.interactive --datasets "
                      f"{name}`).", ""]  # fmt: skip
            continue
        lines += dataset_table(entry, scans, r["targets"], name == "sarcoma_ct") + [""]
    return lines[:-1]


def dataset_table(r: dict, scans: str, goal: dict, targeted: bool) -> list[str]:
    s = r["settings"]
    counts = sorted(int(k.rsplit("_", 1)[1]) for k in r["rows"][0] if k.startswith("dice_after_"))
    cases = len(next(iter(r["per_case"].values())))
    lines = [
        f"A simulated reader on {cases} held-out {scans}: a first click inside the "
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
    clicks = r["seconds_per_click"]
    best = max(
        (row for row in r["rows"] if row["arm"].startswith("promptable")),
        key=lambda row: row["dice_after_5"]["mean"],
    )
    after5 = best["dice_after_5"]["mean"]
    first, following = clicks["first"]["mean"], clicks["following"]["mean"]
    reached = "met" if after5 >= goal["dice_after_5"] else "**missed**"
    target = f"; target >= {goal['dice_after_5']:g}: {reached}" if targeted else ""
    fast = "met" if following <= goal["seconds_per_click"] else "**missed**"
    corrective = r.get("corrective_clicks")
    heeded = ""
    if corrective and corrective["count"]:
        heeded = (
            f" Of {corrective['count']} corrective clicks, {corrective['honoured']:.0%} left the "
            f"mask agreeing with the click at its voxel; {corrective['repeated']:.0%} went to a "
            f"voxel clicked before (the click before changed nothing there)."
        )
    lines += [
        "",
        f"After 5 corrective clicks the promptable bundle reaches {after5:.3f} ({best['arm']}"
        f"{target}). Seconds per click: {first:.1f} for the first, {following:.1f} for each "
        f"following one (target <= {goal['seconds_per_click']:g}: {fast}); peak memory "
        f"{r['peak_memory_mb']:,.0f} MB.{heeded}",
    ]
    return lines
