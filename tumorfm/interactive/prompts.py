"""Prompts as input channels, as nnInteractive gives them to its network: the previous mask and
the clicks and boxes of a reader become five channels after the scan's, so a promptable bundle is
the same network with a wider stem (no prompt encoder, no new presets).

Coordinates are voxel indices of the array, in (z, y, x) order, and may be fractional. A point
at an integer index is that voxel's centre; a point is in the scan when it lies in some voxel,
-0.5 <= i < size - 0.5. A box is half-open like a numpy slice: `Box((2, 3, 4), (5, 6, 7))` holds
voxels 2..4, 3..5 and 4..6, and in general voxel k is inside when its centre k + 0.5 (in these
slice-bound units) lies in [lo, hi). Both survive a change of grid by scaling (see
tumorfm.interactive.session.IndexMap), which is why they are kept fractional.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from tumorfm.data.io import Geometry
from tumorfm.errors import TumorFMError

PROMPT_CHANNELS = (
    "previous_mask",
    "positive_points",
    "negative_points",
    "positive_boxes",
    "negative_boxes",
)
# A click is a ball 8 mm across: on the shipped sarcoma plan (3.27 x 1.93 x 1.93 mm) that is
# 3 slices of 5 x 5 voxels, so it survives the network's first stride-2 down-sampling as more
# than one voxel, and still fits inside a 1 cm lesion. nnInteractive draws its points as balls
# of a few voxels for the same reason.
POINT_RADIUS_MM = 4.0


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def shape_text(shape: Sequence[int]) -> str:
    """A shape as the errors print it: 47 x 134 x 136."""
    return " x ".join(str(int(s)) for s in shape)


def _triple(values, name: str) -> tuple[float, float, float]:
    """Three finite numbers, or a one-line error naming the prompt."""
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TumorFMError(f"{name} {values!r}: expected three numbers (z, y, x)") from None
    if len(numbers) != 3:
        raise TumorFMError(f"{name} {_fmt(numbers)}: expected three numbers (z, y, x)")
    if not all(math.isfinite(v) for v in numbers):
        raise TumorFMError(f"{name} {_fmt(numbers)}: coordinates must be finite numbers")
    return numbers


@dataclass(frozen=True)
class Point:
    """A click: positive (this is the object) or negative (this is not)."""

    zyx: tuple[float, float, float]
    positive: bool = True

    def __post_init__(self):
        object.__setattr__(self, "zyx", _triple(self.zyx, self.kind))
        object.__setattr__(self, "positive", bool(self.positive))

    @property
    def kind(self) -> str:
        return "point" if self.positive else "negative point"

    @property
    def name(self) -> str:
        return f"{self.kind} {_fmt(self.zyx)}"

    @property
    def voxel(self) -> tuple[int, int, int]:
        """The index of the voxel holding the point."""
        return tuple(math.floor(v + 0.5) for v in self.zyx)

    def check(self, shape_zyx: Sequence[int]) -> Point:
        """The point itself, or a one-line error if it lies outside a volume of `shape_zyx`."""
        if not all(-0.5 <= v < n - 0.5 for v, n in zip(self.zyx, shape_zyx)):
            raise TumorFMError(f"{self.name}: outside the scan (size {shape_text(shape_zyx)})")
        return self


@dataclass(frozen=True)
class Box:
    """A box around (positive) or over something to exclude (negative); half-open, lo < hi."""

    lo_zyx: tuple[float, float, float]
    hi_zyx: tuple[float, float, float]
    positive: bool = True

    def __post_init__(self):
        kind = "box" if self.positive else "negative box"
        lo, hi = _triple(self.lo_zyx, f"{kind} corner"), _triple(self.hi_zyx, f"{kind} corner")
        object.__setattr__(self, "lo_zyx", lo)
        object.__setattr__(self, "hi_zyx", hi)
        object.__setattr__(self, "positive", bool(self.positive))
        for axis, a, b in zip("zyx", lo, hi):
            if a > b:
                raise TumorFMError(f"{self.name}: corners swapped on axis {axis} ({a:g} > {b:g})")
            if a == b:
                raise TumorFMError(f"{self.name}: zero size on axis {axis} (hi is exclusive)")

    @property
    def name(self) -> str:
        kind = "box" if self.positive else "negative box"
        return f"{kind} {_fmt(self.lo_zyx)}-{_fmt(self.hi_zyx)}"

    def check(self, shape_zyx: Sequence[int]) -> Box:
        """The box itself, or a one-line error if it leaves a volume of `shape_zyx`."""
        if not all(0 <= a and b <= n for a, b, n in zip(self.lo_zyx, self.hi_zyx, shape_zyx)):
            raise TumorFMError(f"{self.name}: outside the scan (size {shape_text(shape_zyx)})")
        return self


def from_world(points_mm, geometry: Geometry) -> list[tuple[float, float, float]]:
    """Points in millimetres of patient space, each (x, y, z) in ITK's (LPS) order as every
    viewer shows them -> continuous voxel indices (z, y, x) of the array on `geometry`."""
    spatial = geometry.spatial()
    image = spatial.apply_to(sitk.Image([1, 1, 1], sitk.sitkUInt8))
    shape = tuple(reversed(spatial.size))
    indices = []
    for point in points_mm:
        try:
            xyz = tuple(float(v) for v in point)
        except (TypeError, ValueError):
            raise TumorFMError(f"world point {point!r}: expected three numbers (x, y, z)") from None
        if len(xyz) != 3 or not all(math.isfinite(v) for v in xyz):
            raise TumorFMError(f"world point {_fmt(xyz)} mm: expected three finite numbers")
        zyx = tuple(reversed(image.TransformPhysicalPointToContinuousIndex(xyz)))
        if not all(-0.5 <= v < n - 0.5 for v, n in zip(zyx, shape)):
            raise TumorFMError(
                f"world point {_fmt(xyz)} mm: outside the scan (voxel {_fmt(np.round(zyx, 1))}, "
                f"size {shape_text(shape)})"
            )
        indices.append(zyx)
    return indices


def encode(
    shape_zyx: Sequence[int],
    points: Sequence[Point] = (),
    boxes: Sequence[Box] = (),
    previous: np.ndarray | None = None,
    spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
    radius_mm: float = POINT_RADIUS_MM,
    origin_zyx: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """The prompt channels (PROMPT_CHANNELS order) of the region of `shape_zyx` voxels that
    starts at voxel `origin_zyx` of the volume, as (5, Z, Y, X) float32 of 0 and 1.

    Prompts are in the volume's coordinates; the region need not hold them (they are clipped),
    so a window is encoded without allocating the volume. `previous`: the mask of the same
    region (bool, or probabilities thresholded at 0.5); zeros if None. Points are balls of
    `radius_mm` at `spacing_zyx` (the voxel holding the point is always on, whatever the
    radius); boxes are filled."""
    shape = tuple(int(s) for s in shape_zyx)
    origin = tuple(int(o) for o in origin_zyx)
    out = np.zeros((len(PROMPT_CHANNELS), *shape), np.float32)
    if previous is not None:
        if tuple(previous.shape) != shape:
            raise ValueError(f"previous mask of shape {previous.shape} for a region of {shape}")
        out[0] = np.asarray(previous, dtype=np.float32) >= 0.5
    for point in points:
        _ball(out[1 if point.positive else 2], point.zyx, origin, spacing_zyx, radius_mm)
    for box in boxes:
        _box(out[3 if box.positive else 4], box, origin)
    return out


def _ball(channel: np.ndarray, centre, origin, spacing, radius: float) -> None:
    """Voxels whose centres lie within `radius` mm of `centre`, computed in the volume's
    indices (not the region's), so that a region and a crop of the volume agree bit for bit."""
    lo, hi = [], []
    for c, o, n, s in zip(centre, origin, channel.shape, spacing):
        reach = radius / float(s)
        lo.append(max(math.ceil(c - reach), o))
        hi.append(min(math.floor(c + reach) + 1, o + n))
    if all(a < b for a, b in zip(lo, hi)):
        axes = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        squared = sum(((g - c) * float(s)) ** 2 for g, c, s in zip(axes, centre, spacing))
        region = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin))
        channel[region] = np.maximum(channel[region], squared <= radius * radius)
    nearest = tuple(math.floor(c + 0.5) - o for c, o in zip(centre, origin))  # Point.voxel
    if all(0 <= k < n for k, n in zip(nearest, channel.shape)):
        channel[nearest] = 1.0


def _box(channel: np.ndarray, box: Box, origin) -> None:
    """Voxels k with k + 0.5 in [lo, hi); a box thinner than a voxel on some axis (after
    resampling to a coarser grid) keeps the voxel holding its middle."""
    region = []
    for a, b, o, n in zip(box.lo_zyx, box.hi_zyx, origin, channel.shape):
        start, stop = math.ceil(a - 0.5), math.ceil(b - 0.5)
        if stop <= start:
            start = math.floor((a + b) / 2)
            stop = start + 1
        start, stop = max(start - o, 0), min(stop - o, n)
        if start >= stop:
            return
        region.append(slice(start, stop))
    channel[tuple(region)] = 1.0
