"""The README's tables of Dice per click, from benchmarks/results/interactive.json (issue 19)."""

from __future__ import annotations

from pathlib import Path

from .report_format import PRODUCT, _command, _cpu, _load


def setting_key(row: dict) -> tuple[float, float, float]:
    """A tuning row's (margin, reach, box fade); rows from before the fade ran without it."""
    return row["margin"], row["reach_mm"], row.get("box_fade", 0.0)


def setting_name(margin: float, reach_mm: float, box_fade: float) -> str:
    return f"margin {margin:g}, reach {reach_mm:g} mm, box fade {box_fade:g}"


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
    return lines + tuning_lines(results)


def tuning_lines(results: Path, default: tuple[float, float] | None = None) -> list[str]:
    """How the local clicks' settings were chosen (benchmarks.interactive_tune), and whether
    today's defaults (`default`: tumorfm.interactive.local's margin, reach and box fade) are
    the best setting tried."""
    r = _load(results, "interactive_tune")
    if r is None:
        return [f"The local clicks' settings: not tuned yet (`{PRODUCT}.interactive_tune`)."]
    if default is None:
        from tumorfm.interactive import local

        default = (local.MARGIN, local.REACH_MM, local.BOX_FADE)
    rows = sorted(r["rows"], key=lambda row: -row["dice_after_5"]["mean"])

    def setting(row: dict) -> str:
        return setting_name(*setting_key(row))

    chosen = next((row for row in rows if setting_key(row) == tuple(default)), None)
    if chosen is None:
        verdict = f"today's default ({setting_name(*default)}) was not tried"
    else:
        best = "the best setting" if chosen is rows[0] else "not the best setting"
        score = chosen["dice_after_5"]["mean"]
        verdict = f"today's default, {setting(chosen)} ({score:.3f}), is {best}"
    minutes = r.get("minutes", 0) + r.get("minutes_before", 0)
    threshold = r.get("bundle_threshold", 0.5)
    base = f", around its decision threshold {threshold:g}" if threshold != 0.5 else ""
    return [
        f"The local clicks' settings were chosen on {len(r['cases'])} of the shipped "
        f"bundle's training sarcomas, never the held-out ones ({len(rows)} settings over "
        f"{minutes:.0f} min, both first prompts, Dice after 5 clicks{base}): best "
        f"{setting(rows[0])} ({rows[0]['dice_after_5']['mean']:.3f}), worst {setting(rows[-1])} "
        f"({rows[-1]['dice_after_5']['mean']:.3f}); {verdict}. {_cpu(r)}; `{_command(r)}`."
    ]


NAMES = {  # arm -> its name in the table
    "promptable": "promptable bundle",
    "local": "automatic bundle, clicks as local thresholds",
    "automatic": "automatic bundle alone",
    "classic": "SimpleITK ConfidenceConnected",
}


def _per_arm(r: dict, key: str) -> dict:
    """seconds_per_click or corrective_clicks by arm (a file from before the local arm: the
    promptable arm's alone)."""
    value = r.get(key) or {}
    return value if "promptable" in value or "local" in value else {"promptable": value}


