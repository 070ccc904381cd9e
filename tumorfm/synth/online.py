"""Synthetic tumours inside training patches, as the loader samples them (a pool's `synthesis`).

The cache holds normalised scans, so a CT patch goes back to HU for the engine (which sets the
tumour's intensity in HU below the organ's median) and is normalised again with the plan's
clipping; an MR patch is z-scored per case, and the engine's MR shift is relative to the organ's
own percentiles, so it works on it directly. Each call is a pure function of its seed, so resumed
and distributed runs see the same tumours.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from tumorfm.data.grid import ct_normalise
from tumorfm.errors import TumorFMError
from tumorfm.synth.dataset import engine_function

_ENGINES: dict[tuple, object] = {}  # (engine, model, modality) -> synthesise, once per process


def _engine(spec: dict):
    key = (spec["engine"], spec.get("model"), spec["modality"])
    if key not in _ENGINES:
        model = spec.get("model") and Path(spec["model"])
        _ENGINES[key] = engine_function(spec["engine"], model, spec["modality"])
    return _ENGINES[key]


def online_specs(cache: Path, pool: dict) -> dict[str, dict]:
    """Dataset name -> its synthesis (pool.json) with what a patch needs: modality, spacing and
    the CT normalisation of its plan."""
    specs = {}
    for dataset in pool["datasets"]:
        spec = dataset.get("synthesis")
        if not spec:
            continue
        plan = json.loads((cache / dataset["name"] / "plan.json").read_text())
        ct = plan["normalization_schemes"][0] == "ct"
        specs[dataset["name"]] = {
            **spec,
            "modality": "CT" if ct else "MR",
            "ct_normalisation": plan["intensity_properties"][0] if ct else None,
            "spacing_zyx": plan["target_spacing_zyx"],
        }
    return specs


HU_SMOOTHING_MM = 1.5  # CT noise (~10-20 HU) would riddle a raw HU window with holes


def hu_window_organ(hu: np.ndarray, free: np.ndarray, window, spacing_zyx) -> np.ndarray:
    """An 'organ' made of tissue: the `free` voxels (no label) whose smoothed HU lies in
    `window`, opened so that specks go. Smoothing first: a raw window on noisy CT is so full of
    holes that no point lies a few millimetres deep, and no tumour fits."""
    sigma = HU_SMOOTHING_MM / np.asarray(spacing_zyx, dtype=np.float64)
    smooth = ndimage.gaussian_filter(np.asarray(hu, dtype=np.float32), sigma)
    low, high = window
    return ndimage.binary_opening(free & (smooth >= low) & (smooth <= high))


def insert_tumours(
    image: np.ndarray, label: np.ndarray, spec: dict, seed: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Tumours in the organ of a (C, Z, Y, X) normalised patch and its global label map; returns
    (image, label, whether any was inserted). A patch whose organ cannot hold the smallest
    tumour is returned unchanged."""
    channel = image[0].astype(np.float64)
    stats = spec["ct_normalisation"]
    if stats is not None:  # back to HU
        channel = channel * max(stats["std"], 1e-8) + stats["mean"]
    if spec["organ_value"] is not None:
        organ = label == spec["organ_value"]
    else:
        organ = hu_window_organ(channel, label == 0, spec["organ_hu"], spec["spacing_zyx"])
    if not organ.any():
        return image, label, False
    try:
        made = _engine(spec)(
            channel,
            organ,
            spec["spacing_zyx"],
            seed=seed,
            modality=spec["modality"],
            count=spec["count"],
            size=spec["size"],
            mass_effect=spec["mass_effect"],
            **{k: spec[k] for k in ("shift_hu", "texture_hu", "looks") if spec.get(k) is not None},
        )
    except TumorFMError:  # a sliver of organ at the patch's edge: leave the patch as it is
        return image, label, False
    out = made.image if stats is None else ct_normalise(made.image, stats)  # as preprocessing did
    image, label = image.copy(), label.copy()
    image[0] = out.astype(image.dtype)
    label[made.tumour] = spec["tumour_value"]
    return image, label, True
