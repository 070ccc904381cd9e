"""The shipped bundle's model card, MODEL_CARD.md: every figure from benchmarks/results."""

from __future__ import annotations

import json
from pathlib import Path

from .common import RESULTS, ROOT
from .report_format import _dice_and_volume, _ratio, _times

NAME = "tsfm-real-lowres"
FOUND = 0.1  # a plan whose best held-out Dice is below this has not learnt its tumour


def unlearnt(scores: dict) -> list[str]:
    """The plans whose tumour the bundle has not learnt (best held-out Dice below FOUND)."""
    return [plan for plan, s in scores.items() if s["dice"]["max"] < FOUND]


def volume_limit(scores: dict) -> str:
    """The card's line for each plan whose predicted volumes run a quarter or more off."""
    lines = []
    for name, s in scores.items():
        r = s.get("volume_ratio")
        if r is None or 0.8 < r["median"] < 1.25:
            continue
        lines.append(
            f"- On {name} the predicted volume is a median {r['median']:.1f}x the reference "
            f"({r['min']:.1f}x - {r['max']:.1f}x over the held-out scans): it "
            f"{'over' if r['median'] > 1 else 'under'}-segments, and the volumes of "
            "`predict --statistics` are off by as much.\n"
        )
    return "".join(lines)


def _fmt(summary: dict, digits: int = 2) -> str:
    return f"{summary['mean']:.{digits}f} +- {summary['std']:.{digits}f}"


