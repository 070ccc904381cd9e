"""Scans stored in any axis order reach the network, the statistics and the pictures as axial
stacks, and go back to their own order on writing.

A sagittally or coronally stored scan would otherwise reach the network rotated by 90 degrees
(its patch, spacing and anatomy all on the wrong axes) and be drawn under an "axial" caption.
The canonical order is TotalSegmentator's idea, but only the axes are permuted, never flipped:
array axis z runs along S/I, y along A/P, x along L/R, each in the direction it was stored.
Flips are left alone because training mirrors every axis anyway, and because an axially stored
scan (every scan of the pool and the shipped model's data) then stays bit-identical to what
nnU-Net v2 sees, so the preprocessing parity holds. The closest orientation of an oblique scan
is SimpleITK's (`DICOMOrientImageFilter`); permuting by it is exactly `sitk.DICOMOrient` to the
same letters in the new order (tests/test_orient.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from tumorfm.data.io import Geometry

GROUPS = ("LR", "PA", "SI")  # the patient axes of ITK's x, y, z in an axial scan


@dataclass(frozen=True)
class Orientation:
    """How a 3D scan's stored axes map to the axial order; `axes[i]` is the stored array axis
    (z, y, x order) that becomes axial array axis i."""

    stored: str  # SimpleITK's orientation letters of the stored scan, e.g. "PIL" (sagittal)
    axes: tuple[int, int, int]

    @classmethod
    def of(cls, geometry: Geometry) -> Orientation:
        letters = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
            list(geometry.spatial().direction)
        )
        itk_axis = [next(i for i, c in enumerate(letters) if c in g) for g in GROUPS]
        # axial array axis z, y, x = ITK axis of S/I, A/P, L/R = stored array axis 2 - that
        return cls(letters, tuple(2 - itk_axis[g] for g in (2, 1, 0)))

    @property
    def is_axial(self) -> bool:
        return self.axes == (0, 1, 2)

    @property
    def axial_letters(self) -> str:
        """The letters of the axial scan (what `sitk.DICOMOrient` would be given)."""
        return "".join(next(c for c in self.stored if c in g) for g in GROUPS)

    def _permutation(self, ndim: int) -> tuple[int, ...]:
        lead = ndim - 3  # channel axes in front stay in front
        return (*range(lead), *(lead + a for a in self.axes))

    def to_axial(self, array: np.ndarray) -> np.ndarray:
        """(..., Z, Y, X) stored -> axial (a view: no copy)."""
        return array if self.is_axial else array.transpose(self._permutation(array.ndim))

    def back(self, array: np.ndarray) -> np.ndarray:
        """(..., Z, Y, X) axial -> the stored order (a view)."""
        if self.is_axial:
            return array
        return array.transpose(np.argsort(self._permutation(array.ndim)))

    def spacing_zyx(self, geometry: Geometry) -> list[float]:
        stored = geometry.spatial().spacing_zyx
        return [float(stored[a]) for a in self.axes]

    def geometry(self, geometry: Geometry) -> Geometry:
        """The axial scan's geometry: the same voxels in patient space, axes permuted."""
        spatial = geometry.spatial()
        itk = [2 - a for a in reversed(self.axes)]  # axial ITK axis x, y, z <- stored ITK axis
        direction = np.asarray(spatial.direction).reshape(3, 3)[:, itk]
        return Geometry(
            tuple(spatial.size[i] for i in itk),
            tuple(spatial.spacing[i] for i in itk),
            spatial.origin,
            tuple(direction.ravel().tolist()),
        )
