"""What the benchmark scripts share besides measuring (measure.py): where things live, the options
and checks they repeat, and the command line a results file records.

Every benchmark is a module of this package, run from the repository root:
`.venv-bench/bin/python -m benchmarks.NAME` (the peers' environment), or `.venv/bin/python -m
benchmarks.NAME` for those that need only the product environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"  # the real scans beside the repository
WORK = ROOT / "benchmarks" / "work"  # what the benchmarks write on the way (not in git)
RESULTS = ROOT / "benchmarks" / "results"  # what the README's results section is written from
BIN = Path(sys.executable).parent  # this environment's commands: nnUNetv2_*, tumorfm
PRODUCT_TUMORFM = ROOT / ".venv" / "bin" / "tumorfm"


def logged_epochs(run: Path) -> list[dict]:
    """The rows a tumorfm training wrote to run/log.jsonl, one per epoch."""
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line]


def case_ids(folder: Path) -> list[str]:
    """The labelled cases of an nnU-Net raw dataset."""
    return sorted(p.name.removesuffix(".nii.gz") for p in (folder / "labelsTr").glob("*.nii.gz"))


def sha256(path: Path) -> str:
    """Which weights a row comes from (a later session may train or ship them again)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def command_line(name: str, environment: str = ".venv-bench") -> str:
    """This run's command as typed at the repository root: `ENV/bin/python -m benchmarks.NAME`
    and its arguments."""
    return " ".join([f"{environment}/bin/python", "-m", f"benchmarks.{name}", *sys.argv[1:]])


def parser_for(module: str, doc: str) -> argparse.ArgumentParser:
    """A benchmark's parser (`module`: its __spec__.name): its usage as it runs, `python -m
    benchmarks.NAME`, and its docstring's first line."""
    prog = f"python -m {module.removesuffix('.__main__')}"
    return argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])


def add_work_and_out(parser, name: str, work: str | None = None) -> None:
    """--work (benchmarks/work/WORK, by default WORK = NAME) and --out (results/NAME.json)."""
    parser.add_argument("--work", type=Path, default=WORK / (work or name))
    parser.add_argument("--out", type=Path, default=RESULTS / f"{name}.json")


def add_timeout(parser, default: float, per: str = "command") -> None:
    parser.add_argument("--timeout", type=float, default=default, help=f"seconds, per {per}")


def add_tumorfm(parser) -> None:
    """--tumorfm: the product environment's command (the peers' environment runs the peers)."""
    parser.add_argument("--tumorfm", type=Path, default=PRODUCT_TUMORFM)


def require_tumorfm(tumorfm: Path) -> None:
    if not tumorfm.exists():
        sys.exit(f"{tumorfm}: no tumorfm in the product environment; run `make test` first")


def require_nnunet(*tools: str) -> None:
    """Exit unless this environment has nnU-Net v2's commands (.venv-bench has them)."""
    for tool in tools or ("nnUNetv2_train",):
        if not (BIN / tool).exists():
            sys.exit(
                "nnU-Net v2 is not in this environment: run `make bench-env` and use "
                ".venv-bench/bin/python"
            )


def pretrain_or_resume(fresh: list[str], out: Path) -> list[str]:
    """The command of a benchmark's `tumorfm pretrain ... -o OUT` run: `fresh` (OUT cleared
    first), or `--resume OUT` where a former run stopped midway (a session's end): the epochs it
    finished are kept and the rest continue exactly, so a long pretraining spans sessions."""
    from tumorfm.checkpoint import has_state

    if has_state(out):
        print(f"{out}: resuming the run a former session left")
        return [fresh[0], "pretrain", "--resume", str(out)]
    shutil.rmtree(out, ignore_errors=True)
    return fresh
