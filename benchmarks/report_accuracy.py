"""The accuracy side of the README's results section: the shipped model, the accuracy benchmark
(Table 1) and the transfer benchmark (Table 2), from their results files."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

from .report_format import (
    BENCH,
    PRODUCT,
    _command,
    _cpu,
    _dice_and_volume,
    _load,
    _mb,
    _num,
    _ratio,
    _s,
    _times,
    _transfer_machines,
)
from .report_shipped_trials import continued_trial, stage2_trial
from .seeds import paired_difference

MODELS = {  # accuracy.py --models: the name each row is reported by
    "tumorfm": "tumorfm",
    "nnunet": "nnU-Net v2",
    "swinunetr": "MONAI SwinUNETR",
}


def accuracy_table(results: Path) -> list[str]:
    r = _load(results, "accuracy")
    if r is None:
        return [f"Not measured yet: `{BENCH}.accuracy`."]
    if "seeds" in r["settings"]:
        return accuracy_seeds_table(r)
    s, pre = r["settings"], r.get("pretrain")
    lines = [
        f"Patch {'x'.join(map(str, s['patch']))}, batch {s['batch']}, the same iterations per "
        f"dataset for every model (budget x{s['budget']}), fixed splits, no mirroring; "
        f"{_cpu(r)}; `{_command(r)}`.",
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


def accuracy_seeds_table(r: dict) -> list[str]:
    """accuracy.json of several seeds: mean +- std over seeds per dataset and model."""
    s, pre = r["settings"], r.get("pretrain")
    sessions = r.get("sessions", [])
    by = "the runs named below" if len(sessions) > 1 else f"`{_command(r)}`"  # not the last alone
    lines = [
        f"{_plans(s)}; batch {s['batch']}, the "
        f"same iterations per dataset for every model (budget x{s['budget']}), one fixed split, "
        f"no mirroring; {_models_machines(r)}; {by}. Mean +- standard deviation over the seeds "
        f"(one training per seed).",
        "",
        "| dataset | model | parameters | iterations | seeds | Dice | HD95 mm | NSD | train "
        "| predict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        train, predict = row["train_seconds"]["mean"], row["predict_seconds"]["mean"]
        lines.append(
            f"| {row['dataset']} ({row['cases']} held out) | {row['model']} | "
            f"{row['parameters'] / 1e6:.2f}M | {row['iterations']} | {row['dice']['n']} | "
            f"{_over_seeds(row['dice'])} | {_over_seeds(row['hd95'], 1)} | "
            f"{_over_seeds(row['nsd'])} | {_s(train)} | {_s(predict)} |"
        )
    if not r.get("complete", True):
        lines += ["", "**Incomplete run**: the benchmark stopped before its last model."]
    if missing := _not_measured(r.get("rows_per_seed", [])):
        lines += ["", f"Not measured yet at these settings: {missing}."]
    lines += _against_peers(r.get("rows_per_seed", []))
    if len(sessions) > 1:  # seeds measured over several sessions
        runs = Counter(f"`{s['command']}` on {_cpu({'machine': s})}" for s in sessions)
        each = "; ".join(run + (f" ({n} times)" if n > 1 else "") for run, n in runs.items())
        lines += [
            "",
            f"Measured by {len(sessions)} runs, each keeping the rows of the former: {each}.",
        ]
    if pre:
        lines += [
            "",
            f"tumorfm's pretraining, paid once for both datasets: {pre['iterations']} "
            f"iterations, {_s(pre['seconds'])}, peak {_mb(pre['peak_mb'])}.",
        ]
    return lines


def _models_machines(r: dict) -> str:
    """The CPU of the table, or of each model's rows where they differ (a row names its own,
    benchmarks.measure.cpu): seeds measured over sessions may span machines."""
    models: dict[str, dict[str, None]] = {}
    for row in r.get("rows_per_seed", []):
        ran_on = _cpu({"machine": row["machine"]}) if "machine" in row else _cpu(r)
        models.setdefault(ran_on, {})[MODELS[row["arm"]]] = None
    if len(models) <= 1:
        return next(iter(models), _cpu(r))
    return "; ".join(f"{', '.join(names)} on {cpu}" for cpu, names in models.items())


def _not_measured(rows: list[dict]) -> str:
    """Which model, dataset and seed has no row yet, against every seed any row has."""
    seeds = sorted({row["seed"] for row in rows})
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    parts = []
    for arm, name in MODELS.items():
        have = {(row["dataset"], row["seed"]) for row in rows if row["arm"] == arm}
        if not have:
            parts += [name] if rows else []
            continue
        for dataset in datasets:
            lacking = [seed for seed in seeds if (dataset, seed) not in have]
            if lacking:
                listed = ", ".join(map(str, lacking))
                word = "seeds" if len(lacking) > 1 else "seed"
                which = "" if len(lacking) == len(seeds) else f" {word} {listed}"
                parts.append(f"{name} on {dataset}{which}")
    return "; ".join(parts)


def _against_peers(rows: list[dict]) -> list[str]:
    """tumorfm minus each peer, Dice paired by seed (the same split and seed): is the difference
    larger than its spread over seeds?"""
    per_seed: dict[int, list[dict]] = {}
    for row in rows:
        per_seed.setdefault(row["seed"], []).append(row)
    said = []
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        for arm, name in MODELS.items():
            ours, theirs = {"dataset": dataset, "arm": "tumorfm"}, {"dataset": dataset, "arm": arm}
            d = paired_difference(per_seed, ours, theirs, "dice")
            if arm == "tumorfm" or d["n"] == 0:
                continue
            larger = "larger" if d["beats_spread"] else "**not larger**"
            spread = "one seed: no spread yet" if d["n"] == 1 else f"{larger} than its spread"
            said.append(f"{dataset}, tumorfm - {name} {_over_seeds(d)} over {d['n']} "
                        f"seed(s) ({spread})")  # fmt: skip
    return ["", "Dice paired by seed: " + "; ".join(said) + "."] if said else []


def _plans(settings: dict) -> str:
    """Each dataset's plan and patch (the same for every model of it)."""
    plans = settings.get("plans") or {
        "": {"config": settings["config"], "patch": settings["patch"]}
    }
    each = [
        f"{name + ' at the ' if name else 'The '}{p['config']} plan with patch "
        f"{'x'.join(map(str, p['patch']))}"
        for name, p in plans.items()
    ]
    return ", ".join(each) if "" in plans else "Every model of " + ", ".join(each)


