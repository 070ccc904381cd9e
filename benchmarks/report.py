"""The README's results section, generated from benchmarks/results/*.json, never typed by hand.

    python -m benchmarks.report            # rewrite the section between the README's markers
    python -m benchmarks.report --check    # exit 1 if the README differs from the results files

Every figure is read from a results file a benchmark wrote; a benchmark that has not run yet shows
as "not measured" with the command that measures it. Ratios are tumorfm / peer (time and memory:
lower is better for tumorfm), each beside its target.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .common import parser_for
from .report_accuracy import accuracy_table, shipped_table, transfer_table
from .report_distill import distill_table
from .report_format import BENCH, END, PRODUCT, README, RESULTS, START, _cpu, _load, _mb, _s
from .report_interactive import interactive_table
from .report_placement import placement_lines, position_lines
from .report_synth import (
    pretraining_table,
    synth_table,
    transfer_synthesis_lines,
    usefulness_table,
)


def _met(ratio: float | None, target: float | None) -> str:
    if ratio is None or target is None:
        return ""
    return "yes" if ratio <= target else "**no**"


def _row(what, tumorfm, peer, ratio, target, cpu, command) -> dict:
    return dict(
        what=what, tumorfm=tumorfm, peer=peer, ratio=ratio, target=target, cpu=cpu, command=command
    )


def _spread(median: float, times: list[float]) -> str:
    """A median with the range of the repeats it comes from."""
    return f"{_s(median)} ({min(times):,.1f}-{max(times):,.1f})"


def preprocess_rows(r: dict) -> list[dict]:
    t, n = r["median_seconds"]["tumorfm"], r["median_seconds"]["nnunet"]
    what = f"preprocess {r['cases']} sarcoma CTs, {r['settings']['workers']} workers, median "
    what += f"(min-max) of {r['settings']['repeats']} "
    what += f"(plans agree: {'yes' if r['plans_agree'] else 'no'})"
    ours, theirs = _spread(t, r["seconds"]["tumorfm"]), _spread(n, r["seconds"]["nnunet"])
    speedup = 1 / r["target_speedup"]
    return [_row(what, ours, theirs, t / n, speedup, _cpu(r), f"{BENCH}.preprocess")]


def model_rows(r: dict) -> list[dict]:
    t, n = r["models"]["tsfm-small"], r["models"]["resenc"]
    patch = "x".join(map(str, r["settings"]["patch"]))
    what = f"training step, {patch} batch {r['settings']['batch']}, tsfm-small "
    what += f"{t['params'] / 1e6:.1f}M vs ResEnc U-Net {n['params'] / 1e6:.1f}M, median "
    what += f"(min-max) of {r['settings']['repeats']}"
    rows = [
        _row(
            what,
            _spread(t["median_seconds"], t["seconds"]),
            _spread(n["median_seconds"], n["seconds"]),
            t["median_seconds"] / n["median_seconds"],
            None,
            _cpu(r),
            f"{BENCH}.model",
        )
    ]
    rows.append(
        _row(
            "peak memory of that step",
            _mb(t["step_mb"]),
            _mb(n["step_mb"]),
            t["step_mb"] / n["step_mb"],
            None,
            _cpu(r),
            "same",
        )
    )
    return rows


def train_rows(r: dict) -> list[dict]:
    runs, rows = r["runs"], []
    patch = "x".join(map(str, r["settings"]["patch"]))
    peer = runs["nnunet"]
    for key in ("tumorfm", "tumorfm_fp32"):
        if key not in runs:
            continue
        t = runs[key]
        what = f"training iteration on sarcoma CT, {patch} batch {r['settings']['batch']}, "
        what += f"matched ~{r['settings']['networks']['tumorfm']['params'] / 1e6:.1f}M parameters, "
        what += f"tumorfm {t['precision']} vs nnU-Net fp32"
        rows.append(
            _row(
                what,
                _s(t["seconds_per_iteration"]),
                _s(peer["seconds_per_iteration"]),
                t["seconds_per_iteration"] / peer["seconds_per_iteration"],
                1 / r["target_ratio"],
                _cpu(r),
                f"{BENCH}.train" if not rows else "same",
            )
        )
    t = runs["tumorfm"]
    rows.append(
        _row(
            "peak memory of that training (PSS of the process tree)",
            _mb(t["peak_tree_pss_mb"]),
            _mb(peer["peak_tree_pss_mb"]),
            t["peak_tree_pss_mb"] / peer["peak_tree_pss_mb"],
            None,
            _cpu(r),
            "same",
        )
    )
    return rows


def predict_rows(r: dict) -> list[dict]:
    rows, targets = [], r["targets_tumorfm_vs_nnunet"]
    by = {(x["input"], x["mirror"], x["tool"]): x for x in r["rows"]}
    for (source, mirror, tool), t in by.items():
        if not tool.startswith("tumorfm"):
            continue
        n = by[(source, mirror, "nnunet")]
        size = "x".join(map(str, r["inputs"][source]["size_xyz"]))
        what = f"predict {source} ({size}), {'8-flip mirroring' if mirror else 'no mirroring'}, "
        what += f"tumorfm {t['precision']}" + (
            " --fast (overlap 0.25)" if tool.endswith("fast") else ""
        )
        if "windows_per_call" in t:  # older files: 4 windows per network call throughout
            what += f", {t['windows_per_call']} window{'s' * (t['windows_per_call'] > 1)} per call"
        command = f"{BENCH}.predict" if not rows else "same"
        rows.append(
            _row(
                what,
                _s(t["wall_seconds"]),
                _s(n["wall_seconds"]),
                t["wall_seconds"] / n["wall_seconds"],
                targets["time"],
                _cpu(r),
                command,
            )
        )
        if tool != "tumorfm_fp32":
            rows.append(
                _row(
                    "peak memory of that prediction",
                    _mb(t["peak_mb"]),
                    _mb(n["peak_mb"]),
                    t["peak_mb"] / n["peak_mb"],
                    targets["memory"],
                    _cpu(r),
                    "same",
                )
            )
    return rows


SPEED = {  # results file -> its rows, in the order of the data flow
    "preprocess": preprocess_rows,
    "model": model_rows,
    "train": train_rows,
    "predict": predict_rows,
}


def speed_table(results: Path) -> list[str]:
    lines = [
        "| what | tumorfm | nnU-Net v2 | tumorfm / peer | target | met | machine | command |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for name, rows_of in SPEED.items():
        result = _load(results, name)
        if result is None:
            lines.append(f"| {name}: not measured | | | | | | | `{BENCH}.{name}` |")
            continue
        for x in rows_of(result):
            ratio = "" if x["ratio"] is None else f"{x['ratio']:.2f}"
            if ratio and x["target"] is not None and float(ratio) == x["target"]:
                ratio = f"{x['ratio']:.3f}"  # rounding would hide which side of the target
            target = "" if x["target"] is None else f"<= {x['target']:.2f}"
            command = x["command"] if x["command"] == "same" else f"`{x['command']}`"
            lines.append(
                f"| {x['what']} | {x['tumorfm']} | {x['peer']} | {ratio} | {target} | "
                f"{_met(x['ratio'], x['target'])} | {x['cpu']} | {command} |"
            )
    lines += [
        "",
        "Repeats: preprocessing and the training step are medians with their range; a training "
        "iteration is the mean over the last epoch (earlier ones warm up); a prediction is one run "
        "per row, made again when other processes disturbed it (benchmarks.predict "
        "--max-disturbance).",
    ]
    return lines


def other_lines(results: Path) -> list[str]:
    """Measurements without a peer in the same run: one bullet each."""
    lines = []
    if phantom := _load(results, "phantom"):
        shape = "x".join(map(str, phantom["shape"]))
        lines.append(
            f"- One {shape} phantom case: {phantom['worst_seconds'] * 1000:.0f} ms, worst of "
            f"{phantom['repeats']} per site (target < {phantom['target_seconds_per_case']:.0f} s); "
            f"`{PRODUCT}.phantom`."
        )
    if augment := _load(results, "augment"):
        ratios = ", ".join(
            f"{size}: {row['monai_over_batchgeneratorsv2_median']['all_transforms_on']}x"
            for size, row in augment["patches"].items()
        )
        lines.append(
            f"- Augmentation, every transform on, MONAI's time over batchgeneratorsv2's (the "
            f"library tumorfm uses), median of {augment['samples']}: {ratios}; "
            f"`{BENCH}.augment`."
        )
    if viewer := _load(results, "viewer"):
        shape = "x".join(map(str, viewer["shape"]))
        first, opened = viewer["first_picture_s"], viewer["open_s"]
        lines.append(
            f"- Viewer, a {shape} CT with its label map: {first['median']:.1f} s "
            f"({first['min']:.1f}-{first['max']:.1f}, {len(viewer['rows'])} runs) from "
            f"`tumorfm view` to the drawn page in headless Chromium (software WebGL: no GPU); "
            f"the exported page {viewer['page_mb']} MB ({viewer['page_note'] or 'full size'}), "
            f"drawn {opened['median']:.1f} s after opening; `{PRODUCT}.viewer`."
        )
    if (predict := _load(results, "predict")) and (fast := predict.get("fast_accuracy")):
        if "rows" in fast:
            parts = [
                f"{name} {row['dice']['mean']:.3f} +- {row['dice']['std']:.3f} "
                f"({row['wall_seconds']:.0f} s)"
                for name, row in fast["rows"].items()
            ]
            cases = next(iter(fast["rows"].values()))["cases"]
            lines.append(
                f"- What `predict --fast` costs: the shipped {fast['bundle']} on {cases} "
                f"{fast['scans']}, Dice mean +- standard deviation over the cases (wall time for "
                f"all): {'; '.join(parts)}; `{BENCH}.predict --fast-accuracy`."
            )
    return lines


def section(results: Path = RESULTS) -> str:
    lines = [START, "", "### Speed and memory, side by side", ""]
    lines += speed_table(results)
    lines += ["", "### The shipped model, on held-out real scans", ""]
    lines += shipped_table(results) + placement_lines(results) + position_lines(results)
    lines += ["", "### Accuracy (the paper's Table 1 protocol)", ""]
    lines += accuracy_table(results)
    lines += ["", "### Transfer (the paper's Table 2 protocol)", ""]
    lines += transfer_table(results)
    lines += ["", "### Tumour synthesis", ""]
    lines += synth_table(results)
    lines += ["", *usefulness_table(results)]
    lines += ["", *pretraining_table(results)]
    lines += ["", *transfer_synthesis_lines(results)]
    lines += ["", "### Interactive refinement: Dice per click", ""]
    lines += interactive_table(results)
    lines += ["", "### Distillation: a small, fast student", ""]
    lines += distill_table(results)
    if other := other_lines(results):
        lines += ["", "### Other measurements", "", *other]
    return "\n".join(lines + ["", END])


def render(readme: str, results: Path = RESULTS) -> str:
    """The README with its results section replaced (appended if it has none)."""
    if START in readme and END in readme:
        head, rest = readme.split(START, 1)
        tail = rest.split(END, 1)[1]
        return head + section(results) + tail
    return readme.rstrip("\n") + "\n\n" + section(results) + "\n"


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args()
    current = args.readme.read_text()
    wanted = render(current, args.results)
    if args.check:
        if current != wanted:
            sys.exit(f"{args.readme}: results section is stale; run `python -m benchmarks.report`")
        print(f"{args.readme}: results section matches {args.results}")
        return
    if current != wanted:
        args.readme.write_text(wanted)
    print(f"{args.readme}: results section written from {args.results}")


if __name__ == "__main__":
    main()
