"""A simulated reader, for training with interaction and for the Dice-per-click benchmark.

The protocol is SAM-Med3D's and RITM's: a first prompt (a point well inside the object, its
bounding box with a few voxels of jitter, or nothing), then corrective clicks, each at the
centre of the largest error region, positive on a miss and negative on a false alarm. Every
random choice goes through the caller's numpy Generator, so a run is repeatable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from tumorfm.eval.metrics import dice
from tumorfm.interactive.prompts import Box, Point

FIRST_KINDS = ("point", "box", "none")
# a first click lands where the object is at least half as thick as at its thickest: inside,
# as a reader clicks, but not always on the one deepest voxel (a network would learn that spot)
INTERIOR_FRACTION = 0.5
BOX_JITTER = 3  # voxels each corner may move, per axis: a box drawn by hand is not tight

PredictFn = Callable[[list[Point], list[Box], np.ndarray | None], np.ndarray]


def _depth(region: np.ndarray, spacing_zyx) -> tuple[np.ndarray, tuple[int, ...]]:
    """Distance (mm with spacing, else voxels) from each voxel of `region` to its outside,
    the volume's border counting as outside; computed on the region's bounding box only.
    Returns the distances of that box and its start."""
    (box,) = ndimage.find_objects(region.astype(np.uint8))
    padded = np.pad(region[box], 1)  # the border of the volume is a boundary too
    depth = ndimage.distance_transform_edt(padded, sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    return depth, tuple(s.start for s in box)


def first_prompt(
    target: np.ndarray,
    rng: np.random.Generator,
    kinds: Sequence[str] = FIRST_KINDS,
    spacing_zyx: Sequence[float] | None = None,
) -> tuple[list[Point], list[Box]]:
    """One of `kinds`, drawn uniformly: a positive point sampled among the voxels at least
    INTERIOR_FRACTION as deep as the deepest, or the object's bounding box with each corner
    moved by up to BOX_JITTER voxels (clipped to the volume), or nothing. Nothing, too, when
    the target is empty: there is nothing to point at."""
    unknown = [kind for kind in kinds if kind not in FIRST_KINDS]
    if unknown or not kinds:
        raise ValueError(f"prompt kinds {list(kinds)}: choose among {', '.join(FIRST_KINDS)}")
    kind = kinds[int(rng.integers(len(kinds)))]
    target = np.asarray(target, dtype=bool)
    if kind == "none" or not target.any():
        return [], []
    if kind == "point":
        depth, start = _depth(target, spacing_zyx)
        candidates = np.flatnonzero(depth >= INTERIOR_FRACTION * depth.max())
        index = np.unravel_index(candidates[int(rng.integers(len(candidates)))], depth.shape)
        return [Point(tuple(int(i + s) for i, s in zip(index, start)))], []
    lo, hi = [], []
    for box, n in zip(ndimage.find_objects(target.astype(np.uint8))[0], target.shape):
        a = int(np.clip(box.start + rng.integers(-BOX_JITTER, BOX_JITTER + 1), 0, n - 1))
        b = int(np.clip(box.stop + rng.integers(-BOX_JITTER, BOX_JITTER + 1), a + 1, n))
        lo.append(a)
        hi.append(b)
    return [], [Box(tuple(lo), tuple(hi))]


def corrective_click(
    prediction: np.ndarray, target: np.ndarray, spacing_zyx: Sequence[float] | None = None
) -> Point | None:
    """The click a reader makes next, or None if `prediction` equals `target`.

    False negatives and false positives are split into connected regions (6-connectivity:
    regions touching only at an edge or a corner are separate blunders, as a reader sees them);
    the largest by voxel count wins (a miss before a false alarm of the same size), and the
    click goes to its deepest voxel (distance transform with `spacing_zyx`; of several, the one
    nearest their mean, then the first in C order): positive in a miss, negative in a false
    alarm."""
    prediction = np.asarray(prediction, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ")
    best, best_size = None, 0
    for errors, positive in ((target & ~prediction, True), (prediction & ~target, False)):
        labels, count = ndimage.label(errors)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        if sizes.max() > best_size:
            best_size = int(sizes.max())
            best = (labels == int(np.argmax(sizes)) + 1, positive)
    if best is None:
        return None
    region, positive = best
    depth, start = _depth(region, spacing_zyx)
    deepest = np.argwhere(depth == depth.max())  # a ridge, often: a slab's whole mid-plane
    index = deepest[np.argmin(np.linalg.norm(deepest - deepest.mean(axis=0), axis=1))]
    return Point(tuple(int(i + s) for i, s in zip(index, start)), positive)


def simulate_clicks(
    predict_fn: PredictFn,
    target: np.ndarray,
    rounds: int,
    rng: np.random.Generator,
    first: Sequence[str] = ("point",),
    spacing_zyx: Sequence[float] | None = None,
) -> list[float]:
    """Dice after the first prompt (drawn from `first`) and after each of `rounds` corrective
    clicks: `rounds + 1` numbers, so `[0]` is "0 clicks" and `[5]` is "after 5 clicks".

    `predict_fn(points, boxes, previous)` gets every prompt so far (the newest last) and the
    previous prediction (None the first time) and returns a bool mask of the target's shape.
    Once the prediction is perfect no more clicks are made and the Dice is repeated."""
    target = np.asarray(target, dtype=bool)
    points, boxes = first_prompt(target, rng, first, spacing_zyx)
    prediction = np.asarray(predict_fn(points, boxes, None), dtype=bool)
    scores = [dice(prediction, target)]
    for _ in range(rounds):
        click = corrective_click(prediction, target, spacing_zyx)
        if click is not None:
            points = [*points, click]
            prediction = np.asarray(predict_fn(points, boxes, prediction), dtype=bool)
        scores.append(dice(prediction, target))
    return scores