def _transfer_arm(row: dict, model: str, nnunet: dict | None) -> tuple:
    """A transfer row's label and iterations: the reference row (no budget) is nnU-Net's."""
    if row["iterations"] is None and nnunet:
        return "nnU-Net v2 (same splits)", nnunet["iterations"]
    names = {
        "pretrained": f"tumorfm {model}, pretrained",
        "scratch": f"tumorfm {model}, from scratch",
    }
    return names.get(row["arm"], row["arm"]), row["iterations"]


def _over_seeds(stats: dict | None, digits: int = 3) -> str:
    """mean +- std over seeds (n), from benchmarks/seeds.py's over_seeds."""
    if not stats or stats["mean"] is None:
        return "n/a"
    std = f" +- {stats['std']:.{digits}f}" if stats["std"] is not None else ""
    return f"{stats['mean']:.{digits}f}{std}"


def transfer_table(results: Path) -> list[str]:
    """transfer.json: every row as mean +- std over seeds, and the paired targets."""
    r = _load(results, "transfer")
    if r is None:
        return [f"Not measured yet: `{BENCH}.transfer`."]
    s, t = r["settings"], r["targets"]
    held = sorted({len(st["validation_cases"]) for st in r["studies"].values()})
    lines = [
        f"Sarcoma CT, {'/'.join(map(str, held))} held-out cases per split, {len(r['studies'])} "
        f"seed(s) (each its own split and initialisation), {s['config']} plan, patch "
        f"{'x'.join(map(str, s['patch']))}, {s['model']} pretrained for "
        f"{r['pretrain']['iterations']} iterations on a pool without the sarcoma set; "
        f"{_transfer_machines(r, tumorfm=True)}; "
        f"`{_command(r)}`. Mean +- standard deviation over seeds.",
        "",
        "| model | iterations | Dice | HD95 mm | NSD |",
        "|---|---:|---:|---:|---:|",
    ]
    nnunet = next(iter((r.get("nnunet") or {}).values()), None)
    for row in r["rows"]:
        arm, iterations = _transfer_arm(row, s["model"], nnunet)
        lines.append(
            f"| {arm} | {iterations} | {_over_seeds(row['mean_dice'])} | "
            f"{_over_seeds(row['sarcoma_hd95'], 1)} | {_over_seeds(row['sarcoma_nsd'])} |"
        )
    measured = sorted(int(k) for k in (r.get("nnunet") or {}))
    missing = [int(k) for k in r["studies"] if int(k) not in measured]
    if measured:
        lines += [
            "",
            f"nnU-Net v2 trained on seed(s) {', '.join(map(str, measured))}'s splits, "
            f"{nnunet['iterations']} iterations at tumorfm's lowres spacing, fp32; "
            f"{_transfer_machines(r, tumorfm=False)}.",
        ]
    if missing:
        lines += [
            "",
            f"nnU-Net v2 on the same splits ({s.get('factor', 10)}x the smallest budget's "
            f"iterations): "
            f"not measured yet for seed(s) {', '.join(map(str, sorted(missing)))} "
            f"(`{BENCH}.transfer --seeds 0 1 2` adds them and keeps the rows measured; hours a "
            f"seed on 2 CPUs).",
        ]
    lines += _network_costs(r)
    gap = t["pretrained_minus_scratch_at_smallest_budget"]
    lines += [
        "",
        f"Targets: pretrained - scratch at the smallest budget {_over_seeds(gap)} over seeds, "
        f"{'larger' if gap['beats_spread'] else '**not larger**'} than its spread (target +0.15 "
        f"and beyond the spread: {'met' if t['meets_gap_0.15'] else '**missed**'})",
    ]
    if "pretrained_at_10pct_minus_nnunet" in t:
        versus = t["pretrained_at_10pct_minus_nnunet"]
        lines[-1] += (
            f"; pretrained with <= 10% of nnU-Net's iterations minus nnU-Net {_over_seeds(versus)}"
            f"{' (one seed: no spread yet)' if versus['n'] == 1 else ''} "
            f"(target: at least nnU-Net: "
            f"{'met' if t['meets_nnunet_with_10pct'] else '**missed**'})."
        )
    else:
        lines[-1] += "."
    return lines


