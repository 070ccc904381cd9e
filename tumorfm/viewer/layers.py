"""What the viewer shows: a scan and its label maps, checked, named and encoded for NiiVue.

Every input is read the way the rest of tumorfm reads it (NIfTI, NRRD, MHA or a DICOM series
folder) and handed to the page as gzipped NIfTI, the one format NiiVue and ITK agree on: ITK
writes the scan's patient-space grid into the NIfTI header, so the page draws each voxel where
the scan has it, in every view. Label values get the names of the dataset.json beside (or one
folder above) the label map and the colours of tumorfm's reports (tumorfm.data.classes); a
CASE_statistics.json beside a label map becomes its table.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tumorfm.data.check import GEOMETRY_TOLERANCE
from tumorfm.data.classes import class_colours
from tumorfm.data.io import Geometry, read_volume, to_image, volume_suffix
from tumorfm.errors import TumorFMError

CT_WINDOW = (-160.0, 240.0)  # soft tissue, level 40 and width 400 HU, as the reports draw CT


@dataclass
class Layer:
    """One volume of the page: the scan (no classes) or a label map (its classes)."""

    name: str
    nifti: bytes  # gzipped NIfTI-1
    classes: list[dict] = field(default_factory=list)  # {value, name, colour: [r, g, b]}
    window: tuple[float, float] | None = None  # grey levels (min, max) when not NiiVue's own
    statistics: dict | None = None  # CASE_statistics.json of a label map


@dataclass
class Scene:
    """The layers (scan first), a note for the page ('' or how they were shrunk), the scan's
    grid (to give each point its voxel index of the scan as stored, shrunk or not) and the
    point the page opens at: the middle of the first label map's labelled voxels, so the first
    picture shows the segmentation (None: the scan's centre). Points are patient millimetres,
    ITK's LPS x, y, z."""

    layers: list[Layer]
    grid: Geometry
    note: str = ""
    centre: list[float] | None = None

    def grid_config(self) -> dict:
        """What the page needs to turn a point (LPS mm) into the scan's voxel index (x, y, z):
        index = inverse @ (point - origin)."""
        axes = np.asarray(self.grid.direction, float).reshape(3, 3) * np.asarray(self.grid.spacing)
        return {"origin": list(self.grid.origin), "inverse": np.linalg.inv(axes).tolist()}


def nifti_bytes(image: sitk.Image) -> bytes:
    """A volume as gzipped NIfTI-1 bytes, as the page loads it."""
    """A volume as gzipped NIfTI-1 bytes, as the page loads it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layer.nii.gz"
        sitk.WriteImage(image, str(path), useCompression=True)
        return path.read_bytes()


def _name(path: Path) -> str:
    suffix = volume_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def _window(array: np.ndarray) -> tuple[float, float] | None:
    """CT's soft-tissue window for a scan in Hounsfield units (whole numbers reaching the air's
    -1000), else None: NiiVue's robust range (2nd to 98th percentile) suits MR."""
    whole = array.dtype.kind in "iu" or np.array_equal(array, np.round(array))
    return CT_WINDOW if whole and array.min() <= -900 else None


def _classes(path: Path, values: list[int]) -> list[dict]:
    from tumorfm.infer.postprocess import _class_names

    names_file, names = _class_names(path, None)
    names = names or {}
    colours = class_colours(max(values, default=1))
    return [
        {"value": v, "name": names.get(v, f"class_{v}"), "colour": list(colours[v - 1])}
        for v in values
    ]


def _statistics(path: Path) -> dict | None:
    from tumorfm.files import read_json_object

    beside = path.parent / f"{_name(path)}_statistics.json"
    return read_json_object(beside, "the statistics of a case") if beside.is_file() else None


def shrink_factors(size: tuple[int, ...], max_voxels: int) -> list[int]:
    """Whole factors per axis (x, y, z) that bring `size` under `max_voxels`, in-plane first
    (a CT's slices are finer than its slice spacing), the slice axis only if that is not enough."""
    factors = [1, 1, 1]
    while math.prod(s // f for s, f in zip(size, factors)) > max_voxels:
        axis = 2 if factors[0] >= 4 else 0
        if axis == 0:
            factors[0] = factors[1] = factors[0] + 1
        else:
            factors[2] += 1
    return factors


def read_scene(
    scan: str | Path,
    label_maps: list[str | Path],
    max_voxels: int | None = None,
    names: list[str] | None = None,
) -> Scene:
    """The scan and its label maps, shrunk to `max_voxels` each if given (the scan by averaging,
    the labels by the voxel at each new centre). A label map on another grid than the scan,
    or not one, is refused. `names` replaces the label maps' file names on the page."""
    scan = Path(scan)
    volume = read_volume(scan)
    if volume.array.ndim != 3:
        raise TumorFMError(
            f"{scan}: a {volume.array.ndim}D image of shape {volume.array.shape}; the viewer "
            "shows one 3D scan"
        )
    image = to_image(volume.array, volume.geometry)
    note, factors = "", [1, 1, 1]
    if max_voxels is not None and volume.array.size > max_voxels:
        factors = shrink_factors(volume.geometry.size, max_voxels)
        image = sitk.BinShrink(image, factors)
        note = (
            f"{_name(scan)} shrunk from {'x'.join(map(str, volume.geometry.size))} to "
            f"{'x'.join(map(str, image.GetSize()))} voxels (factors {factors}, x y z) for this page"
        )
    scan_layer = Layer(_name(scan), nifti_bytes(image), window=_window(volume.array))
    scene = Scene([scan_layer], volume.geometry, note)
    for index, path in enumerate(map(Path, label_maps)):
        labels = read_volume(path)
        layer, shown = _label_layer(path, labels.array, labels.geometry, volume.geometry, image)
        layer.name = names[index] if names else layer.name
        scene.layers.append(layer)
        found = np.argwhere(shown > 0) if scene.centre is None else []
        if len(found):  # the labelled voxel nearest their median: on a lesion, even of two
            middle = found[np.abs(found - np.median(found, axis=0)).sum(1).argmin()]
            z, y, x = middle.tolist()
            scene.centre = list(image.TransformIndexToPhysicalPoint([x, y, z]))
    return scene


def _label_layer(path: Path, array: np.ndarray, geometry: Geometry, scan: Geometry, shown):
    """The layer of a label map and its voxels on the grid shown."""
    from tumorfm.infer.postprocess import label_array

    array = label_array(path, array, top=255)  # the viewer's colour tables hold 256 entries
    if not scan.close_to(geometry, GEOMETRY_TOLERANCE):
        difference = geometry.difference_text(scan, GEOMETRY_TOLERANCE)
        raise TumorFMError(
            f"{path}: not on the scan's grid ({difference}); a label map "
            "must share the scan's size, spacing, origin and direction"
        )
    values = [int(v) for v in np.flatnonzero(np.bincount(array.ravel())) if v]
    image = to_image(array, geometry)
    if shown.GetSize() != tuple(geometry.size):  # the scan was shrunk: the voxel at each centre
        image = sitk.Resample(image, shown, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        array = sitk.GetArrayFromImage(image)
    layer = Layer(
        _name(path), nifti_bytes(image), _classes(path, values), statistics=_statistics(path)
    )
    return layer, array
