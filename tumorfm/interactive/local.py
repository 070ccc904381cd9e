"""Clicks as local thresholds: a reader's prompts applied to a probability map, so that every click
is honoured whether or not a network learnt to read it.

A network's probabilities already rank the voxels; what it gets wrong is mostly where the line
falls. A click says where it should fall near the clicked voxel: a positive click on a voxel of
probability p adds the voxels around it that are at least as likely (p - MARGIN or more, the region
connected to it), a negative click on p removes those that are no more likely (p + MARGIN or less).
The click's threshold holds at the click and slides back to the class's decision threshold (0.5
unless the bundle is calibrated) at REACH_MM, linearly with the distance: a click is sure of its
own neighbourhood and less of what lies farther away, so a negative click on a confident false
alarm (p near 1) erases it without erasing the whole confident tumour it touches, as one flat
threshold out to REACH_MM did (the Dice-per-click curve then fell after some clicks). A click never
acts past the midway to a click of the other sign (a positive box counts by its centre), so two
clicks never fight over a voxel. A positive box keeps the mask inside the positive boxes, a
negative one erases its inside; and a box says more than where the object is: a tumour fills its
box about as the inscribed ellipsoid does, not into the corners. So inside a positive box the
probabilities are kept within that ellipsoid and fade to 0 at BOX_FADE times its radii: a network
that spills into the tissue around a tumour (the shipped bundle does, on new scans) spills less.
Without a box, positive clicks select the object: what remains is the connected parts that hold one
of them (as a reader who points at one tumour means that one); a box has already chosen the object,
and a click inside it on a part the network missed adds that part. Interactive tools have long done
this with an intensity threshold at the click (a "smart brush"); here the threshold is on the
network's probability, which separates tumour from tissue far better than a CT's HU
(benchmarks/interactive.py measures the two).

Coordinates are those of tumorfm.interactive.prompts (voxel indices z, y, x of `probability`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from tumorfm.defaults import DECISION_THRESHOLD
from tumorfm.interactive.prompts import POINT_RADIUS_MM, Box, Point

# A click's threshold sits MARGIN beyond the clicked voxel's probability, and is back at the
# decision threshold at REACH_MM. Both chosen on the shipped bundle's training sarcomas, never
# held-out ones (benchmarks.interactive_tune: of margins 0.05-0.15 and reaches 60-150 mm, the best
# after 5 clicks around its calibrated threshold 0.75; around 0.5 it was 0.1 and 120 mm)
MARGIN = 0.05
REACH_MM = 150.0
# The box's ellipsoid, scaled by BOX_FADE, is where probabilities have faded to 0 (1.0 would be
# the ellipsoid itself; 0 turns the fade off); chosen as MARGIN and REACH_MM were
BOX_FADE = 1.4
FLOOR = 0.02  # below this the network sees nothing: a positive click there adds its own ball


def _ball_box(centre, reach_mm: float, spacing, shape) -> tuple[slice, ...]:
    """The index box of the ball of `reach_mm` around `centre`, clipped to `shape`."""
    return tuple(
        slice(max(int(np.floor(c - reach_mm / s)), 0), min(int(np.ceil(c + reach_mm / s)) + 1, n))
        for c, s, n in zip(centre, spacing, shape)
    )


def _distance(centre, box: tuple[slice, ...], spacing) -> np.ndarray:
    """Millimetres from `centre` to every voxel of `box`."""
    axes = [(np.arange(b.start, b.stop) - c) * s for b, c, s in zip(box, centre, spacing)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    return np.sqrt(sum(g**2 for g in grids))


def _connected(region: np.ndarray, at: tuple[int, ...]) -> np.ndarray:
    """The connected part of `region` (6-connected) that holds voxel `at`, else nothing."""
    if not region[at]:
        return np.zeros_like(region)
    labels, _ = ndimage.label(region)
    return labels == labels[at]


def refine(
    probability: np.ndarray,
    points: Sequence[Point],
    boxes: Sequence[Box] = (),
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
    margin: float = MARGIN,
    reach_mm: float = REACH_MM,
    box_fade: float = BOX_FADE,
    threshold: float = DECISION_THRESHOLD,
) -> np.ndarray:
    """The mask (bool, `probability`'s shape) that `probability` >= `threshold` (the class's
    decision threshold) becomes under the reader's `points` (applied in order) and `boxes`."""
    probability = np.asarray(probability, dtype=np.float32)
    shape, spacing = probability.shape, tuple(float(s) for s in spacing_zyx)
    positive_boxes = [b for b in boxes if b.positive]
    if positive_boxes and box_fade:
        probability = probability * _ellipsoid_fade(positive_boxes, box_fade, shape)
    mask = probability >= threshold
    if positive_boxes:
        inside = np.zeros(shape, bool)
        for box in positive_boxes:
            inside[_slices(box, shape)] = True
        mask &= inside
    for box in boxes:
        if not box.positive:
            mask[_slices(box, shape)] = False
    anchors = {
        True: [p.zyx for p in points if p.positive]
        + [tuple((a + b) / 2 - 0.5 for a, b in zip(x.lo_zyx, x.hi_zyx)) for x in positive_boxes],
        False: [p.zyx for p in points if not p.positive],
    }
    for point in points:
        at = tuple(min(max(v, 0), n - 1) for v, n in zip(point.voxel, shape))
        box = _ball_box(point.zyx, reach_mm, spacing, shape)
        local = tuple(a - b.start for a, b in zip(at, box))
        distance = _distance(point.zyx, box, spacing)
        near = distance <= reach_mm
        for other in anchors[not point.positive]:  # never past the midway to the other sign
            near &= distance < _distance(other, box, spacing)
        p, part = float(probability[at]), mask[box]
        weight = 1 - distance / reach_mm  # of the click's own threshold; 0 at reach_mm
        if point.positive and not part[local]:
            if p < FLOOR:  # nothing to follow: the click's own ball
                grown = near & (distance <= POINT_RADIUS_MM)
            else:
                level = threshold + (max(p - margin, FLOOR) - threshold) * weight
                grown = _connected(near & (probability[box] >= level), local)
            part |= grown
        elif not point.positive and part[local]:
            level = threshold + (p + margin - threshold) * weight
            part &= ~_connected(near & part & (probability[box] <= level), local)
        mask[box] = part
    if any(p.positive for p in points) and not positive_boxes:  # select the pointed-at object
        labels, _ = ndimage.label(mask)
        held = {labels[tuple(min(max(v, 0), n - 1) for v, n in zip(p.voxel, shape))]
                for p in points if p.positive} - {0}  # fmt: skip
        mask = np.isin(labels, sorted(held)) if held else mask
    return mask