def _network_costs(r: dict) -> list[str]:
    """What an iteration costs each side: the targets count iterations, not compute."""
    costs = r.get("networks") or {}
    ours, theirs = costs.get("tumorfm"), costs.get("nnunet")
    if not ours or not theirs:
        return []
    s, model = r["settings"], r["settings"]["model"]
    ratio = theirs["forward_backward_gmacs"] / ours["forward_backward_gmacs"]
    return [
        "",
        f"Matched by parameters ({theirs['params'] / 1e6:.2f}M and {ours['params'] / 1e6:.2f}M), "
        f"the networks differ in compute: a training iteration (forward and backward, batch "
        f"{s['batch']}, {'x'.join(map(str, s['patch']))}) is {theirs['forward_backward_gmacs']:.0f}"
        f" GMAC for nnU-Net's PlainConvUNet and {ours['forward_backward_gmacs']:.0f} for "
        f"{model}, {ratio:.1f}x (their full-resolution stages are "
        f"{theirs['features_per_stage'][0]} and {ours['features_per_stage'][0]} features wide): "
        f"with a tenth of "
        f"nnU-Net's iterations {model} spends {10 / ratio:.1f}% of its multiply-adds.",
    ]


def shipped_table(results: Path) -> list[str]:
    """The shipped bundle's held-out scores (benchmarks.shipped_model writes them)."""
    r = _load(results, "shipped_model")
    if r is None:
        return [f"Not measured yet: `{PRODUCT}.shipped_model ship`."]
    t, stages = r["train"], r.get("earlier", []) + [r]
    iterations = sum(s["train"]["epochs"] * s["train"]["iterations"] for s in stages)
    minutes = sum(s["pretrain"]["wall_seconds"] for s in stages) / 60
    in_stages = f" in {len(stages)} stages" if len(stages) > 1 else ""
    mirrored = all(s.get("mirror", True) for s in r["scores"].values())
    how = "mirroring, overlap 0.5: its defaults" if mirrored else "without mirroring"
    if "scored_on" in r:  # `rescore`: today's predict on the shipped weights, maybe elsewhere
        how += f"; scored again by `rescore` on {_cpu({'machine': r['scored_on']})}"
    lines = [
        f"`models/{r['name']}`: {t['model']} ({r['parameters'] / 1e6:.1f}M parameters, "
        f"{r['megabytes']:.1f} MB in float16), pretrained {iterations:,} iterations of "
        f"{'x'.join(map(str, t['patch']))}{in_stages} on configs/pools/real.yaml's real scans "
        f"({minutes:.0f} min, {_cpu(r)}); held-out scans segmented "
        f"by `tumorfm predict` ({how}) and scored in their own geometry; mean +- standard "
        f"deviation over scans. `{PRODUCT}.shipped_model train` then `ship` (and `train --more "
        "EPOCHS`, `ship` for each further stage; `rescore` scores the shipped weights again).",
        "",
        "| plan | class | held-out scans | Dice | Dice min - max | HD95 mm (median) | NSD "
        "| volume predicted / reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for plan, s in r["scores"].items():
        lines.append(
            f"| {plan} | {s['class']} | {s['cases']} | {s['dice']['mean']:.3f} +- "
            f"{s['dice']['std']:.3f} | {s['dice']['min']:.3f} - {s['dice']['max']:.3f} | "
            f"{_num(s['hd95']['median'], 1)} | {s['nsd']['mean']:.3f} +- {s['nsd']['std']:.3f} | "
            f"{_ratio(s.get('volume_ratio'))} |"
        )
    lines += shipped_thresholds(r)
    trials = continued_trial(results, r) + stage2_trial(results, r)
    return lines + [""] + shipped_against_nnunet(results, r) + trials


def shipped_thresholds(shipped: dict) -> list[str]:
    """The decision thresholds `shipped_model calibrate` stored, and the held-out scores at 0.5."""
    calibration, before = shipped.get("calibration"), shipped.get("scores_at_0.5")
    if not calibration or not before:
        return []
    chosen = "; ".join(
        f"{plan} {c['threshold']:.2f} (on its {c['cases']} training scans, mean Dice "
        f"{c['mean_dice_at_0.5']:.3f} at 0.5 and {c['mean_dice']:.3f} at the threshold; median "
        f"volume {_times(c['median_volume_ratio_at_0.5'])} and "
        f"{_times(c['median_volume_ratio'])} the reference)"
        for plan, c in calibration.items()
    )
    return [
        "",
        f"Each class is cut at the threshold `tumorfm model calibrate` chose on the bundle's own "
        f"training scans (`{PRODUCT}.shipped_model calibrate --no-mirror`; the held-out scans had "
        f"no say): {chosen}. At 0.5 the held-out scans scored {_dice_and_volume(before)}.",
    ]


def shipped_against_nnunet(results: Path, shipped: dict) -> list[str]:
    """The issue's target: the bundle ahead of nnU-Net v2 given its split and its wall-clock."""
    r = _load(results, "shipped_nnunet")
    if r is None:
        return [
            "Against nnU-Net v2 trained on the same split for the same wall-clock time: not "
            f"measured yet (`{BENCH}.shipped_nnunet`)."
        ]
    if (
        r["tumorfm"]["bundle"] != shipped["name"]
        or r["bundle_pretrain_wall_seconds"] != shipped["pretrain"]["wall_seconds"]
    ):
        return ["The nnU-Net comparison belongs to an earlier training of the bundle: re-run it."]
    t, n = r["tumorfm"]["dice"], r["nnunet"]["dice"]
    at = " (at threshold 0.5)" if shipped.get("calibration") else ""
    ahead = r["dice_difference"] > 0
    per_case = list(r.get("per_case_difference", {}).values()) or [r["dice_difference"]] * 2
    ahead_on = sum(d > 0 for d in per_case)
    return [
        f"Against nnU-Net v2 trained on the bundle's sarcoma split for the bundle's training "
        f"time ({r['budget_seconds'] / 60:.0f} min: the pretraining's CPU seconds over the two "
        f"cores, as it shared the machine; {r['nnunet']['iterations']} iterations, matched "
        f"PlainConvUNet of {r['nnunet']['parameters'] / 1e6:.1f}M parameters, the bundle's "
        f"spacing and patch; {'with' if r['mirror'] else 'without'} mirroring): sarcoma Dice{at} "
        f"{t['mean']:.3f} +- {t['std']:.3f} vs {n['mean']:.3f} +- {n['std']:.3f}, a difference "
        f"of {r['dice_difference']:+.3f} (target: ahead, "
        f"{'met' if ahead else '**missed**'}). The bundle spent part of that time on the "
        "glioblastomas; nnU-Net spent all of it on the sarcomas.",
        "",
        f"Paired by scan, the bundle is ahead on {ahead_on} of {len(per_case)} held-out sarcomas "
        f"(difference {statistics.mean(per_case):+.3f} +- {statistics.stdev(per_case):.3f}). "
        f"nnU-Net trained on {_cpu(r)}; the bundle on {_cpu(shipped)}: the budget is the same "
        "CPU time, on two machines of this workplace. One seed each.",
    ] + calibrated_against_nnunet(r, shipped)


def calibrated_against_nnunet(r: dict, shipped: dict) -> list[str]:
    """The same comparison, scan by scan, with the bundle at its calibrated threshold."""
    calibration = (shipped.get("calibration") or {}).get("sarcoma_ct")
    mine = shipped["scores"]["sarcoma_ct"].get("per_case_dice", {})
    theirs = r["nnunet"].get("per_case_dice", {})
    cases = sorted(set(mine) & set(theirs))
    if not calibration or len(cases) < 2:
        return []
    differences = [mine[c] - theirs[c] for c in cases]
    return [
        "",
        f"At its calibrated threshold ({calibration['threshold']:.2f}) the bundle scores "
        f"{statistics.mean(mine[c] for c in cases):.3f} on the same {len(cases)} scans: "
        f"{statistics.mean(differences):+.3f} +- {statistics.stdev(differences):.3f} against "
        f"nnU-Net, ahead on {sum(d > 0 for d in differences)} of {len(cases)}.",
    ]
