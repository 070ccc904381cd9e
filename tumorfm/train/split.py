"""Which cached cases train and which validate: a fixed random hold-out, k folds, or a split file.

A split file is what nnU-Net users already have: its `splits_final.json` (a list of folds, each
{"train": [...], "val": [...]}, `fold` picks one), a single {"train": [...], "val": [...]}, or
tumorfm's own RUN/split.json ({dataset: {"train": [...], "val": [...]}}). Cases the file lists in
neither part are left out of the run altogether: a test set kept away from pretraining and
fine-tuning alike. Datasets of which the file lists no case keep the automatic hold-out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tumorfm.data.cache import cached_cases
from tumorfm.errors import TumorFMError
from tumorfm.files import read_json


def split_cases(
    cache: Path, pool: dict, val_fraction: float, seed: int, folds: int = 0, fold: int = 0
) -> dict:
    """Per dataset, a fixed random hold-out for validation (at least one case when n >= 2), or
    with `folds` > 1 the `fold`-th of that many disjoint hold-outs covering every case."""
    return _random_split(_case_ids(cache, pool), val_fraction, seed, folds, fold)


def _random_split(
    ids: dict[str, list[str]], val_fraction: float, seed: int, folds: int = 0, fold: int = 0
) -> dict:
    if folds > 1 and not 0 <= fold < folds:
        raise TumorFMError(f"fold {fold}: choose 0 to {folds - 1} for {folds} folds")
    split = {}
    for name, cases in ids.items():
        if folds > len(cases):
            raise TumorFMError(f"{name}: {len(cases)} case(s), fewer than {folds} folds")
        order = np.random.default_rng([seed, len(cases)]).permutation(cases).tolist()
        if folds > 1:
            val = order[fold::folds]
        else:
            n = len(cases)
            held = min(n - 1, max(1, round(val_fraction * n))) if n > 1 else 0
            val = order[:held]
        split[name] = {"val": sorted(val), "train": sorted(set(cases) - set(val))}
    return split


def _case_ids(cache: Path, pool: dict) -> dict[str, list[str]]:
    ids = {}
    for dataset in pool["datasets"]:
        ids[dataset["name"]] = sorted(c.case_id for c in cached_cases(cache, dataset["name"]))
        if not ids[dataset["name"]]:
            raise TumorFMError(f"{cache / dataset['name']}: no preprocessed cases")
    return ids


def _parts(path: Path, fold: int) -> dict[str | None, dict[str, set[str]]]:
    """The file as {dataset name or None (any dataset): {"train": ids, "val": ids}}."""
    data = read_json(path)
    if isinstance(data, list):  # nnU-Net's splits_final.json
        if not 0 <= fold < len(data):
            raise TumorFMError(f"{path}: fold {fold} asked, the file has {len(data)} fold(s)")
        data = data[fold]
    if isinstance(data, dict) and data and set(data) <= {"train", "val"}:
        data = {None: data}
    if not isinstance(data, dict) or not data or not all(map(_is_part, data.values())):
        raise TumorFMError(
            f"{path}: expected nnU-Net's splits_final.json, {{'train': [...], 'val': [...]}} or "
            f"tumorfm's split.json ({{dataset: {{'train': [...], 'val': [...]}}}})"
        )
    return {
        name: {key: set(map(str, part.get(key, []))) for key in ("train", "val")}
        for name, part in data.items()
    }


def _is_part(part) -> bool:
    return (
        isinstance(part, dict)
        and set(part) <= {"train", "val"}
        and all(isinstance(cases, list) for cases in part.values())
    )


def read_split(
    path: str | Path, cache: Path, pool: dict, fold: int, val_fraction: float, seed: int
) -> dict:
    """The run's split from a split file; see the module docstring."""
    path = Path(path)
    parts, ids = _parts(path, fold), _case_ids(cache, pool)
    unknown_datasets = sorted(name for name in parts if name is not None and name not in ids)
    if unknown_datasets:
        raise TumorFMError(
            f"{path}: dataset '{unknown_datasets[0]}' is not in the pool ({', '.join(ids)})"
        )
    listed = {case for part in parts.values() for key in ("train", "val") for case in part[key]}
    everywhere = {case for cases in ids.values() for case in cases}
    unknown = sorted(listed - everywhere)
    if unknown:
        raise TumorFMError(f"{path}: case '{unknown[0]}' is not in the cache {cache}")
    automatic = _random_split(ids, val_fraction, seed)  # for datasets the file leaves out
    split = {}
    for name, cases in ids.items():
        part = parts.get(name) or parts.get(None)
        mine = set(cases) & (part["train"] | part["val"]) if part else set()
        if not mine:
            split[name] = automatic[name]
            continue
        both = sorted(part["train"] & part["val"] & mine)
        if both:
            raise TumorFMError(f"{path}: case '{both[0]}' is in both train and val")
        train = sorted(set(cases) & part["train"])
        if not train:
            raise TumorFMError(f"{path}: no training case of dataset '{name}'")
        split[name] = {"val": sorted(set(cases) & part["val"]), "train": train}
    return split
