"""Resampling arrays to a new shape, the nnU-Net way, on SimpleITK's multithreaded resampler.

Grids are matched like nnU-Net's (skimage) resize: voxel centres scaled about the volume's extent,
so the first and last voxel edges coincide. Images use a cubic B-spline; label maps are resampled
one label at a time with linear interpolation and a 0.5 threshold, which keeps thin structures that
nearest-neighbour would break. For anisotropic data (`separate_axis`), the low-resolution axis is
resampled on its own with nearest neighbour, as nnU-Net does (order_z = 0).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def _resample(array: np.ndarray, shape: tuple[int, ...], interpolator: int) -> np.ndarray:
    """Resample one 2D or 3D float array to `shape` ((z,) y, x) in index space."""
    if tuple(array.shape) == tuple(shape):
        return array
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    spacing = [old / new for old, new in zip(reversed(array.shape), reversed(shape))]
    origin = [0.5 * (s - 1.0) for s in spacing]
    resampled = sitk.Resample(
        image,
        [int(s) for s in reversed(shape)],
        sitk.Transform(),
        interpolator,
        origin,
        spacing,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(resampled)


def _slice_by_slice(
    array: np.ndarray, shape: tuple[int, ...], axis: int, interpolator: int
) -> np.ndarray:
    """Resample each slice across `axis` (whose size stays) in 2D. For a cubic B-spline this is
    the same function as one 3D pass (the spline interpolates: at whole indices along `axis` it
    gives back the slices), 1.6x faster: ITK's 3D B-spline still weighs 4 neighbours along an
    axis that does not move."""
    moved = np.moveaxis(array, axis, 0)
    out = np.empty((moved.shape[0], *np.delete(shape, axis)), np.float32)
    for index, plane in enumerate(moved):
        out[index] = _resample(plane, out.shape[1:], interpolator)
    return np.moveaxis(out, 0, axis)


def _two_pass(
    array: np.ndarray, shape: tuple[int, ...], separate_axis: int | None, interpolator: int
) -> np.ndarray:
    if separate_axis is None or array.shape[separate_axis] == shape[separate_axis]:
        return _resample(array, shape, interpolator)
    in_plane = list(shape)
    in_plane[separate_axis] = array.shape[separate_axis]
    if interpolator == sitk.sitkBSpline:
        array = _slice_by_slice(array, tuple(in_plane), separate_axis, interpolator)
    else:  # linear: 2 neighbours along the still axis cost less than a call per slice
        array = _resample(array, tuple(in_plane), interpolator)
    return _resample(array, shape, sitk.sitkNearestNeighbor)


def resample_image(
    image: np.ndarray, shape: tuple[int, ...], separate_axis: int | None = None
) -> np.ndarray:
    """(C, Z, Y, X) float image -> (C, *shape) with cubic B-spline interpolation."""
    return np.stack(
        [_two_pass(channel, shape, separate_axis, sitk.sitkBSpline) for channel in image]
    ).astype(np.float32, copy=False)


def resample_labels(
    label: np.ndarray, shape: tuple[int, ...], separate_axis: int | None = None
) -> np.ndarray:
    """(Z, Y, X) label map -> `shape`, one label at a time (linear, threshold 0.5)."""
    if tuple(label.shape) == tuple(shape):
        return label.copy()
    out = np.zeros(shape, dtype=label.dtype)
    for value in np.unique(label):
        if value == 0:
            continue
        mask = (label == value).astype(np.float32)
        out[_two_pass(mask, shape, separate_axis, sitk.sitkLinear) >= 0.5] = value
    return out


def resample_probabilities(
    probabilities: np.ndarray, shape: tuple[int, ...], separate_axis: int | None = None
) -> np.ndarray:
    """(Z, Y, X) probability map -> `shape` with linear interpolation (nnU-Net's order 1)."""
    return _two_pass(probabilities, shape, separate_axis, sitk.sitkLinear)
