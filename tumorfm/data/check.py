"""`tumorfm check`: every problem in a dataset, one line each (nnU-Net's integrity check, but it
reports all problems instead of stopping at the first)."""

from __future__ import annotations

import difflib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tumorfm.data.formats import Case, RawDataset, read_dataset
from tumorfm.data.io import Geometry, read_volume
from tumorfm.errors import TumorFMError

GEOMETRY_TOLERANCE = 1e-4


def _read(path: Path, problems: list[str]):
    try:
        return read_volume(path)
    except TumorFMError as error:
        problems.append(str(error))
        return None


def _check_channels(case: Case, num_channels: int, problems: list[str]) -> Geometry | None:
    """Read each channel file once (reading refuses NaN/Inf); return the geometry the label
    must match."""
    reference: Geometry | None = None
    for path in dict.fromkeys(channel.path for channel in case.channels):
        volume = _read(path, problems)
        if volume is None:
            continue
        array, geometry = volume.array, volume.geometry
        several = case.channels[0].index is not None
        if several and array.ndim != 4:
            problems.append(
                f"{path}: expected a 4D image with {num_channels} channels, got shape {array.shape}"
            )
            continue
        if several and array.shape[0] != num_channels:
            problems.append(
                f"{path}: holds {array.shape[0]} channels, dataset.json declares {num_channels}"
            )
        if not several and array.ndim != 3:
            problems.append(f"{path}: expected a 3D image, got shape {array.shape}")
            continue
        geometry = geometry.spatial()
        if reference is None:
            reference = geometry
        elif not reference.close_to(geometry, GEOMETRY_TOLERANCE):
            problems.append(
                f"{path}: geometry differs from the case's first channel "
                f"({geometry.difference_text(reference, GEOMETRY_TOLERANCE)})"
            )
    return reference


def check_case(case: Case, num_channels: int, labels: dict[int, str]) -> list[str]:
    """Problems of one case; reads each file once."""
    problems: list[str] = []
    reference = _check_channels(case, num_channels, problems)
    if case.label is None:
        return problems
    volume = _read(case.label, problems)
    if volume is None:
        return problems
    array = volume.array
    if array.ndim != 3:
        problems.append(f"{case.label}: expected a 3D label map, got shape {array.shape}")
        return problems
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        problems.append(f"{case.label}: label map holds non-integer values")
        return problems
    if not array.any():
        problems.append(f"{WARNING}{case.label}: label map is empty (no foreground at all)")
    undeclared = sorted(set(np.unique(array).astype(int).tolist()) - set(labels))
    if undeclared:
        problems.append(
            f"{case.label}: label value(s) {undeclared} not declared in dataset.json "
            f"(declared: {sorted(labels)})"
        )
    if reference is not None and not reference.close_to(volume.geometry, GEOMETRY_TOLERANCE):
        problems.append(
            f"{case.label}: geometry differs from its image "
            f"({volume.geometry.difference_text(reference, GEOMETRY_TOLERANCE)})"
        )
    return problems


def _check_one(args) -> list[str]:
    return check_case(*args)


def check_dataset(path: str | Path, workers: int = 1, progress: bool = False) -> list[str]:
    """Every problem found in the dataset at `path`, one line each; an empty list means clean.
    Lines starting with WARNING are worth a look but not wrong (an empty label map, a key
    dataset.json does not define)."""
    try:
        dataset: RawDataset = read_dataset(path, refuse=False)
    except TumorFMError as error:
        return [str(error)]
    problems = list(dataset.problems) + _dataset_json_warnings(Path(path) / "dataset.json", dataset)
    jobs = [
        (case, len(dataset.modalities), dataset.labels)
        for case in dataset.cases
        if case.channels or case.label
    ]
    bar = tqdm(
        total=len(jobs),
        desc=f"check {dataset.name}",
        unit="case",
        disable=None if progress else True,
    )
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, os.cpu_count() or 1)) as pool:
            for found in pool.map(_check_one, jobs):
                problems.extend(found)
                bar.update()
    else:
        for job in jobs:
            problems.extend(_check_one(job))
            bar.update()
    bar.close()
    return problems


WARNING = "warning: "
KNOWN_KEYS = {  # what nnU-Net v2 and the MSD define, and the descriptive keys both use
    "nnunet": {"channel_names", "labels", "numTraining", "file_ending", "regions_class_order",
               "overwrite_image_reader_writer", "dataset"},
    "msd": {"modality", "labels", "numTraining", "numTest", "training", "test"},
}  # fmt: skip
DESCRIPTIVE = {"name", "description", "reference", "licence", "license", "release",
               "tensorImageSize", "converted_by", "citation"}  # fmt: skip


def _dataset_json_warnings(json_path: Path, dataset: RawDataset) -> list[str]:
    """dataset.json keys its layout does not define (a typo like 'lables' passes silently), and
    a numTraining that is not the number of labelled cases (nnU-Net v2 relies on it)."""
    meta = json.loads(json_path.read_text())
    found = []
    declared, counted = meta.get("numTraining"), len(dataset.labelled_cases)
    if declared is not None and declared != counted and not dataset.problems:  # else said above
        found.append(f"{WARNING}{json_path}: numTraining is {declared!r}, the folder holds "
                     f"{counted} labelled case(s)")  # fmt: skip
    known = KNOWN_KEYS[dataset.layout] | DESCRIPTIVE
    for key in sorted(set(meta) - known):
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        found.append(f"{WARNING}{json_path}: unknown key '{key}'{hint}")
    return found
