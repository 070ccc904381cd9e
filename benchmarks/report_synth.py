"""The tumour-synthesis part of the README's results section (issue 15), from synth.json: how well
a classifier tells synthetic tumours from real sarcomas, and what one tumour costs."""

from __future__ import annotations

import re
from pathlib import Path

from . import seeds
from .report_accuracy import _over_seeds
from .report_format import (
    BENCH,
    PRODUCT,
    _command,
    _cpu,
    _load,
    _machines,
    _num,
    _s,
    _transfer_machines,
)

ARMS = {
    "procedural": "procedural, Hu et al.'s liver-tumour intensities",
    "measured": "procedural, shift and texture measured on real sarcomas (other half)",
    "looks": "procedural, one real sarcoma's measured look each (shift, texture, HU quantiles; "
    "other half)",
    "diffusion": "latent diffusion",
    "naive": "naive baseline (constant-HU blob)",
}


def synth_table(results: Path) -> list[str]:
    r = _load(results, "synth")
    return [f"Not measured yet: `{BENCH}.synth`."] if r is None else synth_lines(r)


def synth_lines(r: dict) -> list[str]:
    """The tables of one synth.json (benchmarks.synth prints them too)."""
    s, realism = r["settings"], r["realism"]
    low, high = s["soft_tissue_hu"]
    sizes = ", ".join(f"{n} {size}" for size, n in r["sizes"].items() if n) or "none"
    skipped = len(r["skipped"])
    why = f" ({skipped} skipped: soft tissue too thin for a small tumour)" if skipped else ""
    smooth = s.get("organ_hu_smoothing_mm") or 0
    smooth = f", on HU smoothed by a {smooth:g} mm Gaussian" if smooth else ""
    lines = [
        f"Realism: {s['cases'] - skipped} of {s['cases']} sarcoma CTs{why}, each real sarcoma "
        f"(median {r['real_volume_ml']['median']:.0f} ml) against one synthetic tumour in the "
        f"same scan's soft tissue ({low:g} to {high:g} HU{smooth}, outside the sarcoma), of "
        f"the largest size class it holds ({sizes}). {len(s['features'])} first-order and GLCM "
        f"features of the HU inside each tumour, not its volume; AUC of a logistic regression "
        f"telling real from synthetic, cross-validated by scan (0.5: indistinguishable); mean "
        f"absolute standardised mean difference and mean Wasserstein distance (in real-tumour "
        f"standard deviations) over the features. Mean +- standard deviation over "
        f"{len(s['seeds'])} seed(s); {_cpu(r)}; `{_command(r)}`.",
        "",
        "| tumours | AUC real vs synthetic | mean abs SMD | mean Wasserstein | median volume ml |",
        "|---|---:|---:|---:|---:|",
    ]
    for arm, name in ARMS.items():
        m = realism.get(arm)
        if m is None and arm in ("measured", "looks"):
            continue  # a synth.json from before the arm
        if m is None:
            lines.append(f"| {name} | not measured (`{PRODUCT}.synth_diffusion`, then "
                         "`--diffusion-model HALF0 HALF1`) | | | |")  # fmt: skip
            continue
        if arm == "diffusion" and s.get("diffusion_cross_fitted"):
            name += ", trained on the other half's tumours"
        volumes = [p.get("volume_ml_median") for p in m["per_seed"].values()]
        volumes = [v for v in volumes if v is not None]
        volume = _num(sum(volumes) / len(volumes), 0) if volumes else "n/a"
        lines.append(
            f"| {name} | {_over_seeds(m['auc'])} | {_over_seeds(m['mean_abs_smd'], 2)} | "
            f"{_over_seeds(m['mean_wasserstein'], 2)} | {volume} |"
        )
    lines += ["", _target(r), ""] + _speed(r)
    return lines