def card(info: dict, scores: dict, size_mb: float) -> str:
    """MODEL_CARD.md, every figure from the results of this script."""
    t = info["train"]
    rows = "\n".join(
        f"| {name} | {s['class']} | {s['cases']} | {_fmt(s['dice'], 3)} | "
        f"{s['dice']['min']:.3f} - {s['dice']['max']:.3f} | {s['hd95']['median']:.1f} | "
        f"{_fmt(s['nsd'], 3)} | {_ratio(s.get('volume_ratio'))} |"
        for name, s in scores.items()
    )
    held = "\n".join(f"- {name}: {', '.join(s['held_out'])}" for name, s in scores.items())
    stages = info.get("earlier", []) + [info]
    minutes = sum(stage["pretrain"]["wall_seconds"] for stage in stages) / 60
    iterations = sum(stage["train"]["epochs"] * stage["train"]["iterations"] for stage in stages)
    trials = json.loads((RESULTS / "shipped_model_trials.json").read_text())
    trial_rows = "\n".join(
        f"| {m} | {r['iterations']} | {r['train_seconds'] / 60:.0f} min | "
        f"{r['sarcoma']['dice_mean']:.3f} +- {r['sarcoma']['dice_std']:.3f} | "
        f"{r['brain']['dice_mean']:.3f} |"
        for m, r in trials["runs"].items()
    )

    mirrored = all(s["mirror"] for s in scores.values())
    how = "with its defaults (mirroring, overlap 0.5)" if mirrored else "without mirroring"
    if "scored_on" in info:  # `rescore`: the shipped weights scored again, maybe on another CPU
        how += f" (scored again by `rescore` on {info['scored_on']['cpu']})"

    not_learnt = "".join(
        f"- On {name} it has not learnt the tumour yet: a held-out Dice of "
        f"{scores[name]['dice']['max']:.3f} at best, its masks lie mostly elsewhere. Do not use "
        "it for this plan.\n"
        for name in unlearnt(scores)
    )
    limits = not_learnt + stage2_limit(scores) + volume_limit(scores) + placement_limit(info)

    def relative(command: str) -> str:
        return command.replace(f"{ROOT}/", "")

    return f"""# {NAME}

A TSFM network ({t["model"]}, {info["parameters"] / 1e6:.1f}M parameters) pretrained on the real
scans beside this repository, for {minutes:.0f} minutes on a CPU: the sarcoma CTs at a coarse
(3d_lowres) spacing sized for a {"x".join(map(str, t["patch"]))} patch, the glioblastoma MRs at full
resolution. {_purpose(scores)}
**Research use only: not a medical device, not for clinical decisions.**

```
tumorfm predict -i scan.nii.gz -o out/ -m {NAME} --plan sarcoma_ct   # CT, soft-tissue sarcoma
tumorfm predict -i scan.nii.gz -o out/ -m {NAME} --plan brain_mr     # T1c MR, glioblastoma
```

## Training data and licences
- Soft-tissue sarcoma CT: TCIA Soft-tissue-Sarcoma (Vallieres et al. 2015, DOI
  10.7937/K9/TCIA.2015.7GO2GSKS), as cropped 5 cm around the tumour in the IBSI validation set;
  CC BY 3.0. 36 cases; label: gross tumour volume.
- Glioblastoma T1 post-contrast MR: TCIA Brain-Tumor-Progression (Schmainda & Prah 2018); CC BY
  3.0. 16 scans of 8 patients (pre and post treatment). The source lost the real voxel spacing
  (identity 1 mm affine), so this plan's spacing is in that unit, not in millimetres.

## Split
A fixed fifth of each dataset never trained (the held-out scans below are scored; the training
run validated on them too, but the shipped weights are its last epoch, not a selection on them):
{held}

## Training
{_training(stages, relative)}
(`python -m benchmarks.shipped_model train` runs the first stage with the split above,
`train --more EPOCHS` a further one from the shipped weights; `... ship` scores the held-out scans
and writes this folder.) {iterations:,} iterations in all, batch {t["batch"]}, SGD Nesterov 0.99,
lr 1e-2 poly in each stage, the partial-label loss, deep supervision, nnU-Net's augmentation.
{_placed(t)}The pool file (configs/pools/real.yaml) gives the sarcomas three quarters of the
samples (the target is sarcoma Dice) and keeps the glioblastomas at full resolution (at the lowres
spacing a tumour shrinks to a few hundred voxels, and an earlier run never found one). Weights
stored in float16 ({size_mb:.1f} MB); loading
restores float32.

The preset was chosen on two short runs at equal wall time (one thread each, side by side, on
the split of benchmarks/accuracy.py; held-out scans predicted without mirroring; the commands are
in benchmarks/results/shipped_model_trials.json):

| preset | iterations | training | sarcoma Dice | glioblastoma Dice |
|---|---:|---:|---:|---:|
{trial_rows}

A tie on the sarcomas within their spread; {t["model"]} was kept for its capacity (a longer run
favours the larger network: tsfm-small reached 0.78 at 1,350 iterations in an earlier
measurement) and its fewer false-positive components. Neither had learnt the glioblastomas yet.

{_thresholds(info)}## Held-out scores
`tumorfm predict` {how}, scored by `tumorfm evaluate` in each scan's own
geometry. Mean +- standard deviation over scans (HD95: median; volume: predicted / reference,
median and range over scans).

| plan | class | scans | Dice | Dice range | HD95 mm | NSD (2 mm) | volume |
|---|---|---:|---:|---:|---:|---:|---:|
{rows}
{_at_half(info)}
## Limits
{limits}- Sarcoma CTs here are crops around the tumour; on a whole-body CT the model has never
  seen the rest of the body and will find false positives there.
- The MR set is small (12 training scans) and its spacing unknown; expect less on other scanners.
- Trained for minutes on a CPU, not the paper's 250,000 iterations of a 1.6B network on GPUs.
"""


TUMOURS = {"sarcoma_ct": "soft-tissue sarcomas on CT", "brain_mr": "glioblastomas on T1c MR"}


def _purpose(scores: dict) -> str:
    """What it segments, and which of its plans has not learnt its tumour (Limits says more)."""
    trained = " and ".join(TUMOURS.get(plan, plan) for plan in scores)
    missing = [TUMOURS.get(p, p) for p in unlearnt(scores)]
    if not missing:
        return f"It segments {trained}."
    missing_text = " or ".join(missing)
    return f"It was trained to segment {trained}; it does not find the {missing_text} yet (Limits)."


def _thresholds(info: dict) -> str:
    """The card's account of the decision thresholds `calibrate` stored, if any."""
    calibration = info.get("calibration")
    if not calibration:
        return ""
    lines = "\n".join(
        f"| {plan} | {c['class']} | {c['threshold']:.2f} | {c['cases']} | "
        f"{c['mean_dice_at_0.5']:.3f} | {c['mean_dice']:.3f} | "
        f"{_times(c['median_volume_ratio_at_0.5'])} | {_times(c['median_volume_ratio'])} |"
        for plan, c in calibration.items()
    )
    mirror = "with mirroring" if all(c["mirror"] for c in calibration.values()) else "without"
    return f"""## Decision thresholds
Each class's probability is cut at the threshold `tumorfm model calibrate` chose on the bundle's
own training scans (predicted {mirror} mirroring, the threshold of 0.05-0.95 with the best mean
Dice), not at 0.5: trained for minutes, the network ranks voxels better than it places the line,
and at 0.5 it over-segments. The held-out scans had no say in it. `predict`, `refine` and `view`
use the stored threshold (`python -m benchmarks.shipped_model calibrate --no-mirror` chose it).

| plan | class | threshold | scans | Dice at 0.5 | Dice at it | volume at 0.5 | volume at it |
|---|---|---:|---:|---:|---:|---:|---:|
{lines}

(Scans: the training scans; Dice: their mean; volume: predicted / reference, their median.)

"""


