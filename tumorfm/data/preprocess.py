"""`tumorfm preprocess`: fingerprint, plan, crop, normalise, resample and cache a pool's cases.

The steps and their order are nnU-Net's (crop to non-zero, normalise per channel by modality,
resample to the dataset's target spacing), so a cached case can be mapped back exactly: its
properties keep the original geometry, the crop box and the spacing at each step.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

import tumorfm
from tumorfm.data import plan as planning
from tumorfm.data.cache import (
    CACHE_FORMAT,
    PROPERTIES,
    load_case,
    remove_cases_not_in,
    remove_stale_temporaries,
    write_case,
)
from tumorfm.data.formats import Case, load_channels, load_label
from tumorfm.data.grid import to_plan_grid
from tumorfm.data.orient import Orientation
from tumorfm.data.pool import Pool, PoolDataset
from tumorfm.errors import TumorFMError
from tumorfm.files import ensure_writable, write_json
from tumorfm.parallel import run_parallel

LOCATION_SAMPLES = 10000  # voxels kept per class for foreground oversampling (nnU-Net's number)


def _source_stamp(case: Case) -> list:
    files = dict.fromkeys([c.path for c in case.channels] + [case.label])
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_case(case: Case) -> tuple[np.ndarray, np.ndarray, list[float], dict]:
    """The case's image and label map as axial stacks (tumorfm.data.orient), their spacing
    (z, y, x) and the stored geometry."""
    image, geometry = load_channels(case)
    label, label_geometry = load_label(case)
    if not geometry.close_to(label_geometry):
        raise TumorFMError(
            f"{case.label}: geometry differs from its image {case.channels[0].path}"
            f" (run `tumorfm check` on the dataset)"
        )
    orientation = Orientation.of(geometry)
    stored = {
        "size": list(geometry.size),
        "spacing": list(geometry.spacing),
        "origin": list(geometry.origin),
        "direction": list(geometry.direction),
        "orientation": orientation.stored,
    }
    return (
        orientation.to_axial(image),
        orientation.to_axial(label),
        orientation.spacing_zyx(geometry),
        stored,
    )


def _fingerprint_one(job) -> planning.CaseFingerprint:
    case, num_samples = job
    image, label, spacing_zyx, _ = _read_case(case)
    return planning.fingerprint_case(image, label, spacing_zyx, num_samples)


def fingerprint_and_plan(
    dataset: PoolDataset,
    folder: Path,
    workers: int,
    progress: bool,
    config: str = "fullres",
    lowres_patch=planning.LOWRES_PATCH,
) -> planning.Plan:
    """The dataset's fingerprint and plan; the fingerprint is reused while the sources are
    unchanged. `config` is nnU-Net's configuration: fullres, or lowres for a CPU patch."""
    cases = dataset.raw.labelled_cases
    num_classes = len(dataset.raw.labels)  # with background, as nnU-Net counts for its VRAM rule
    stamp = _digest([_source_stamp(c) for c in cases], dataset.modalities)
    fingerprint_file = folder / "fingerprint.json"
    stored = json.loads(fingerprint_file.read_text()) if fingerprint_file.is_file() else {}
    if stored.get("source_digest") == stamp:
        fingerprint = planning.DatasetFingerprint.from_dict(stored["fingerprint"])
    else:
        num_samples = planning.samples_per_case(len(cases))
        per_case = run_parallel(
            _fingerprint_one,
            [(c, num_samples) for c in cases],
            workers,
            f"fingerprint {dataset.name}",
            progress,
        )
        fingerprint = planning.aggregate_fingerprints(per_case)
        write_json(fingerprint_file, {"source_digest": stamp, "fingerprint": fingerprint.to_dict()})
    return planning.plan_dataset(
        fingerprint, dataset.modalities, num_classes, config=config, lowres_patch=lowres_patch
    )


def class_locations(label: np.ndarray, seed: int) -> dict[int, np.ndarray]:
    """Up to LOCATION_SAMPLES voxel indices per label (at least 1% of it), for oversampling."""
    rng = np.random.default_rng(seed)
    locations = {}
    for value in np.unique(label):
        if value <= 0:
            continue
        voxels = np.argwhere(label == value)
        count = min(len(voxels), max(LOCATION_SAMPLES, int(np.ceil(0.01 * len(voxels)))))
        locations[int(value)] = voxels[np.sort(rng.choice(len(voxels), count, replace=False))]
    return locations


