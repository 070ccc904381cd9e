"""The README's lines on trainings from the shipped bundle's weights that were not shipped: a
further stage on the pool (benchmarks.shipped_model train --more) and a second stage per dataset
(benchmarks.shipped_stage2)."""

from __future__ import annotations

import statistics
from pathlib import Path

from .report_format import PRODUCT, _cpu, _load, _s, _times
from .seeds import beats_spread


def continued_trial(results: Path, shipped: dict) -> list[str]:
    """A further stage trained from the shipped weights and not shipped: what it scored."""
    c = _load(results, "shipped_model_continued")
    if c is None:
        return []
    t = c["train"]
    # the trial was scored at 0.5: against the shipped weights at 0.5, before any calibration
    before = shipped.get("scores_at_0.5") or shipped["scores"]
    at = ", at 0.5" if "scores_at_0.5" in shipped else ""
    scores = "; ".join(
        f"{plan} {s['dice']['mean']:.3f} +- {s['dice']['std']:.3f} "
        f"(shipped{at}: {before[plan]['dice']['mean']:.3f})"
        for plan, s in c["scores"].items()
    )
    gain = c["scores"]["sarcoma_ct"]["dice"]["mean"] - before["sarcoma_ct"]["dice"]["mean"]
    verdict = (
        "not shipped: it did not raise the sarcomas' Dice"
        if gain <= 0
        else "ahead on the sarcomas, not shipped yet"
    )
    return [
        "",
        f"Trained further: {t['epochs'] * t['iterations']:,} more iterations from the shipped "
        f"weights ({c['pretrain']['wall_seconds'] / 60:.0f} min, {_cpu(c)}; `{PRODUCT}."
        f"shipped_model train --more {t['epochs']}`, then `ship`), held-out Dice {scores}; "
        f"{verdict} (benchmarks/results/shipped_model_continued.json).",
    ]


def stage2_trial(results: Path, shipped: dict) -> list[str]:
    """The shipped weights fine-tuned on one dataset alone, against the shipped bundle at 0.5 on
    the same held-out scans, paired by scan."""
    r = _load(results, "shipped_stage2")
    if r is None:
        return []
    parts, gains = [], []
    for row in r["rows"]:
        was = row["shipped_at_0.5"]
        diffs = [d - was["per_case_dice"][case] for case, d in row["per_case_dice"].items()]
        mean, std = statistics.mean(diffs), statistics.stdev(diffs)
        beyond = beats_spread({"mean": mean, "std": std})  # the rule every spread claim uses
        larger = "larger" if beyond else "**not larger**"
        if beyond and mean > 0:
            volume = _times(row["volume_ratio"]["median"])
            gains.append(f"the {row['dataset']} stage gains beyond its spread but predicts "
                         f"{volume} the tumour's volume")  # fmt: skip
        parts.append(
            f"{row['dataset']} ({row['config']}, {'x'.join(map(str, row['patch']))}, "
            f"{_s(row['train_seconds'])}) Dice {row['dice']['mean']:.3f} +- "
            f"{row['dice']['std']:.3f}, volume {_times(row['volume_ratio']['median'])} (shipped "
            f"at 0.5: {was['dice']['mean']:.3f}, {_times(was['volume_ratio']['median'])}); paired "
            f"by scan {mean:+.3f} +- {std:.3f}, ahead on {sum(d > 0 for d in diffs)} of "
            f"{len(diffs)} ({larger} than its spread)"
        )
    iterations = r["settings"]["epochs"] * r["settings"]["iterations_per_epoch"]
    return [
        "",
        f"A second stage per dataset: the shipped weights fine-tuned {iterations:,} iterations on "
        "one dataset's training scans alone, with that dataset's own plan and patch (seed 0, "
        f"{_cpu(r)}; `{PRODUCT}.shipped_stage2`), scored at 0.5 without mirroring on the same "
        f"held-out scans: {'; '.join(parts)}. Neither stage is in models/: a bundle holds one "
        "set of weights for all its plans"
        + "".join(f"; {gain}" for gain in gains)
        + " (benchmarks/results/shipped_stage2.json).",
    ]
