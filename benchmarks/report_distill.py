"""The README's distillation table, from benchmarks/results/distill.json (issue 20)."""

from __future__ import annotations

from pathlib import Path

from tumorfm.model.bundle import WEIGHTS
from tumorfm.model.presets import PRESETS

from . import seeds
from .common import ROOT, sha256
from .report_accuracy import _over_seeds
from .report_format import PRODUCT, _command, _cpu, _load, _mb, _s


def _signed(stats: dict) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:+.3f}" + ("" if stats["std"] is None else f" +- {stats['std']:.3f}")


def _ahead(gain: dict) -> bool:
    return gain["mean"] is not None and gain["mean"] > 0


def _spread(gain: dict) -> str:
    if gain["n"] < 2:
        return "one seed, no spread yet"
    return "larger than its spread" if gain["beats_spread"] else "not larger than its spread"


def distill_table(results: Path) -> list[str]:
    r = _load(results, "distill")
    if r is None:
        return [f"Not measured yet: `{PRODUCT}.distill`."]
    s, teacher = r["settings"], r["teacher"]
    measured = list(r["per_seed"])  # an incomplete run holds fewer than its settings ask
    seed_list = ", ".join(map(str, measured))
    spread = "mean +- standard deviation over seeds" if len(measured) > 1 else "one seed"
    half = PRESETS.get(s["student"], {}).get("stem_stride", 1) > 1
    lines = [
        f"Teacher: the shipped {teacher['bundle']} ({teacher['preset']}). Students: "
        f"{s['student']}{' (a strided stem: every stage at half resolution)' if half else ''} "
        f"from scratch on the teacher's training sarcomas, {s['iterations']} "
        f"iterations, on the labels alone or distilled (alpha {s['alpha']:g}, temperature "
        f"{s['temperature']:g}); Dice on the 7 held-out sarcomas, `predict --fast`; {spread} "
        f"({seed_list}); {_cpu(r)}; `{_command(r)}`.",
        "",
        "| model | parameters | Dice on held-out sarcomas | median HD95 mm | s per scan | peak |",
        "|---|---:|---:|---:|---:|---:|",
        f"| teacher | {teacher['parameters']:,} | {teacher['dice']:.3f} | "
        f"{teacher['hd95_median']:.1f} | {_s(teacher['predict_seconds_per_scan'])} | "
        f"{_mb(teacher['predict_peak_mb'])} |",
    ]
    for row in r["rows"]:
        per_scan = _s(row["predict_seconds_per_scan"]["mean"])
        lines.append(
            f"| student, {row['arm']} | {r['per_seed'][str(s['seeds'][0])][0]['parameters']:,} | "
            f"{_over_seeds(row['dice'])} | {_over_seeds(row['hd95_median'], 1)} | {per_scan} | "
            f"{_mb(row['predict_peak_mb']['mean'])} |"
        )
    gain, targets = r["gain_over_labels"], r["targets"]
    kept, ratio = r["dice_kept"], r["time_ratio"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    beats = _ahead(gain)
    if not r.get("complete", True):
        done = "; ".join(
            f"seed {k}: {', '.join(x['arm'] for x in v)}" for k, v in r["per_seed"].items()
        )
        lines += ["", f"**Incomplete run** (measured so far: {done}); the rest is to come."]
    if kept is None:
        return lines + ["", "No distilled student is measured yet."]
    lines += [
        "",
        f"The distilled student keeps {kept:.2f} of the teacher's Dice (target "
        f">= {targets['dice_kept']:g}: {verdict(kept >= targets['dice_kept'])}) at {ratio:.2f} of "
        f"its prediction time (target <= {targets['time_ratio']:g}: "
        f"{verdict(ratio <= targets['time_ratio'])}); against labels alone "
        f"{_signed(gain)} Dice (target: ahead, {verdict(beats)}; {_spread(gain)}).",
    ]
    if r.get("time_ratio_large_scan") is not None:
        large = r["time_ratio_large_scan"]
        lines += [
            "",
            f"On a whole CT (lung1, 512x512x48, `predict --fast`), where the network runs "
            f"more windows than on a sarcoma crop: {large:.2f} of the teacher's time "
            f"(target <= {targets['time_ratio']:g}: {verdict(large <= targets['time_ratio'])}).",
        ]
        if r.get("network_time_ratio_large_scan") is not None:  # predict.json's network stage
            lines[-1] += (
                f" The network alone (the windows, without reading, resampling and writing) "
                f"takes {r['network_time_ratio_large_scan']:.2f} of the teacher's: the rest is "
                f"what both pay per scan."
            )
            floor = 1 - teacher["large_scan_network_seconds"] / teacher["large_scan_seconds"]
            lines[-1] += (
                f" That rest (starting the process, reading, resampling, writing) is {floor:.2f} "
                f"of the teacher's time on this scan: no student, however fast its network, "
                f"goes below it."
            )
    if r.get("features_gain"):
        lines += [
            "",
            f"Stage features too (`--features`) against the outputs alone: "
            f"{_signed(r['features_gain'])} Dice ({_spread(r['features_gain'])}).",
        ]
        features = next((x["dice"]["mean"] for x in r["rows"] if x["arm"] == "features"), None)
        if features is not None:
            kept = features / teacher["dice"]
            ahead = _against_labels(r, "features")
            lines[-1] += (
                f" That student keeps {kept:.2f} of the teacher's Dice (target >= "
                f"{targets['dice_kept']:g}: {verdict(kept >= targets['dice_kept'])}); against "
                f"labels alone {_signed(ahead)} (target: ahead, "
                f"{verdict(_ahead(ahead))}; {_spread(ahead)})."
            )
    shipped = ROOT / "models" / teacher["bundle"] / WEIGHTS
    if shipped.is_file() and r.get("teacher_weights_sha256") not in (None, sha256(shipped)):
        lines += [
            "",
            f"The teacher here is an earlier version of {teacher['bundle']} (weights sha256 "
            f"{r['teacher_weights_sha256'][:12]}), shipped again since: `{_command(r)}` "
            "measures the students anew with today's.",
        ]
    lines += _longer_budget(results, teacher)
    if r.get("teacher_note"):  # where the teacher's own time comes from, when not this run
        lines += ["", f"Note: {r['teacher_note']}."]
    if "teacher_loss" not in r:  # measured before the Dice with the teacher's mask was added
        lines += [
            "",
            "These students were taught by the softened BCE alone; the teacher's term now adds "
            "the Dice with its mask (tumorfm/train/teacher.py), not measured yet.",
        ]
    return lines


def _against_labels(r: dict, arm: str) -> dict:
    """An arm's Dice minus the labels-only student's, seed by seed (benchmarks/seeds.py)."""
    rows = {int(seed): arms for seed, arms in r["per_seed"].items()}
    return seeds.paired_difference(rows, {"arm": arm}, {"arm": "labels"}, "dice")


def _longer_budget(results: Path, teacher: dict) -> list[str]:
    """The same comparison at a longer budget (benchmarks/results/distill_long.json, a run of
    `benchmarks.distill --iterations N --out ...`), when one was measured."""
    r = _load(results, "distill_long")
    if r is None or not r["rows"]:
        return []
    s, seeds_run = r["settings"], ", ".join(r["per_seed"])
    counts = {row["dice"]["n"] for row in r["rows"]}  # a run stopped part-way: say per arm
    arms = "; ".join(
        f"{row['arm']} {_over_seeds(row['dice'])}"
        + (f" ({row['dice']['n']} seed(s))" if len(counts) > 1 else "")
        for row in r["rows"]
    )
    gains = {
        row["arm"]: (row["dice"]["mean"], _against_labels(r, row["arm"]))
        for row in r["rows"]
        if row["arm"] != "labels" and row["dice"]["mean"]
    }
    ahead = "; ".join(
        f"{arm} keeps {dice / teacher['dice']:.2f} of the teacher's Dice, {_signed(gain)} against "
        f"labels alone ({_spread(gain)})"
        for arm, (dice, gain) in gains.items()
    )
    return [
        "",
        f"A longer budget, {s['iterations']} iterations ({s['student']}, seed(s) {seeds_run}): "
        f"Dice {arms}, the teacher {teacher['dice']:.3f}; `{_command(r)}`."
        + (f" Paired by seed: {ahead}." if ahead else ""),
    ]