def preprocess_case(case: Case, plan: planning.Plan, label_map: dict[int, int]) -> tuple:
    """One case through crop -> normalise -> resample; returns arrays and the properties."""
    image, label, spacing, geometry = _read_case(case)
    lookup = np.zeros(max(int(label.max()), max(label_map)) + 1, dtype=np.int16)
    for local, global_value in label_map.items():
        lookup[local] = global_value
    unknown = sorted(set(np.unique(label).tolist()) - set(label_map) - {0})
    if unknown or label.min() < 0:
        raise TumorFMError(
            f"{case.label}: label value(s) {unknown or [int(label.min())]} not in "
            f"the pool's label map {sorted(label_map)}"
        )
    label = lookup[label.astype(np.int64)]
    resampled, resampled_label, grid = to_plan_grid(image, spacing, plan, label)
    seed = int(hashlib.sha256(case.case_id.encode()).hexdigest()[:8], 16)
    properties = {
        "source_files": [str(c.path) for c in case.channels],
        "label_file": str(case.label),
        "channel_indices": [c.index for c in case.channels],
        "original_geometry": geometry,
        **grid.properties(),
    }
    return resampled, resampled_label, class_locations(resampled_label, seed), properties


def _preprocess_one(job) -> str:
    case, plan, label_map, folder, meta = job
    image, label, locations, properties = preprocess_case(case, plan, label_map)
    write_case(folder, case.case_id, image, label, locations, {**properties, **meta})
    return case.case_id


def preprocess_pool(
    pool: Pool,
    out: str | Path,
    workers: int = 1,
    progress: bool = True,
    config: str = "fullres",
    lowres_patch=planning.LOWRES_PATCH,
) -> dict:
    """Preprocess every dataset of `pool` into the cache folder `out`; returns a report.

    `config="lowres"` plans each dataset at a coarser spacing where `lowres_patch` holds most of
    its median case; a dataset whose full resolution already does keeps it, with a note. A pool
    entry's own `config` overrides `config` for that dataset."""
    if config not in planning.CONFIGS:
        raise TumorFMError(f"configuration '{config}': choose {' or '.join(planning.CONFIGS)}")
    out = ensure_writable(Path(out))
    started = time.perf_counter()
    configs = {dataset.entry.config or config for dataset in pool.datasets}
    report = {
        "tumorfm_version": tumorfm.__version__,
        "cache_format": CACHE_FORMAT,
        "pool_file": str(pool.path),
        "workers": workers,
        "config": config,
        "lowres_patch": list(lowres_patch) if "lowres" in configs else None,
        "datasets": {},
    }
    (out / "pool.json").unlink(missing_ok=True)  # written last: it marks a finished cache
    for dataset in pool.datasets:
        folder = ensure_writable(out / dataset.name)
        remove_stale_temporaries(folder)
        dataset_started = time.perf_counter()
        wanted = dataset.entry.config or config
        plan = fingerprint_and_plan(dataset, folder, workers, progress, wanted, lowres_patch)
        write_json(folder / "plan.json", plan.to_dict())
        label_map = pool.global_label(dataset)
        jobs, skipped = [], 0
        for case in dataset.raw.labelled_cases:
            digest = _digest(_source_stamp(case), plan.to_dict(), label_map, pool.classes)
            cached = load_case(folder / case.case_id)
            if cached is not None and cached.properties.get("digest") == digest:
                skipped += 1
                continue
            meta = {
                "dataset": dataset.name,
                "digest": digest,
                "modalities": dataset.modalities,
                "annotated_classes": dataset.annotated,
                "global_classes": pool.classes,
            }
            jobs.append((case, plan, label_map, folder, meta))
        run_parallel(_preprocess_one, jobs, workers, f"preprocess {dataset.name}", progress)
        listed = {case.case_id for case in dataset.raw.labelled_cases}
        report["datasets"][dataset.name] = {
            "cases": len(dataset.raw.labelled_cases),
            "written": len(jobs),
            "skipped": skipped,
            "removed": remove_cases_not_in(folder, listed),
            "seconds": round(time.perf_counter() - dataset_started, 2),
            "target_spacing": list(plan.target_spacing_zyx),
            "patch_size": list(plan.patch_size),
            "configuration": plan.configuration,
        }
        if wanted == "lowres" and plan.configuration == "3d_fullres":
            report["datasets"][dataset.name]["note"] = (
                f"lowres equals full resolution for {dataset.name}: a "
                f"{'x'.join(map(str, lowres_patch))} patch already holds "
                f"{planning.LOWRES_COVERAGE:.0%} of its median case; using 3d_fullres"
            )
    report["seconds"] = round(time.perf_counter() - started, 2)
    write_json(out / "preprocess_report.json", report)
    write_json(out / "pool.json", {**pool.summary(), "cache_format": CACHE_FORMAT})
    return report


__all__ = [
    "PROPERTIES",
    "class_locations",
    "preprocess_case",
    "preprocess_pool",
]
