"""How long one synthetic phantom case takes to generate (target: a 96^3 case well under 1 s).

.venv/bin/python -m benchmarks.phantom
"""

from __future__ import annotations

import json
import os
import statistics
import time

from tumorfm.data.phantom import DEFAULT_SITES, make_case

from .common import RESULTS
from .measure import machine


def main(repeats: int = 10, shape: tuple[int, int, int] = (96, 96, 96)) -> None:
    load_before = os.getloadavg()
    seconds = {}
    for site in DEFAULT_SITES:
        runs = []
        for seed in range(repeats):
            started = time.perf_counter()
            make_case(site, shape, seed)
            runs.append(time.perf_counter() - started)
        seconds[site.name] = runs
        print(
            f"{site.name:<22} median {statistics.median(runs) * 1000:6.0f} ms, "
            f"max {max(runs) * 1000:6.0f} ms  ({repeats} cases of {shape})"
        )
    result = {
        "benchmark": "phantom",
        "shape": shape,
        "repeats": repeats,
        "machine": machine(load_before),
        "seconds": seconds,
        "target_seconds_per_case": 1.0,
        "worst_seconds": max(max(v) for v in seconds.values()),
    }
    out = RESULTS / "phantom.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"worst case {result['worst_seconds']:.2f} s (target < 1 s); written to {out}")


if __name__ == "__main__":
    main()
