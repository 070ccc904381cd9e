"""Which cases and rows the accuracy benchmark measures: its fixed split, the held-out scans, and
the rows a former run of the same settings recorded (three seeds outlast a session)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from . import seeds
from .measure import CPU_KEYS


def fixed_split(name: str, ids: list[str]) -> dict:
    """Seed 0; brain scans are grouped by patient (btp_NN_pre / _post) so none straddles."""
    groups: dict[str, list[str]] = {}
    for case in ids:
        key = re.sub(r"_(pre|post)$", "", case) if name == "brain_mr" else case
        groups.setdefault(key, []).append(case)
    order = np.random.default_rng(0).permutation(sorted(groups)).tolist()
    held = max(1, round(0.2 * len(order)))
    val = sorted(c for g in order[:held] for c in groups[g])
    return {"train": sorted(set(ids) - set(val)), "val": val}


def held_out_folders(folder: Path, split: dict, out: Path) -> tuple[Path, Path]:
    """images/<case>_0000.nii.gz and labels/<case>.nii.gz of the held-out cases, as symlinks."""
    images, labels = out / "images", out / "labels"
    for sub in (images, labels):
        shutil.rmtree(sub, ignore_errors=True)
        sub.mkdir(parents=True)
    for case in split["val"]:
        source = folder / "imagesTr" / f"{case}_0000.nii.gz"
        source = source if source.exists() else folder / "imagesTr" / f"{case}.nii.gz"
        (images / f"{case}_0000.nii.gz").symlink_to(source.resolve())
        (labels / f"{case}.nii.gz").symlink_to((folder / "labelsTr" / f"{case}.nii.gz").resolve())
    return images, labels


SAME_RUN = ("budget", "iterations", "pretrain_iterations", "per_epoch", "model", "swin_features",
            "patch", "config", "batch", "full", "device")  # fmt: skip


def recorded(out: Path, args) -> dict:
    """What a former run of these settings wrote to `out` (its rows per seed, its pretraining and
    sessions), else {}: three seeds outlast a session."""
    old = seeds.former_run(out, args, SAME_RUN)
    if old is None:
        return {}
    # rows from before each named its machine ran on the file's, the machine of that one run
    ran_on = {k: v for k, v in old.get("machine", {}).items() if k in CPU_KEYS}
    rows = [{"machine": ran_on, **r} for r in old.get("rows_per_seed", []) if "arm" in r]
    return {"rows_per_seed": rows, "pretrain": old.get("pretrain"),
            "sessions": old.get("sessions", [])}  # fmt: skip


def same(row: dict, name: str, model: str, seed: int) -> bool:
    """Whether `row` measured `model` on dataset `name` with `seed`."""
    return (row["dataset"], row["arm"], row["seed"]) == (name, model, seed)


def to_measure(args, rows: list[dict], seed: int, name: str) -> list[str]:
    """The models of (dataset, seed) no former run recorded."""
    return [m for m in args.models if not any(same(r, name, m, seed) for r in rows)]
