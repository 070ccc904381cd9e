"""Segment held-out scans with a bundle and score them: how most benchmarks end.

Both steps are the product's own commands (`tumorfm predict`, `tumorfm evaluate`), each run as a
measured process (measure.run), so a benchmark scores exactly what a user would get.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from .common import BIN
from .measure import run

TUMORFM = [str(BIN / "tumorfm")]


def stats(values: list[float]) -> dict:
    """Mean, std, median, min and max over cases, NaN (JSON null) left out."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return {
        name: float(f(finite)) if finite else math.nan
        for name, f in (
            ("mean", np.mean),
            ("std", np.std),
            ("median", np.median),
            ("min", np.min),
            ("max", np.max),
        )  # fmt: skip
    }


def predicted(bundle: Path, images: Path, out: Path, log: Path, flags=(), **how) -> dict:
    """`tumorfm predict` of `images` with `bundle` into `out` (emptied first): the measured
    process and the seconds predict.json records per stage, summed over the scans. `how`:
    `tumorfm` (the command, a list), `env`, `timeout`, `what`, `pss_interval`."""
    shutil.rmtree(out, ignore_errors=True)
    command = [*how.get("tumorfm", TUMORFM), "predict", "-i", str(images), "-o", str(out)]
    command += ["-m", str(bundle), *flags]
    process = run(
        command, how.get("env", dict(os.environ)), log, how.get("timeout", 3600),
        how.get("what", f"predict ({out.name})"), how.get("pss_interval", 5.0),
    )  # fmt: skip
    cases = json.loads((out / "predict.json").read_text())["cases"].values()
    stages: dict[str, float] = {}
    for case in cases:
        for stage, seconds in case["seconds"].items():
            stages[stage] = round(stages.get(stage, 0.0) + seconds, 3)
    return {**process, "scans": len(cases), "stage_seconds": stages}


def evaluated(predictions: Path, labels: Path, log: Path, **how) -> dict:
    """`tumorfm evaluate` of `predictions` against `labels`: its metrics.json. `how`: `tumorfm`,
    `env`, `timeout`, `what`."""
    command = [*how.get("tumorfm", TUMORFM), "evaluate", str(predictions), str(labels)]
    what = how.get("what", f"evaluate ({predictions.name})")
    run(command, how.get("env", dict(os.environ)), log, how.get("timeout", 3600), what)
    return json.loads((predictions / "evaluation" / "metrics.json").read_text())


def case_scores(metrics: dict, name: str | None = None) -> dict[str, dict]:
    """{case: scores} of class `name` (by default the only class scored)."""
    if name is None:
        (name,) = metrics["aggregates"]
    return {row["case"]: row["scores"][name] for row in metrics["cases"]}
