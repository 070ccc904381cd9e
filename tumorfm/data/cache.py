"""The preprocessed cache: one folder per case, written atomically, read with memory mapping.

    CACHE/<dataset>/<case>/image.npy            (C, Z, Y, X) float32, normalised, resampled
    CACHE/<dataset>/<case>/label.npy            (Z, Y, X) int16 global labels (0 = background)
    CACHE/<dataset>/<case>/class_locations.npz  sampled voxels per global label (oversampling)
    CACHE/<dataset>/<case>/properties.json      geometry, crop box, spacing, annotated classes ...

properties.json is written last inside a temporary folder that is then renamed, so a case folder
either is complete or does not exist; `digest` ties it to the source files and the plan that made
it, so a rerun redoes what is stale or broken and skips the rest.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumorfm.errors import TumorFMError
from tumorfm.files import atomic_folder, write_json

PROPERTIES = "properties.json"
CACHE_FORMAT = 1  # bump when the layout or the meaning of cached arrays changes


@dataclass
class CachedCase:
    folder: Path
    properties: dict

    @property
    def case_id(self) -> str:
        return self.properties["case_id"]

    def image(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.folder / "image.npy", mmap_mode="r" if mmap else None)

    def label(self, mmap: bool = True) -> np.ndarray:
        return np.load(self.folder / "label.npy", mmap_mode="r" if mmap else None)

    def class_locations(self) -> dict[int, np.ndarray]:
        with np.load(self.folder / "class_locations.npz") as data:
            return {int(key): data[key] for key in data.files}


def write_case(
    dataset_folder: Path,
    case_id: str,
    image: np.ndarray,
    label: np.ndarray,
    class_locations: dict[int, np.ndarray],
    properties: dict,
) -> CachedCase:
    """Write one case into a temporary folder, then rename it into place."""
    final = dataset_folder / case_id
    with atomic_folder(final) as tmp:
        np.save(tmp / "image.npy", image.astype(np.float32, copy=False))
        np.save(tmp / "label.npy", label.astype(np.int16, copy=False))
        np.savez(tmp / "class_locations.npz", **{str(k): v for k, v in class_locations.items()})
        write_json(
            tmp / PROPERTIES,
            {
                **properties,
                "case_id": case_id,
                "image_shape": list(image.shape),
                "label_shape": list(label.shape),
            },
        )
    return CachedCase(final, json.loads((final / PROPERTIES).read_text()))


def load_case(folder: Path) -> CachedCase | None:
    """The cached case in `folder`, or None when it is missing or incomplete."""
    try:
        properties = json.loads((folder / PROPERTIES).read_text())
        case = CachedCase(folder, properties)
        if list(case.image().shape) != properties["image_shape"]:
            return None
        if list(case.label().shape) != properties["label_shape"]:
            return None
        with np.load(folder / "class_locations.npz") as data:
            data.files  # noqa: B018  (opens the zip directory: a truncated file fails here)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return case


def cached_cases(cache: Path, dataset: str) -> list[CachedCase]:
    """All complete cases of one dataset in the cache, by case id."""
    folder = cache / dataset
    cases = (
        [
            load_case(p)
            for p in sorted(folder.iterdir())
            if p.is_dir() and not p.name.startswith(".")
        ]
        if folder.is_dir()
        else []
    )
    return [case for case in cases if case is not None]


def read_pool(cache: Path) -> dict:
    """The pool summary `tumorfm preprocess` wrote beside the cases; refuses another format."""
    path = cache / "pool.json"
    if not path.is_file():
        raise TumorFMError(
            f"{cache}: no pool.json: not a tumorfm cache, or its preprocess did not finish; "
            "run tumorfm preprocess (it keeps the cases already done)"
        )
    pool = json.loads(path.read_text())
    if pool.get("cache_format") != CACHE_FORMAT:
        raise TumorFMError(
            f"{cache}: made by another tumorfm version (cache format "
            f"{pool.get('cache_format')}, this one reads {CACHE_FORMAT}); run "
            f"tumorfm preprocess again"
        )
    return pool


def split_part(cache: Path, pool: dict, split: dict, part: str) -> tuple[list[CachedCase], list]:
    """The cases of one part ("train" or "val") of a split, with their sampling weights."""
    cases, weights = [], []
    for dataset in pool["datasets"]:
        keep = set(split[dataset["name"]][part])
        for case in cached_cases(cache, dataset["name"]):
            if case.case_id in keep:
                cases.append(case)
                weights.append(dataset["case_probability"])
    return cases, weights


def remove_cases_not_in(dataset_folder: Path, case_ids: set[str]) -> int:
    """Drop cached cases the pool no longer lists (the cache is derived data), so training on a
    cache re-made from a smaller pool never sees them; returns how many went. Only folders
    holding a case's properties: anything else in the folder is not tumorfm's to delete."""
    stale = [
        path
        for path in dataset_folder.iterdir()
        if path.is_dir()
        and not path.name.startswith(".")
        and path.name not in case_ids
        and (path / PROPERTIES).is_file()
    ]
    for path in stale:
        shutil.rmtree(path)
    return len(stale)


def remove_stale_temporaries(dataset_folder: Path) -> None:
    """Leftovers of a killed run: temporary case folders that were never renamed."""
    for path in dataset_folder.glob(".*.*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
