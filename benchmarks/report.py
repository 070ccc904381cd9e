"""The README's results section, generated from benchmarks/results/*.json, never typed by hand.

    python -m benchmarks.report            # rewrite the section between the README's markers
    python -m benchmarks.report --check    # exit 1 if the README differs from the results files

Every figure is read from a results file a benchmark wrote; a benchmark that has not run yet shows
as "not measured" with the command that measures it. Ratios are tumorfm / peer (time and memory:
lower is better for tumorfm), each beside its target.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START = "<!-- results: written by `python -m benchmarks.report` from benchmarks/results -->"
END = "<!-- /results -->"
BENCH = ".venv-bench/bin/python benchmarks"


def _load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _cpu(result: dict) -> str:
    """A short machine name: the CPU model and whether bf16 ran natively, or what is known."""
    machine = result.get("machine", {})
    cpu = machine.get("cpu")
    if not cpu or cpu == "x86_64":
        return "not recorded"
    bf16 = machine.get("avx512_bf16")
    return cpu + ("" if bf16 is None else (", AVX-512 bf16" if bf16 else ", no bf16"))


def _s(seconds: float) -> str:
    return f"{seconds:,.1f} s" if seconds < 600 else f"{seconds / 60:,.1f} min"


def _mb(mb: float | None) -> str:
    return "n/a" if mb is None else f"{mb:,.0f} MB"


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
    return [_row(what, ours, theirs, t / n, speedup, _cpu(r), f"{BENCH}/preprocess.py")]


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
            f"{BENCH}/model.py",
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
                f"{BENCH}/train.py" if not rows else "same",
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
        what += f"tumorfm {t['precision']}"
        if "windows_per_call" in t:  # older files: 4 windows per network call throughout
            what += f", {t['windows_per_call']} window{'s' * (t['windows_per_call'] > 1)} per call"
        command = f"{BENCH}/predict.py" if not rows else "same"
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
            lines.append(f"| {name}: not measured | | | | | | | `{BENCH}/{name}.py` |")
            continue
        for x in rows_of(result):
            ratio = "" if x["ratio"] is None else f"{x['ratio']:.2f}"
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
        "per row, made again when other processes disturbed it (predict.py --max-disturbance).",
    ]
    return lines


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def accuracy_table(results: Path) -> list[str]:
    r = _load(results, "accuracy")
    if r is None:
        return [f"Not measured yet: `{BENCH}/accuracy.py`."]
    s, pre = r["settings"], r.get("pretrain")
    lines = [
        f"Patch {'x'.join(map(str, s['patch']))}, batch {s['batch']}, the same iterations per "
        f"dataset for every model (budget x{s['budget']}), fixed splits, no mirroring; "
        f"{_cpu(r)}; `{r['command']}`.",
        "",
        "| dataset | model | parameters | iterations | Dice | HD95 mm (median) | NSD | train "
        "| train peak | predict | predict peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        train, predict = row["train"], row["predict"]
        lines.append(
            f"| {row['dataset']} ({row['cases']} held out) | {row['model']} | "
            f"{row['parameters'] / 1e6:.2f}M | {row['iterations']} | {_num(row['dice'])} | "
            f"{_num(row['hd95'], 1)} | {_num(row['nsd'])} | {_s(train['seconds'])} | "
            f"{_mb(train['peak_mb'])} | {_s(predict['seconds'])} | {_mb(predict['peak_mb'])} |"
        )
    if not r.get("complete", True):
        lines += ["", "**Incomplete run**: the benchmark stopped before its last model."]
    if pre:
        lines += [
            "",
            f"tumorfm's pretraining, paid once for both datasets: {pre['iterations']} "
            f"iterations, {_s(pre['seconds'])}, peak {_mb(pre['peak_mb'])}.",
        ]
    return lines


def _transfer_command(r: dict) -> str:
    """The command that wrote the file (older files: rebuilt from their settings)."""
    if "command" in r:
        return r["command"]
    s = r["settings"]
    return (
        f"{BENCH}/transfer.py --model {s['model']} --patch {' '.join(map(str, s['patch']))} "
        f"--iterations {s['iterations']} --budgets {' '.join(map(str, s['budgets']))} "
        f"--factor {s['factor']} --pretrain-epochs {s['pretrain_epochs']}"
    )


def transfer_table(results: Path) -> list[str]:
    r = _load(results, "transfer")
    if r is None:
        return [f"Not measured yet: `{BENCH}/transfer.py`."]
    s, t = r["settings"], r["targets"]
    held_out = len(r["study"]["validation_cases"])
    lines = [
        f"Sarcoma CT, {held_out} held-out cases, patch {'x'.join(map(str, s['patch']))}, "
        f"{s['model']} pretrained for {r['pretrain']['iterations']} iterations on a pool without "
        f"the sarcoma set; {_cpu(r)}; `{_transfer_command(r)}`.",
        "",
        "| model | iterations | Dice | HD95 mm (median) | NSD |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        arm = {
            "pretrained": f"tumorfm {s['model']}, pretrained",
            "scratch": f"tumorfm {s['model']}, from scratch",
        }.get(row["arm"], row["arm"])
        iterations = row["iterations"]
        if iterations is None and r.get("nnunet"):
            iterations, arm = r["nnunet"]["iterations"], "nnU-Net v2 (same split)"
        lines.append(
            f"| {arm} | {iterations} | {_num(row['mean_dice'])} | "
            f"{_num(row.get('sarcoma_hd95'), 1)} | {_num(row.get('sarcoma_nsd'))} |"
        )
    gap = t["pretrained_minus_scratch_at_smallest_budget"]
    lines += [
        "",
        f"Targets: pretrained - scratch at the smallest budget {gap:+.3f} (target "
        f"+0.15: {'met' if t['meets_gap_0.15'] else '**missed**'})",
    ]
    if "nnunet_dice" in t:
        best = t["pretrained_dice_with_at_most_10pct_of_nnunet_iterations"]
        lines[-1] += (
            f"; pretrained with <= 10% of nnU-Net's iterations {_num(best)} vs nnU-Net "
            f"{_num(t['nnunet_dice'])} (target: at least nnU-Net: "
            f"{'met' if t['meets_nnunet_with_10pct'] else '**missed**'})."
        )
    else:
        lines[-1] += "."
    return lines


def other_lines(results: Path) -> list[str]:
    """Measurements without a peer in the same run: one bullet each."""
    lines = []
    if phantom := _load(results, "phantom"):
        shape = "x".join(map(str, phantom["shape"]))
        lines.append(
            f"- One {shape} phantom case: {phantom['worst_seconds'] * 1000:.0f} ms, worst of "
            f"{phantom['repeats']} per site (target < {phantom['target_seconds_per_case']:.0f} s); "
            f"`.venv/bin/python benchmarks/phantom.py`."
        )
    if augment := _load(results, "augment"):
        ratios = ", ".join(
            f"{size}: {row['monai_over_batchgeneratorsv2_median']['all_transforms_on']}x"
            for size, row in augment["patches"].items()
        )
        lines.append(
            f"- Augmentation, every transform on, MONAI's time over batchgeneratorsv2's (the "
            f"library tumorfm uses), median of {augment['samples']}: {ratios}; "
            f"`{BENCH}/augment.py`."
        )
    if mini := _load(results, "pretrain_real_mini"):
        s, last = mini["settings"], mini["curve"][-1]
        found = [
            f"{c} ({dataset}) {d:.2f}"
            for dataset, part in last["val_dice"].items()
            for c, d in part.items()
            if d
        ]
        lines.append(
            f"- Pretraining {s['model']} on the real-mini pool, {last['step']} iterations of "
            f"{'x'.join(map(str, s['patch']))} ({mini['minutes']} min): validation pseudo-Dice "
            f"{', '.join(found)}; every other class 0. `.venv-bench/bin/python "
            f"benchmarks/pretrain_real_mini.py`."
        )
    return lines


def shipped_table(results: Path) -> list[str]:
    """The shipped bundle's held-out scores (benchmarks/shipped_model.py writes them)."""
    r = _load(results, "shipped_model")
    if r is None:
        return ["Not measured yet: `.venv/bin/python benchmarks/shipped_model.py ship`."]
    t = r["train"]
    mirrored = all(s.get("mirror", True) for s in r["scores"].values())
    how = "mirroring, overlap 0.5: its defaults" if mirrored else "without mirroring"
    lines = [
        f"`models/{r['name']}`: {t['model']} ({r['parameters'] / 1e6:.1f}M parameters, "
        f"{r['megabytes']:.1f} MB in float16), pretrained {t['epochs'] * t['iterations']} "
        f"iterations of {'x'.join(map(str, t['patch']))} on the real scans at the lowres plan "
        f"({r['pretrain']['wall_seconds'] / 60:.0f} min, {_cpu(r)}); held-out scans segmented "
        f"by `tumorfm predict` ({how}) and scored in their own geometry; mean +- standard "
        f"deviation over scans. `.venv/bin/python benchmarks/shipped_model.py train` then `ship`.",
        "",
        "| plan | class | held-out scans | Dice | Dice min - max | HD95 mm (median) | NSD |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for plan, s in r["scores"].items():
        lines.append(
            f"| {plan} | {s['class']} | {s['cases']} | {s['dice']['mean']:.3f} +- "
            f"{s['dice']['std']:.3f} | {s['dice']['min']:.3f} - {s['dice']['max']:.3f} | "
            f"{_num(s['hd95']['median'], 1)} | {s['nsd']['mean']:.3f} +- {s['nsd']['std']:.3f} |"
        )
    return lines


def section(results: Path = RESULTS) -> str:
    lines = [START, "", "### Speed and memory, side by side", ""]
    lines += speed_table(results)
    lines += ["", "### The shipped model, on held-out real scans", ""]
    lines += shipped_table(results)
    lines += ["", "### Accuracy (the paper's Table 1 protocol)", ""]
    lines += accuracy_table(results)
    lines += ["", "### Transfer (the paper's Table 2 protocol)", ""]
    lines += transfer_table(results)
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
