"""Volumes in and out: NIfTI, NRRD, MHA/MHD and DICOM series, as numpy arrays plus geometry.

Arrays follow SimpleITK/nnU-Net order: (z, y, x) for 3D, (c, z, y, x) for 4D images. Geometry keeps
ITK order (x, y, z), so it can be handed back to SimpleITK unchanged; `spacing_zyx` gives the
spacing in array order.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tumorfm.errors import TumorFMError
from tumorfm.files import make_public

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """Where the voxels of an image sit in patient space (ITK order: x, y, z)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        return tuple(reversed(self.spacing))

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(
            tuple(image.GetSize()),
            tuple(image.GetSpacing()),
            tuple(image.GetOrigin()),
            tuple(image.GetDirection()),
        )

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def spatial(self) -> Geometry:
        """The 3D part of a 4D (multi-channel) geometry."""
        if len(self.size) == 3:
            return self
        direction = np.asarray(self.direction).reshape(len(self.size), len(self.size))[:3, :3]
        return Geometry(
            self.size[:3], self.spacing[:3], self.origin[:3], tuple(direction.ravel().tolist())
        )

    def close_to(self, other: Geometry, tolerance: float = 1e-4) -> bool:
        """Same grid within a relative tolerance on spacing, origin (in mm) and direction."""
        return not self.differences(other, tolerance)

    def differences(self, other: Geometry, tolerance: float = 1e-4) -> list[str]:
        """The fields (size, spacing, origin, direction) in which `other` is another grid."""
        if self.size != other.size:
            return ["size"]  # the others may not even have the same length
        return [
            name
            for name, rtol, atol in (
                ("spacing", tolerance, tolerance),
                ("origin", tolerance, 1e-3),
                ("direction", 0.0, tolerance),
            )
            if not np.allclose(getattr(self, name), getattr(other, name), rtol=rtol, atol=atol)
        ]

    def difference_text(self, other: Geometry, tolerance: float = 1e-4) -> str:
        """What differs, each field as `this vs other`, for an error line."""

        def numbers(values) -> str:
            return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

        return (
            "; ".join(
                f"{name} {numbers(getattr(self, name))} vs {numbers(getattr(other, name))}"
                for name in self.differences(other, tolerance)
            )
            or "grid"
        )


@dataclass
class Volume:
    array: np.ndarray
    geometry: Geometry


def volume_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise TumorFMError(f"{folder}: no DICOM series found in this folder")
    if len(series) > 1:
        raise TumorFMError(f"{folder}: holds {len(series)} DICOM series; put one series per folder")
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    _check_slice_positions(folder, files)
    reader.SetFileNames(files)
    return reader.Execute()


def _check_slice_positions(folder: Path, files: tuple[str, ...]) -> None:
    """Refuse a series with missing or repeated slices. ITK reads one with a warning and spreads
    the slices evenly, so every voxel beyond a gap would sit at the wrong place in the patient."""
    if len(files) < 3:
        return
    positions, normal = [], None
    header = sitk.ImageFileReader()
    for name in files:
        header.SetFileName(name)
        header.ReadImageInformation()
        if not header.HasMetaDataKey("0020|0032"):
            return  # no positions to check (ITK falls back to the file order)
        if normal is None and header.HasMetaDataKey("0020|0037"):
            row_col = [float(v) for v in header.GetMetaData("0020|0037").split("\\")]
            normal = np.cross(row_col[:3], row_col[3:])
        positions.append([float(v) for v in header.GetMetaData("0020|0032").split("\\")])
    along = np.asarray(positions) @ (normal if normal is not None else np.array([0, 0, 1.0]))
    steps = np.abs(np.diff(along))
    typical = float(np.median(steps))
    odd = np.flatnonzero((steps > 1.5 * typical) | (steps < 0.5 * typical))
    if typical > 0 and len(odd):
        i = int(odd[0])
        what = "a gap (missing slices?)" if steps[i] > typical else "two slices at one position"
        raise TumorFMError(
            f"{folder}: slice positions jump by {steps[i]:.3g} mm between {Path(files[i]).name} "
            f"and {Path(files[i + 1]).name} where the series steps {typical:.3g} mm: {what}"
        )


NIFTI_FLOATS = {16: np.float32, 64: np.float64}  # NIfTI datatype code -> dtype


