"""Run every benchmark, one at a time, then regenerate the README's results section.

    make bench                                   # builds .venv and .venv-bench first
    .venv-bench/bin/python -m benchmarks         # every benchmark
    .venv-bench/bin/python -m benchmarks --only transfer accuracy --budget 0.5

Each runs as `python -m benchmarks.NAME` from the repository root; its minutes go to
results/runs.json. On 2 cores of an Intel Xeon with AVX-512 bf16 the speed benchmarks took 34 min,
transfer 23, accuracy 41 at --budget 0.5 (its default budget 1 trains twice as long);
pretrain_real_mini's two pretrainings took 70 on an AMD EPYC without bf16.

Benchmarks run strictly in sequence: on a small machine two PyTorch processes at once slow each
other several-fold (their OpenMP threads fight for the cores), which would corrupt every timing.
Each writes benchmarks/results/<name>.json; a failed one is reported and the others still run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from . import report
from .common import RESULTS, ROOT, parser_for

# name -> arguments beyond the script's defaults (none: the defaults are what the README shows)
BENCHMARKS = {
    "phantom": [],
    "preprocess": [],
    "augment": [],
    "model": [],
    "train": [],
    "predict": [],
    "transfer": [],
    "accuracy": [],
    "pretrain_real_mini": [],
    "synth": [],
    "synth_useful": [],
    "viewer": [],
    "distill": [],
}


def main() -> None:
    parser = parser_for(__spec__.name, __doc__)
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run just these")
    parser.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[])
    parser.add_argument("--budget", type=float, help="accuracy: scales every training budget")
    parser.add_argument("--data", type=Path, help="../shared/data elsewhere (real-data runs)")
    args = parser.parse_args()
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    outcomes = {}
    for name in names:
        module = f"benchmarks.{name}"
        command = [sys.executable, "-m", module, *BENCHMARKS[name]]
        if name == "accuracy" and args.budget is not None:
            command += ["--budget", str(args.budget)]
        if name in ("transfer", "accuracy", "synth", "synth_useful") and args.data is not None:
            command += ["--data", str(args.data)]
        print(f"\n=== {name}: {' '.join(command)}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(command, cwd=ROOT)
        outcomes[name] = {
            "command": " ".join([".venv-bench/bin/python", "-m", module, *command[3:]]),
            "exit_code": code,
            "minutes": round((time.perf_counter() - started) / 60, 1),
        }
        print(
            f"=== {name}: {'ok' if code == 0 else f'FAILED (exit {code})'}, "
            f"{outcomes[name]['minutes']} min",
            flush=True,
        )
    runs = RESULTS / "runs.json"
    former = json.loads(runs.read_text()) if runs.is_file() else {}
    runs.write_text(json.dumps({**former, **outcomes}, indent=1) + "\n")
    report.README.write_text(report.render(report.README.read_text()))
    print(f"\nREADME results section regenerated from {report.RESULTS}")
    failed = [n for n, o in outcomes.items() if o["exit_code"] != 0]
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
