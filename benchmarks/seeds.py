"""Rows measured over several seeds: their mean and spread, and differences that beat the spread.

On a 2-core CPU every model here is short of training, and one split and one initialisation move
a Dice by several points. So a benchmark repeats each row per seed (the seed picks the split and
the initialisation), reports the mean and the standard deviation over seeds (n - 1 in the
denominator: three seeds give a wide, honest spread), and calls a difference between two rows
real only when the mean of the paired per-seed differences exceeds their standard deviation.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path


def _finite(value) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


def over_seeds(values: dict[int, float | None]) -> dict:
    """{seed: value} -> mean, std (sample), n and the values; None where nothing is known."""
    known = [v for v in values.values() if _finite(v)]
    return {
        "mean": statistics.fmean(known) if known else None,
        "std": statistics.stdev(known) if len(known) > 1 else None,
        "n": len(known),
        "per_seed": dict(values),
    }


def merge(rows_per_seed: dict[int, list[dict]], key: tuple[str, ...], fields: list[str]) -> list:
    """One row per `key` (e.g. arm and budget) out of every seed's rows, each of `fields` as
    `over_seeds`; the key's order is the first seed's."""
    merged: dict[tuple, dict] = {}
    for seed, rows in rows_per_seed.items():
        for row in rows:
            k = tuple(row[name] for name in key)
            out = merged.setdefault(k, {name: row[name] for name in key} | {f: {} for f in fields})
            for f in fields:
                out[f][seed] = row.get(f)
    return [{**row, **{f: over_seeds(row[f]) for f in fields}} for row in merged.values()]


def beats_spread(result: dict) -> bool:
    """Whether an `over_seeds` difference is larger than its own spread over seeds."""
    mean, std = result["mean"], result["std"]
    return mean is not None and std is not None and abs(mean) > std


def paired_difference(rows_per_seed: dict[int, list[dict]], a: dict, b: dict, field: str) -> dict:
    """Row `a` minus row `b` (each selected by its key fields) seed by seed, on the same split;
    `beats_spread` when the mean difference is larger than its standard deviation."""

    def pick(rows: list[dict], where: dict):
        return next((r.get(field) for r in rows if all(r[k] == v for k, v in where.items())), None)

    differences = {}
    for seed, rows in rows_per_seed.items():
        x, y = pick(rows, a), pick(rows, b)
        differences[seed] = x - y if _finite(x) and _finite(y) else None
    result = over_seeds(differences)
    result["beats_spread"] = beats_spread(result)
    return result


def former_run(out: Path, args, same: tuple[str, ...], added_later=None, **fixed) -> dict | None:
    """The results file `out` when a former run wrote it with these settings (the attributes
    `same` of `args`; `added_later` gives the value a setting had in files written before it
    existed) and these top-level fields (`fixed`), else None. Every benchmark of several seeds
    keeps such a file's rows, because the run outlasts a session and its work folder may not."""
    if not out.is_file():
        return None
    old = json.loads(out.read_text())
    settings, added_later = old.get("settings", {}), added_later or {}
    if any(old.get(k) != v for k, v in fixed.items()) or any(
        settings.get(k, added_later.get(k)) != getattr(args, k) for k in same
    ):
        return None
    return old


def recorded(out: Path, args, same: tuple[str, ...], **fixed) -> dict[int, dict[str, dict]]:
    """{seed: {arm: row}} of a former run of these settings (`former_run`), else {}."""
    old = former_run(out, args, same, **fixed)
    if old is None:
        return {}
    return {int(seed): {row["arm"]: row for row in rows} for seed, rows in old["per_seed"].items()}