def _nifti_layout(header: bytes) -> tuple[int, int, int, str] | None:
    """(voxel offset, voxel count, datatype, byte order) from a NIfTI-1 or NIfTI-2 header."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            datatype = struct.unpack(order + "h", header[70:72])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            dims = struct.unpack(order + "8q", header[16:80])
            datatype = struct.unpack(order + "h", header[12:14])[0]
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    voxels = int(np.prod([max(int(d), 1) for d in dims[1 : 1 + max(int(dims[0]), 1)]]))
    return offset, voxels, datatype, order


def _verify_complete(path: Path) -> None:
    """Check what ITK lets through: a truncated file, a corrupt gzip stream, NaN/Inf in NIfTI.

    ITK's NIfTI reader fills a truncated file (or a truncated or corrupt gzip stream) with whatever
    it got and reports success, and it silently turns NaN into 0; without this check a damaged
    scan would read as a valid one.
    """
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError, zlib.error) as error:
        raise TumorFMError(f"{path}: corrupt or truncated gzip stream ({error})") from None
    layout = _nifti_layout(data[:540]) if name.endswith((".nii", ".nii.gz")) else None
    if layout is None:
        return
    offset, voxels, datatype, order = layout
    bitpix = struct.unpack(order + "h", data[72:74])[0] if len(data) >= 348 else 0
    needed = offset + voxels * max(bitpix, 8) // 8
    if len(data) < needed:
        raise TumorFMError(f"{path}: truncated NIfTI file ({len(data)} of {needed} bytes)")
    if datatype in NIFTI_FLOATS:
        dtype = np.dtype(NIFTI_FLOATS[datatype]).newbyteorder(order)
        values = np.frombuffer(data, dtype=dtype, count=voxels, offset=offset)
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise TumorFMError(f"{path}: {bad} NaN/Inf voxel(s)")


def _explain_read_failure(path: Path, error: Exception) -> str:
    """Turn ITK's multi-line exception into one line a user can act on."""
    if path.stat().st_size == 0:
        return f"{path}: file is empty"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next(
        (line for line in reversed(lines) if "Description" in line or "ERROR" in line),
        lines[-1] if lines else type(error).__name__,
    )
    detail = re.sub(r"^.*?(Description:|ITK ERROR: \w+\(0x[0-9a-f]+\):)\s*", "", detail)
    return f"{path}: cannot read volume (truncated or not a valid image: {detail})"


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a volume file or a folder holding one DICOM series as a SimpleITK image."""
    path = Path(path)
    if not path.exists():
        raise TumorFMError(f"{path}: no such file or folder")
    if path.is_dir():
        try:
            return _read_dicom_series(path)
        except RuntimeError as error:
            raise TumorFMError(
                f"{path}: unreadable DICOM series ({str(error).splitlines()[-1]})"
            ) from None
    if path.name.lower().endswith((".gz", ".nii")):
        _verify_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise TumorFMError(_explain_read_failure(path, error)) from None


SPACING_MM = (0.01, 100.0)  # a voxel side outside this is a broken header, not a scan


def _nifti_pixdim_problem(path: Path) -> str | None:
    """ITK reads a NIfTI pixdim of 0 (or negative) as 1 mm without a word: read the header."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")) or not path.is_file():
        return None
    try:
        with (gzip.open if name.endswith(".gz") else open)(path, "rb") as file:
            header = file.read(348)
    except (OSError, EOFError, zlib.error):
        return None  # read_image says what is wrong with the file
    if len(header) < 348:
        return None
    order = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    dims = struct.unpack(f"{order}8h", header[40:56])
    pixdim = struct.unpack(f"{order}8f", header[76:108])
    for axis in range(1, min(int(dims[0]), 3) + 1):
        if not np.isfinite(pixdim[axis]) or pixdim[axis] <= 0:
            return f"pixdim[{axis}] is {pixdim[axis]}: the voxel spacing is unknown"
    return None


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a volume into (array, geometry). Vector pixels become a leading channel axis.

    Voxels must be finite: a NaN or Inf would silently poison normalisation and training. The
    spacing must be a voxel size a scanner makes (SPACING_MM): a 0.001 mm or 1e6 mm header would
    ask for a resampled volume of a few voxels or of many gigabytes.
    """
    problem = _nifti_pixdim_problem(Path(path))
    if problem:
        raise TumorFMError(f"{path}: {problem}")
    image = read_image(path)
    spacing = image.GetSpacing()[:3]
    low, high = SPACING_MM
    if not all(low <= s <= high for s in spacing):  # NaN fails too
        shown = ", ".join(f"{s:g}" for s in spacing)
        raise TumorFMError(
            f"{path}: voxel spacing ({shown}) mm is outside {low:g}-{high:g} mm; fix the header"
        )
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise TumorFMError(f"{path}: {bad} NaN/Inf voxel(s)")
    return Volume(array, Geometry.of(image))


def to_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image of `array` (z, y, x) placed on `geometry`."""
    spatial = geometry.spatial()
    expected = tuple(reversed(spatial.size))
    if array.shape != expected:
        raise ValueError(f"array shape {array.shape} does not match geometry {expected} (z, y, x)")
    return spatial.apply_to(sitk.GetImageFromArray(array))


def write_volume(array: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> Path:
    """Write `array` with `geometry`; atomically (temporary name in the same folder, then rename).

    The folder must exist or be creatable; a reader never sees a half-written file.
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None:
        raise TumorFMError(f"{path}: unknown volume type; use one of {', '.join(VOLUME_SUFFIXES)}")
    image = to_image(array, geometry)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name[: -len(suffix)]}.", suffix=suffix, dir=path.parent
        )
        os.close(fd)
    except OSError as error:
        raise TumorFMError(f"{path.parent}: cannot write here ({error.strerror})") from None
    try:
        sitk.WriteImage(image, tmp, useCompression=suffix in (".nii.gz", ".nrrd", ".mha"))
        make_public(tmp)
        os.replace(tmp, path)
    except (RuntimeError, OSError) as error:
        Path(tmp).unlink(missing_ok=True)
        raise TumorFMError(f"{path}: cannot write volume ({str(error).splitlines()[-1]})") from None
    return path