def dataset_table(r: dict, scans: str, goal: dict, targeted: bool) -> list[str]:
    s = r["settings"]
    counts = sorted(int(k.rsplit("_", 1)[1]) for k in r["rows"][0] if k.startswith("dice_after_"))
    cases = len(next(iter(r["per_case"].values())))
    trained = r.get("promptable_settings") or s
    own = r.get("git_commit")
    present = {row["arm"].split(",")[0] for row in r["rows"]}
    calibrated = [t for t in r.get("bundle_thresholds", {}).values() if t != 0.5]
    cut = (
        f", cut at its calibrated threshold {calibrated[0]:g} away from clicks"
        if calibrated
        else ""
    )
    described = {
        "promptable": f"the promptable bundle (`finetune --promptable` from the shipped one, "
        f"{trained['epochs']} epochs of {trained['iterations']} iterations, seed "
        f"{trained['seed']}; one forward per click)",
        "local": "the shipped automatic bundle with each click a local threshold on its "
        f"probabilities (tumorfm.interactive.local: the network runs once per scan){cut}",
        "automatic": "the automatic bundle alone, which ignores prompts",
        "classic": "SimpleITK's ConfidenceConnected region growing from the clicks",
    }
    lines = [
        f"A simulated reader on {cases} held-out {scans}: a first click inside the "
        f"tumour or its jittered box, then corrective clicks, each at the centre of the largest "
        f"error. Segmenters: {'; '.join(v for k, v in described.items() if k in present)}. Dice "
        f"mean +- standard deviation over the cases; {_cpu(r)}; `{_command(r)}`.",
        "",
        "| segmenter, first prompt | "
        + " | ".join("first prompt" if n == 0 else f"+{n} clicks" for n in counts)
        + " |",
        "|---|" + "---:|" * len(counts),
    ]
    for row in r["rows"]:
        arm, first = row["arm"].split(", ", 1)
        cells = [row[f"dice_after_{n}"] for n in counts]
        commit = row.get("git_commit") or own
        earlier = f" (commit {commit[:7]})" if commit and own and commit != own else ""
        lines.append(
            f"| {NAMES.get(arm, arm)}, {first}{earlier} | "
            + " | ".join(f"{c['mean']:.3f} +- {c['std']:.3f}" for c in cells)
            + " |"
        )
    interactive = [row for row in r["rows"] if row["arm"].split(",")[0] in ("promptable", "local")]
    best = max(interactive, key=lambda row: row["dice_after_5"]["mean"])
    after5 = best["dice_after_5"]["mean"]
    reached = "met" if after5 >= goal["dice_after_5"] else "**missed**"
    target = f"; target >= {goal['dice_after_5']:g}: {reached}" if targeted else ""

    def first_of(row: dict) -> str:  # "local, first box" -> "first box"
        return row["arm"].split(", ", 1)[1]

    classic = {first_of(row): row for row in r["rows"] if row["arm"].startswith("classic,")}
    mine = [row for row in r["rows"] if row["arm"].startswith(best["arm"].split(",")[0] + ",")]
    ahead = None
    if classic:
        ahead = all(
            row[f"dice_after_{n}"]["mean"] > classic[first_of(row)][f"dice_after_{n}"]["mean"]
            for row in mine
            for n in counts
        )
    versus = "" if ahead is None else (
        f"; ahead of the classic baseline at every click count: {'met' if ahead else '**missed**'}"
    )  # fmt: skip
    first_arm, kind = best["arm"].split(", ", 1)
    lines += [
        "",
        f"After 5 corrective clicks: {after5:.3f} ({NAMES.get(first_arm, first_arm)}, {kind}"
        f"{target}{versus}).",
    ]
    timings, corrective = _per_arm(r, "seconds_per_click"), _per_arm(r, "corrective_clicks")
    for arm, timed in timings.items():
        following = timed["following"]["mean"]
        fast = "met" if following <= goal["seconds_per_click"] else "**missed**"
        prepare = timed.get("prepare")
        once = f" after {prepare['mean']:.1f} s to prepare the scan" if prepare else ""
        heeded = ""
        c = corrective.get(arm)
        if c and c.get("count"):
            heeded = (
                f"; of {c['count']} corrective clicks, {c['honoured']:.0%} left the mask "
                f"agreeing with the click at its voxel, {c['repeated']:.0%} went to a voxel "
                f"clicked before"
            )
        lines[-1] += (
            f" {NAMES.get(arm, arm).capitalize()}: {timed['first']['mean']:.2f} s for the first "
            f"click{once}, {following:.2f} s for each following one (target <= "
            f"{goal['seconds_per_click']:g}: {fast}){heeded}."
        )
    lines[-1] += f" Peak memory {r['peak_memory_mb']:,.0f} MB."
    return lines