def _target(r: dict) -> str:
    """Issue 15's target, per engine, from the mean AUC over seeds."""
    goal, parts = r["settings"]["target_auc_below"], []
    for arm in ("procedural", "measured", "looks", "diffusion"):
        if arm in ("measured", "looks") and arm not in r["realism"]:
            continue
        auc = (r["realism"].get(arm) or {}).get("auc", {}).get("mean")
        if arm not in r["realism"]:
            parts.append(f"{ARMS[arm]} not measured")
        elif auc is None:
            parts.append(f"{ARMS[arm]} n/a (too few scans)")
        else:
            seeds = [v for v in r["realism"][arm]["auc"].get("per_seed", {}).values() if v]
            below = sum(v < goal for v in seeds)
            verdict = "met" if auc < goal else "**missed**"
            if len(seeds) > 1 and 0 < below < len(seeds):
                verdict += f" on the mean; {below} of {len(seeds)} seeds below"
            parts.append(f"{ARMS[arm]} {auc:.3f} ({verdict})")
    return f"Target: AUC below {goal:g}: {'; '.join(parts)}."


def _sec(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 10 else _s(seconds)


def _speed(r: dict) -> list[str]:
    sp, threads = r["speed"], r["settings"].get("torch_threads")
    threads = f", diffusion on {threads} torch threads" if "diffusion" in sp else ""
    lines = [
        f"Speed on {sp['case']}, seconds per tumour (the whole call, placement in the scan's "
        f"soft tissue included; procedural on one thread{threads}), median (min-max) of "
        f"{sp['repeats']}; numpy's peak memory (tracemalloc) in one call, torch's not counted:",
        "",
        "| engine | size | DDIM steps | seconds per tumour | CPU seconds | numpy peak |",
        "|---|---|---:|---:|---:|---:|",
    ]
    names = {"procedural": "procedural", "diffusion": ARMS["diffusion"]}
    for engine, name in names.items():
        if engine not in sp:
            lines.append(f"| {name} | | | not measured (`--diffusion-model BUNDLE`) | | |")
            continue
        for size, t in sp[engine].items():
            steps = t.get("steps", "-")
            if not t["fits"]:
                lines.append(f"| {name} | {size} | {steps} | does not fit that scan | | |")
                continue
            times = t["seconds"]
            spread = f"{_sec(t['median_seconds'])} ({min(times):.2f}-{max(times):.2f})"
            cpu = _sec(t["median_cpu_seconds"]) if "median_cpu_seconds" in t else "n/a"
            lines.append(
                f"| {name} | {size} | {steps} | {spread} | {cpu} | {t['numpy_peak_mb']:.0f} MB |"
            )
    after = [f"{sp['rss_mb_after_procedural']:,.0f} MB after procedural"]
    if "rss_mb_after_diffusion" in sp:
        after.append(f"{sp['rss_mb_after_diffusion']:,.0f} MB after diffusion")
    lines += [
        "",
        f"Peak RSS of the benchmark process (a high-water mark): {sp['rss_mb_before']:,.0f} MB "
        f"before the speed runs, {', '.join(after)}.",
    ]
    return lines


def usefulness_table(results: Path) -> list[str]:
    """Issue 15's usefulness runs: few real sarcomas with and without online synthetic tumours
    (synth_useful.json), and label-free phantom livers (synth_labelfree.json)."""
    lines = []
    r = _load(results, "synth_useful")
    if r is None:
        lines.append(
            f"Real sarcomas with synthetic tumours: not measured yet: `{PRODUCT}.synth_useful`."
        )
    else:
        lines += _few_labels(r)
    lines.append("")
    r = _load(results, "synth_labelfree")
    if r is None:
        lines.append(f"Label-free: not measured yet: `{PRODUCT}.synth_labelfree`.")
        return lines
    s = r["settings"]
    lines += [
        f"Label-free (Hu et al.'s claim, on phantoms): {s['model']} from scratch, "
        f"{s['iterations']} iterations, on PhantomLiver's real tumour labels or on as many healthy "
        f"PhantomMultiOrgan livers with procedural tumours only (the engine's defaults); scored on "
        f"{s['held_out']} held-out PhantomLiver scans per seed, seeds "
        f"{', '.join(map(str, s['seeds']))}; {_cpu(r)}; "
        f"`{_command(r)}`.",
        "",
        "| training data | liver-tumour Dice | lesions found | lesion precision | liver Dice |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        found = [_over_seeds(row[k], 2) for k in ("lesion_sensitivity", "lesion_precision")]
        lines.append(
            f"| {row['arm']} | {_over_seeds(row['dice'])} | {' | '.join(found)} "
            f"| {_over_seeds(row['liver_dice'])} |"
        )
    lines += ["", f"Synthetic minus real: {_over_seeds(r['synthetic_minus_real'])} Dice."]
    return lines


def pretraining_table(results: Path) -> list[str]:
    """Issue 15 (c): the real-mini pool pretrained as written and with online synthetic tumours
    (pretrain_real_mini.json): the last validation pseudo-Dice of every class either arm learns,
    and of the synthesised tumour class whatever it is."""
    r = _load(results, "pretrain_real_mini")
    if r is None:
        return [
            f"Pretraining with synthetic tumours: not measured: `{PRODUCT}.pretrain_real_mini`."
        ]
    s, arms = r["settings"], r["arms"]
    ((dataset, spec),) = s["synthesis"].items()
    last = {arm: a["curve"][-1] for arm, a in arms.items()}
    first = next(iter(last.values()))  # the arms share steps, datasets and classes
    step = first["step"]
    keys = [(d, c) for d, per in first["val_dice"].items() for c in per]
    shown = [
        (d, c)
        for d, c in keys
        if c == spec["tumour"] or any(point["val_dice"][d][c] for point in last.values())
    ]
    lines = [
        f"Pretraining with synthetic tumours: {s['model']} on the real-mini pool, {step} "
        f"iterations of {'x'.join(map(str, s['patch']))}, seed {s['seed']}, as written and with "
        f"procedural tumours labelled {spec['tumour']} (the engine's defaults) in "
        f"{spec['probability']:g} of {dataset}'s samples, whose {spec['organ']}s have none; "
        f"validation pseudo-Dice at the last step on real validation patches (every class "
        f"above 0 in either arm, and {spec['tumour']}); one seed, no spread; {_cpu(r)}; "
        f"`{_command(r)}`.",
        "",
        "| dataset | class | " + " | ".join(arms) + " |",
        "|---|---|" + "---:|" * len(arms),
    ]
    for d, c in shown:
        values = " | ".join(_num(point["val_dice"][d][c], 2) for point in last.values())
        lines.append(f"| {d} | {c} | {values} |")
    minutes = " | ".join(f"{a['minutes']} min" for a in arms.values())
    return lines + [f"| pretraining time | | {minutes} |"]


MAIN = ("real", "real+synthetic")  # synth_useful's two arms; other arms vary the probability


def _few_labels(r: dict) -> list[str]:
    """synth_useful.json: the table over the seeds whose two arms both ran (a run spans
    sessions), what a seed measured so far, apart, and a line per other synthetic arm."""
    s = r["settings"]
    arms = {seed: {row["arm"]: row for row in rows} for seed, rows in r["per_seed"].items()}
    complete = {seed: [by[a] for a in MAIN] for seed, by in arms.items() if set(MAIN) <= set(by)}
    partial = {seed: [by[a] for a in MAIN if a in by] for seed, by in arms.items()}
    partial = {seed: rows for seed, rows in partial.items() if rows and seed not in complete}
    patch, names = "x".join(map(str, s["patch"])), ", ".join(complete)
    plain = re.sub(r" --(probability|seeds)( [^-]\S*)+", "", _command(r))

    def command(seeds: list[str], probability: float | None = None) -> str:
        """The run's own command for these seeds: the file keeps only its latest run's."""
        other = f" --probability {probability:g}" if probability is not None else ""
        return f"{plain} --seeds {' '.join(seeds)}{other}"

    main_rows = {seed: [by[a] for a in MAIN if a in by] for seed, by in arms.items()}
    machines = _machines(r | {"per_seed": main_rows})  # another arm's seeds may have run elsewhere
    over = (
        f"mean +- standard deviation over seeds {names}"
        if len(complete) > 1
        else f"one seed ({names}) so far, no spread yet"
    )
    lines = [
        f"Few labels: {s['model']} from scratch on {s['train_cases']} real sarcoma CTs drawn "
        f"per seed, {s['iterations']} iterations (lowres plan, patch {patch}), with and "
        f"without procedural tumours (shift and texture measured on the same "
        f"{s['train_cases']} scans) in half the patches' soft tissue; Dice on the 7 held-out "
        f"sarcomas, {over}; {machines}; `{command(list(complete))}`.",
        "",
        "| training data | Dice on held-out sarcomas | median HD95 mm | epochs' wall time |",
        "|---|---:|---:|---:|",
    ]
    fields = ["dice", "hd95_median", "train_seconds"]
    for row in seeds.merge(complete, ("arm",), fields):
        hd95, seconds = _over_seeds(row["hd95_median"], 1), _s(row["train_seconds"]["mean"])
        lines.append(f"| {row['arm']} | {_over_seeds(row['dice'])} | {hd95} | {seconds} |")
    gain = seeds.paired_difference(complete, {"arm": MAIN[1]}, {"arm": "real"}, "dice")
    lines += ["", f"Gain {_over_seeds(gain)} Dice ({_verdict(gain, r['target'])})."]
    for seed, rows in partial.items():
        done = "; ".join(f"{row['arm']} {row['dice']:.3f}" for row in rows)
        lines += ["", f"Seed {seed} so far: {done}; its other arm is still to run."]
    if missing := [str(seed) for seed in s["seeds"] if str(seed) not in r["per_seed"]]:
        lines += ["", f"**Incomplete run**: seeds {', '.join(missing)} asked, not run yet."]
    others = sorted({a for by in arms.values() for a in by} - set(MAIN))
    for arm in others:  # the same runs with another probability of synthesis
        both = {"real", arm}
        paired = {seed: [by["real"], by[arm]] for seed, by in arms.items() if both <= set(by)}
        if not paired:
            continue
        probability = paired[next(iter(paired))][1]["synthesis"]["probability"]
        (row,) = [m for m in seeds.merge(paired, ("arm",), ["dice"]) if m["arm"] == arm]
        gain = seeds.paired_difference(paired, {"arm": arm}, {"arm": "real"}, "dice")
        control = _control(paired)
        per_seed = ", ".join(f"{d:+.3f}" for d in gain["per_seed"].values() if d is not None)
        moved = [s for s, pair in paired.items() if len({_cpu(x) for x in pair}) > 1]
        also = f" and, for seed {', '.join(moved)}, in the machine" if moved else " only"
        verdict = (
            f"seed by seed {per_seed}; a control, no target: the runs differ from the real ones in "
            f"those few patches{also}, so this is what a training moves when almost nothing changes"
            if control
            else _verdict(gain, r["target"])
        )
        lines += [
            "",
            f"Synthetic tumours in {probability:g} of the patches instead (seeds "
            f"{', '.join(paired)}{_changed(paired)}; {_machines(r | {'per_seed': paired})}; "
            f"`{command(list(paired), probability)}`): Dice "
            f"{_over_seeds(row['dice'])}, minus real {_over_seeds(gain)} ({verdict}).",
        ]
    return lines


def _drawn(paired: dict) -> tuple[list[int], int] | None:
    """Each seed's patches drawn for synthesis and the run's patches (rows record them since
    synth_useful counts them)."""
    counts = [rows[1].get("synthetic_patches") for rows in paired.values()]
    if None in counts:
        return None
    return [c["drawn"] for c in counts], counts[0]["of"]


def _changed(paired: dict) -> str:
    if (drawn := _drawn(paired)) is None:
        return ""
    counts, total = drawn
    return f"; synthetic tumours in {_and([str(c) for c in counts])} of each seed's {total} patches"


def _and(items: list[str]) -> str:
    return " and ".join(items) if len(items) < 3 else f"{', '.join(items[:-1])} and {items[-1]}"


def _control(paired: dict) -> bool:
    """Below 1% of the patches changed: the arm measures the run-to-run noise, not synthesis."""
    return (drawn := _drawn(paired)) is not None and max(drawn[0]) < 0.01 * drawn[1]


def _verdict(gain: dict, goal: float) -> str:
    """Met or missed against the target, and whether the gain beats its spread over seeds."""
    verdict = "met" if gain["mean"] is not None and gain["mean"] >= goal else "**missed**"
    spread = "larger" if gain["beats_spread"] else "not larger"
    spread = f"{spread} than its spread over seeds" if gain["n"] > 1 else "one seed"
    return f"target +{goal:g}: {verdict}; {spread}"


def transfer_synthesis_lines(results: Path) -> list[str]:
    """Issue 15 (c), second half: the transfer study's pretrained-minus-scratch gap when the
    pretraining had online synthetic tumours (transfer_synthesis.json) and when it had none
    (transfer.json), both at the synthesis run's smallest budget, seed by seed."""
    r, plain = _load(results, "transfer_synthesis"), _load(results, "transfer")
    command = f"{BENCH}.transfer --synthesis --budgets 2 --skip-nnunet"
    if r is None or plain is None:
        return [
            f"Transfer after pretraining with synthetic tumours: not measured yet: `{command}`."
        ]
    budget = min(r["settings"]["budgets"])

    def gap(result: dict) -> dict:
        pretrained, scratch = ({"arm": arm, "epochs": budget} for arm in ("pretrained", "scratch"))
        return seeds.paired_difference(result["rows_per_seed"], pretrained, scratch, "mean_dice")

    def scratch(result: dict) -> dict:
        rows = {seed: [row for row in rows if row["arm"] == "scratch" and row["epochs"] == budget]
                for seed, rows in result["rows_per_seed"].items()}  # fmt: skip
        return seeds.over_seeds({seed: rows[0]["mean_dice"] for seed, rows in rows.items() if rows})

    def learnt(result: dict):  # the synthesised class, on PhantomLiver's real validation patches
        return result["pretrain"]["val_dice"].get("phantom_liver", {}).get("liver_tumour")

    iterations, with_synthesis, without = budget * r["settings"]["iterations"], gap(r), gap(plain)
    change = {seed: with_synthesis["per_seed"][seed] - without["per_seed"][seed]
              for seed in with_synthesis["per_seed"] if seed in without["per_seed"]}  # fmt: skip
    change = seeds.over_seeds(change)
    larger = "larger" if seeds.beats_spread(change) else "not larger"
    return [
        f"Transfer after pretraining with synthetic tumours: the transfer study above, its "
        f"pretraining with procedural liver tumours in half of phantom_multi_organ's samples: "
        f"pretrained - scratch at {iterations} iterations {_over_seeds(with_synthesis)} Dice "
        f"(seeds {', '.join(map(str, with_synthesis['per_seed']))}; {_cpu(r)}; `{_command(r)}`), "
        f"without synthesis {_over_seeds(without)} ({_transfer_machines(plain, tumorfm=True)}). "
        f"The scratch arm, the same recipe on the same splits in both runs, scored "
        f"{_over_seeds(scratch(r))} and {_over_seeds(scratch(plain))}: what the machine and "
        f"the run alone move. The pretraining's validation pseudo-Dice of liver_tumour on "
        f"PhantomLiver: with synthesis {_num(learnt(r), 2)}, without {_num(learnt(plain), 2)}. "
        f"Seed by seed, synthesis changed the gap by {_over_seeds(change)} ({larger} than "
        f"its spread over seeds {', '.join(map(str, change['per_seed']))}).",
    ]
