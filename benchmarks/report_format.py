"""What every table of the README's results section shares: where results live, how a machine,
a time, a size and a number are written."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START = "<!-- results: written by `python -m benchmarks.report` from benchmarks/results -->"
END = "<!-- /results -->"
BENCH = ".venv-bench/bin/python -m benchmarks"  # + ".NAME": a benchmark, peers' environment
PRODUCT = ".venv/bin/python -m benchmarks"  # + ".NAME": one the product environment runs


def _load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _command(result: dict) -> str:
    """The command a results file records, as a module of this package (`-m benchmarks.NAME`),
    also where an older file recorded the script (`benchmarks/NAME.py`)."""
    return re.sub(r"\bbenchmarks/(\w+)\.py\b", r"-m benchmarks.\1", result["command"])


def _cpu(result: dict) -> str:
    """A short machine name: the CPU model and whether bf16 ran natively, or what is known."""
    machine = result.get("machine", {})
    cpu = machine.get("cpu")
    if not cpu or cpu == "x86_64":
        return "not recorded"
    bf16, amx = machine.get("avx512_bf16"), machine.get("amx_bf16")
    if bf16 is None:
        return cpu
    return cpu + (", AVX-512 bf16" + (" + AMX" if amx else "") if bf16 else ", no bf16")


def _s(seconds: float) -> str:
    return f"{seconds:,.1f} s" if seconds < 600 else f"{seconds / 60:,.1f} min"


def _mb(mb: float | None) -> str:
    return "n/a" if mb is None else f"{mb:,.0f} MB"


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _ratio(summary: dict | None) -> str:
    """A ratio over cases (scoring.stats): its median and range, "-" where not recorded."""
    if summary is None:
        return "-"
    return f"{summary['median']:.2f}x ({summary['min']:.2f} - {summary['max']:.2f})"


def _times(ratio: float | None) -> str:
    """One ratio (a median volume ratio, say), "-" where not recorded."""
    return "-" if ratio is None else f"{ratio:.2f}x"


def _dice_and_volume(scores: dict) -> str:
    """Per plan its Dice over scans and its volume ratio (shipped_model's scores)."""
    return "; ".join(
        f"{plan} Dice {s['dice']['mean']:.3f} +- {s['dice']['std']:.3f}, volume "
        f"{_ratio(s.get('volume_ratio'))}"
        for plan, s in scores.items()
    )


def _machines(result: dict) -> str:
    """The CPU of a table whose seeds ran in several sessions: the rows' own where they all
    agree, the file's where none says, else each seed's (`machine` in its rows,
    benchmarks.measure.cpu; a seed whose arms ran on two CPUs names both)."""
    per_seed = {
        seed: {_cpu({"machine": row["machine"]}) if "machine" in row else "not recorded"
               for row in rows}
        for seed, rows in result.get("per_seed", {}).items()
    }  # fmt: skip
    named = set().union(*per_seed.values()) if per_seed else set()
    if not named or named == {"not recorded"}:
        return _cpu(result)
    if len(named) == 1:
        return next(iter(named))
    return "; ".join(
        f"seed {seed} on {' and '.join(sorted(cpus))}" for seed, cpus in per_seed.items()
    )


def _transfer_machines(r: dict, tumorfm: bool) -> str:
    """The CPUs of a transfer results file's tumorfm arms, or of its nnU-Net rows: each row names
    its own (a run that only rewrote the summary elsewhere does not relabel them)."""
    rows = r.get("rows_per_seed", {}).items()
    chosen = {seed: [x for x in rs if (x["arm"] != "nnunet") == tumorfm] for seed, rs in rows}
    return _machines(r | {"per_seed": {seed: rs for seed, rs in chosen.items() if rs}})