def _ellipsoid_fade(boxes: Sequence[Box], fade: float, shape) -> np.ndarray:
    """Per voxel, the most of: 1 inside a box's inscribed ellipsoid, falling linearly with the
    ellipsoidal radius to 0 at `fade` times it."""
    if not (1 < fade < float("inf")):  # NaN too
        raise ValueError(f"box fade {fade}: must be a finite number above 1 (or 0 for no fade)")
    weight = np.zeros(shape, np.float32)
    for box in boxes:
        centre = [(lo + hi) / 2 for lo, hi in zip(box.lo_zyx, box.hi_zyx)]
        half = [max((hi - lo) / 2, 0.5) for lo, hi in zip(box.lo_zyx, box.hi_zyx)]
        reach = Box(
            tuple(c - fade * h for c, h in zip(centre, half)),
            tuple(c + fade * h for c, h in zip(centre, half)),
        )
        region = _slices(reach, shape)
        axes = [
            ((np.arange(r.start, r.stop) + 0.5 - c) / h) ** 2
            for r, c, h in zip(region, centre, half)
        ]
        radius = np.sqrt(sum(np.meshgrid(*axes, indexing="ij", sparse=True)))
        fading = np.clip((fade - radius) / (fade - 1), 0, 1).astype(np.float32)
        np.maximum(weight[region], fading, out=weight[region])
    return weight


def _slices(box: Box, shape) -> tuple[slice, ...]:
    """The voxels a half-open box holds (centre k + 0.5 in [lo, hi)), clipped to `shape`."""
    return tuple(
        slice(max(int(np.ceil(a - 0.5)), 0), min(int(np.ceil(b - 0.5)), n))
        for a, b, n in zip(box.lo_zyx, box.hi_zyx, shape)
    )