def _placed(t: dict) -> str:
    """The card's sentence on patch placement, for a bundle trained off nnU-Net's rule."""
    if t.get("placement", "centred") == "centred":
        return ""
    return (
        "Patches were placed with `--placement anywhere`: a foreground sample's voxel anywhere "
        "in the patch,\nwhich may hang out of a case by half its size, not at the centre where "
        "nnU-Net's rule puts it\n(a bundle trained that way learnt where a tumour sits: README, "
        "Placement).\n"
    )


def stage2_limit(scores: dict, results: Path = RESULTS) -> str:
    """For a plan the bundle has not learnt: what fine-tuning it on that plan's scans alone
    reached (benchmarks.shipped_stage2), the first thing a user would try."""
    path = results / "shipped_stage2.json"
    if not path.is_file():
        return ""
    lines = []
    for row in json.loads(path.read_text())["rows"]:
        if row["dataset"] in unlearnt(scores):
            lines.append(
                f"- Fine-tuned on {row['dataset']}'s training scans alone (`tumorfm finetune "
                f"--from` this bundle, "
                f"{row['iterations']} iterations, {row['config']}, patch "
                f"{'x'.join(map(str, row['patch']))}), it reached a held-out Dice of "
                f"{row['dice']['mean']:.3f}\n  with {_times(row['volume_ratio']['median'])} the "
                "tumour's volume (`python -m benchmarks.shipped_stage2`): a start, not a model.\n"
            )
    return "".join(lines)


def placement_limit(info: dict) -> str:
    """What moving a scan within the sliding-window grid costs this bundle (benchmarks.placement),
    for a bundle trained with nnU-Net's centred placement."""
    path = RESULTS / "placement.json"
    if info["train"].get("placement", "centred") != "centred" or not path.is_file():
        return ""
    shipped = json.loads(path.read_text()).get("shipped")
    if shipped is None:
        return ""
    return (
        "- It was trained with nnU-Net's centred placement on sarcoma crops centred on their "
        "tumour,\n  and part of what it learnt is where in its window a tumour sits: moved, the "
        f"held-out sarcomas\n  score {shipped['dice_shifted_mean']:.3f} on average (worst shift "
        f"{shipped['dice_worst_shift']:.3f}) against {shipped['dice_unshifted']:.3f} as cropped "
        "(`python -m benchmarks.placement`).\n  On a scan whose tumour is not in the middle, "
        "expect less than the held-out scores.\n"
    )


def _at_half(info: dict) -> str:
    """The held-out Dice and volume at 0.5, before the thresholds, for comparison."""
    before = info.get("scores_at_0.5")
    if not before or not info.get("calibration"):
        return ""
    scored = _dice_and_volume(before)
    return f"\nAt a threshold of 0.5 (before calibration) the same scans scored: {scored}.\n"


def _training(stages: list[dict], relative) -> str:
    """The card's account of each training stage: its time, machine and commands."""
    parts = []
    for number, stage in enumerate(stages, 1):
        t, minutes = stage["train"], stage["pretrain"]["wall_seconds"] / 60
        start = (
            "from random weights" if number == 1 else f"from the weights stage {number - 1} shipped"
        )
        commands = [stage["pretrain"]["command"]]
        if "preprocess" in stage:
            commands.insert(0, stage["preprocess"]["command"])
        parts.append(
            f"Stage {number}: {t['epochs']} epochs x {t['iterations']} iterations {start}, "
            f"{minutes:.0f} minutes on a 2-core {stage['machine']['cpu']} (bf16 where the CPU "
            f"has it), from the repository root:\n\n```\n"
            + "\n".join(relative(c) for c in commands)
            + "\n```\n"
            + (f"\n{stage['note']}\n" if stage.get("note") else "")
        )
    return "\n".join(parts)
