"""The README's lines on whether a model learnt the tumour or where it sits in its window:
benchmarks.placement moves whole scans, benchmarks.patch_position the tumour in one patch."""

from __future__ import annotations

from pathlib import Path

from .common import ROOT, sha256
from .placement import METRICS
from .report_accuracy import _over_seeds
from .report_format import PRODUCT, _cpu, _load


def placement_lines(results: Path) -> list[str]:
    """Whether a model learnt the tumour or its place in the window (benchmarks.placement)."""
    r = _load(results, "placement")
    if r is None or "over_seeds" not in r:
        return ["", f"Placement: not measured yet (`{PRODUCT}.placement`)."]
    s, shipped, seeds = r["settings"], r["shipped"], r["settings"]["seeds"]
    lines = [
        "",
        f"**Placement: the tumour, or where it sits in the window?** Each of the "
        f"{len(s['held_out'])} held-out sarcomas scored again after moving it within the "
        f"sliding-window grid ({len(s['shifts']) - 1} shifts of 16-48 voxels, zero padding on one "
        f"side). tsfm-tiny trained on the shipped split's sarcomas, both placements side by side "
        f"for {s['epochs'] * s['iterations']} iterations, one thread each, {len(seeds)} seed(s) "
        f"(mean +- standard deviation over seeds), scored at 0.5 without mirroring; the shipped "
        f"bundle (nnU-Net's centred rule) at its threshold; {_cpu(r)}; `{PRODUCT}.placement`. "
        "Dice is the mean over scans; agreement is the Dice between a moved scan's mask and the "
        "unmoved one's.",
        "",
        "| model | Dice, as cropped | Dice, moved (mean over shifts) | worst shift | agreement |",
        "|---|---:|---:|---:|---:|",
        f"| the shipped bundle ({Path(shipped['bundle']).name}) | "
        + " | ".join(f"{shipped[m]:.3f}" for m in METRICS)
        + " |",
    ]
    for arm, name in (("centred", "nnU-Net's rule, the default"), ("anywhere", "the option")):
        cells = " | ".join(_over_seeds(r["over_seeds"][arm][m]) for m in METRICS)
        lines.append(f"| tsfm-tiny, `--placement {arm}` ({name}) | {cells} |")
    gap = r["anywhere_minus_centred"]
    said = [
        f"{label} {gap[m]['mean']:+.3f}"
        + (f" +- {gap[m]['std']:.3f} ({'larger' if gap[m]['beats_spread'] else '**not larger**'}"
           " than its spread)" if gap[m]["std"] is not None else " (one seed: no spread)")
        for m, label in zip(METRICS, ("as cropped", "moved", "worst shift", "agreement"))
    ]  # fmt: skip
    centred = r["over_seeds"]["centred"]
    lost = shipped["dice_unshifted"] - shipped["dice_shifted_mean"]
    short = centred["dice_unshifted"]["mean"] - centred["dice_shifted_mean"]["mean"]
    by_seed = "anywhere - centred, paired by seed: " + "; ".join(said) + "."
    leans = (
        f"Moved, the shipped bundle (a larger network, 1,800 iterations) loses {lost:.3f} Dice "
        f"and the short centred runs {short:.3f}: the longer, larger run leans on the place "
        "more. "
    )
    cropped = gap["dice_unshifted"]
    if cropped["mean"] < 0 and cropped.get("beats_spread"):
        leans += (
            f"In {s['epochs'] * s['iterations']} iterations `--placement anywhere` learns less "
            "(it places the tumour anywhere, and half of the patch may be padding): "
        )
    leans += "whether it keeps a run of the bundle's length from the place is not measured yet."
    return lines + ["", by_seed, "", leans] + _stale_bundle(shipped)


def _stale_bundle(scored: dict, benchmark: str = "placement") -> list[str]:
    """A line saying so when the bundle in models/ is not the one a result scored."""
    path = Path(scored["bundle"])
    now = ROOT / "models" / path.name / "model.safetensors"
    if (
        path.parent.name != "models"
        or "weights_sha256" not in scored
        or not now.is_file()
        or sha256(now) == scored["weights_sha256"]
    ):
        return []
    return ["", f"(Scored an earlier {path.name}: run `{PRODUCT}.{benchmark}` again.)"]


def position_lines(results: Path) -> list[str]:
    """Dice inside one patch with the tumour at its centre and moved off it, per bundle."""
    r = _load(results, "patch_position")
    if r is None:
        return ["", f"Patch position: not measured yet (`{PRODUCT}.patch_position`)."]
    s = r["settings"]
    moved = [o for o in s["offsets"] if any(o)]
    lines = [
        "",
        f"**One patch, the tumour moved in it.** Each scan of the shipped split (held-out, and the "
        f"first {len(next(iter(s['cases'].values()))['train'])} training scans per dataset) cut "
        f"once with the centre of its tumour at the patch centre and {len(moved)} times moved "
        f"off it by up to half a window step ({', '.join('/'.join(map(str, o)) for o in moved)} "
        f"voxels z/y/x), the network's probability scored inside the patch: Dice at "
        f"{s['threshold']}, mean over scans; {_cpu(r)}; `{PRODUCT}.patch_position`.",
        "",
        "| bundle | scans | Dice, centred | Dice, moved (mean) | worst offset | kept when moved |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for b in r["bundles"]:
        for name, row in b["rows"].items():
            kept = row["kept_off_centre"]
            lines.append(
                f"| {b.get('label') or Path(b['bundle']).name} | "
                f"{name.replace('/', ', ').replace('_', ' ')} | "
                f"{row['dice_centre']:.3f} | {row['dice_off_centre']:.3f} | "
                f"{row['dice_worst_offset']:.3f} | {'n/a' if kept is None else f'{kept:.0%}'} |"
            )
        lines += _stale_bundle(b, "patch_position")
    return lines
