"""How alike real and synthetic tumours are (benchmarks.synth's realism): first-order and GLCM
features of the HU inside each tumour, and a two-sample classifier over them.

A classifier's cross-validated AUC is the issue's measure (0.5: it cannot tell them apart);
standardised mean differences and Wasserstein distances per feature say where they differ.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
from scipy import ndimage, stats
from skimage.feature import graycomatrix, graycoprops
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .seeds import over_seeds

WINDOW, LEVELS = (-200.0, 250.0), 32  # histogram and GLCM quantisation
ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
MIN_SLICE = 10  # tumour voxels an axial slice needs to count in the GLCM
FIRST = ("mean", "std", "p10", "p50", "p90", "skewness", "kurtosis", "entropy")
GLCM = ("contrast", "homogeneity", "energy", "correlation")
FEATURES = FIRST + tuple(f"glcm_{name}" for name in GLCM)


def features(image: np.ndarray, mask: np.ndarray, spacing) -> dict:
    """First-order and GLCM features of the HU in `mask`, and its volume (ml)."""
    hu = image[mask].astype(np.float64)
    std = float(hu.std())
    counts, _ = np.histogram(np.clip(hu, *WINDOW), bins=LEVELS, range=WINDOW)
    p = counts[counts > 0] / hu.size
    flat = std == 0  # a constant: no asymmetry, no tails (scipy would say NaN)
    out = dict(zip(("p10", "p50", "p90"), np.percentile(hu, [10, 50, 90]).tolist()))
    out |= {
        "mean": float(hu.mean()),
        "std": std,
        "skewness": 0.0 if flat else float(stats.skew(hu)),
        "kurtosis": 0.0 if flat else float(stats.kurtosis(hu)),
        "entropy": max(0.0, float(-(p * np.log2(p)).sum())),
    }
    return out | glcm(image, mask) | {"volume_ml": float(mask.sum() * np.prod(spacing) / 1000)}


def glcm(image: np.ndarray, mask: np.ndarray) -> dict:
    """GLCM properties at 1 voxel in 4 in-plane directions, averaged over directions and over the
    axial slices of the mask's box with >= MIN_SLICE voxels: HU in 32 levels (1-32), the outside
    at 0, whose row and column are dropped, so only pairs inside the tumour count."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    inside, hu = mask[box], image[box].astype(np.float64)
    level = np.floor((hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0]) * LEVELS)
    quantised = np.where(inside, 1 + np.clip(level, 0, LEVELS - 1), 0).astype(np.uint8)
    values = []
    for z in range(quantised.shape[0]):
        if inside[z].sum() < MIN_SLICE:
            continue
        matrix = graycomatrix(quantised[z], [1], ANGLES, levels=LEVELS + 1, symmetric=True)
        matrix = matrix[1:, 1:]
        pairs = matrix.sum(axis=(0, 1))[0] > 0  # directions with pairs inside
        if pairs.any():
            values.append([graycoprops(matrix[..., pairs], n).mean() for n in GLCM])
    mean = np.mean(values, axis=0) if values else [math.nan] * len(GLCM)
    return {f"glcm_{n}": float(v) for n, v in zip(GLCM, mean)}


def two_sample(real: np.ndarray, fake: np.ndarray, groups: list[str], seed: int) -> dict:
    """Out-of-fold AUC of standardised features + logistic regression, stratified folds that keep
    a scan's real and synthetic tumour together; standardised mean differences (pooled std) and
    1D Wasserstein distances (features divided by the real tumours' std)."""
    x, y = np.vstack([real, fake]), np.r_[np.zeros(len(real)), np.ones(len(fake))]
    folds = min(5, len(real))
    auc = None
    if folds >= 2:
        cv = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        proba = cross_val_predict(model, x, y, groups=groups * 2, cv=cv, method="predict_proba")
        auc = float(roc_auc_score(y, proba[:, 1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = np.sqrt((real.var(axis=0, ddof=1) + fake.var(axis=0, ddof=1)) / 2)
        smd = (fake.mean(axis=0) - real.mean(axis=0)) / pooled
        scale = real.std(axis=0, ddof=1)
    scale = np.where(scale > 0, scale, np.nan)
    w = [stats.wasserstein_distance(r / d, f / d) for r, f, d in zip(real.T, fake.T, scale)]
    smd = np.where(np.isfinite(smd), smd, np.nan)
    return {
        "auc": auc,
        "folds": folds,
        "cases": len(real),
        "mean_abs_smd": _nanmean(np.abs(smd)),
        "mean_wasserstein": _nanmean(w),
        "smd": dict(zip(FEATURES, map(_finite, smd))),
        "wasserstein": dict(zip(FEATURES, map(_finite, w))),
    }


def _finite(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _nanmean(values) -> float | None:
    values = [v for v in np.asarray(values, dtype=float) if np.isfinite(v)]
    return float(np.mean(values)) if values else None


def _usable(feats: dict) -> bool:
    return all(np.isfinite(feats[f]) for f in FEATURES)


def summarise(rows: dict, arm: str, seeds: list[int]) -> dict:
    """Per seed the two-sample measures over the cases that have both tumours, then over seeds."""
    per_seed = {}
    for seed in seeds:
        pairs = [
            (case, r["real"], r[arm][str(seed)])
            for case, r in rows.items()
            if str(seed) in r.get(arm, {}) and _usable(r["real"]) and _usable(r[arm][str(seed)])
        ]
        real = np.array([[p[1][f] for f in FEATURES] for p in pairs])
        fake = np.array([[p[2][f] for f in FEATURES] for p in pairs])
        if len(pairs) < 2:
            per_seed[seed] = {"cases": len(pairs), "auc": None}
            continue
        per_seed[seed] = two_sample(real, fake, [p[0] for p in pairs], seed)
        per_seed[seed]["volume_ml_median"] = statistics.median(p[2]["volume_ml"] for p in pairs)
    measures = ("auc", "mean_abs_smd", "mean_wasserstein")
    return {m: over_seeds({s: per_seed[s].get(m) for s in seeds}) for m in measures} | {
        "per_seed": per_seed
    }
