"""What `predict` reads: a scan file, a folder of scans, or a folder holding one DICOM series.

A folder's files become cases by name. Files ending in a 4-digit channel suffix (nnU-Net's
`case_0000.nii.gz`, `case_0001.nii.gz`) are the channels of one case; a 4D file holds all channels.
A single file `case_0000.nii.gz` is case `case` too, so its label map pairs with `labelsTr/case`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tumorfm.data.io import Geometry, read_volume, volume_suffix
from tumorfm.errors import TumorFMError

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class ScanInput:
    case_id: str
    files: list[Path]  # one file per channel, or a single (possibly 4D) file or DICOM folder


def _stem(path: Path) -> str:
    suffix = volume_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.name


def list_inputs(path: str | Path) -> list[ScanInput]:
    """The cases under `path`, sorted by case id."""
    path = Path(path)
    if not path.exists():
        raise TumorFMError(f"{path}: no such file or folder")
    if path.is_file():
        if volume_suffix(path) is None:
            raise TumorFMError(
                f"{path}: not a volume file (.nii.gz, .nii, .nrrd, .mha, .mhd) or a DICOM folder"
            )
        match = CHANNEL_SUFFIX.match(_stem(path))  # case_0000 alone: named as in its folder
        single = match["case"] if match and match["channel"] == "0000" else _stem(path)
        return [ScanInput(single, [path])]
    files = sorted(p for p in path.iterdir() if p.is_file() and volume_suffix(p) is not None)
    files = [p for p in files if not p.name.startswith(".")]
    if not files:  # no volume files: a DICOM series, read by SimpleITK
        return [ScanInput(path.name, [path])]
    stems: dict[str, list[Path]] = {}
    for file in files:
        stems.setdefault(_stem(file), []).append(file)
    clash = next((same for same in stems.values() if len(same) > 1), None)
    if clash:
        names = " and ".join(p.name for p in clash)
        raise TumorFMError(
            f"{path}: {names} are one case name in two files; keep one (or rename the other)"
        )
    groups: dict[str, list[Path]] = {}
    matches = [CHANNEL_SUFFIX.match(_stem(p)) for p in files]
    if all(matches):
        for match, file in zip(matches, files):
            groups.setdefault(match["case"], []).append(file)
    else:
        groups = {_stem(p): [p] for p in files}
    return [ScanInput(case, sorted(group)) for case, group in sorted(groups.items())]


def load_scan(scan: ScanInput, channels: int) -> tuple[np.ndarray, Geometry]:
    """The scan as (C, Z, Y, X) float32 and its 3D geometry; checks dimension and channels."""
    arrays, geometry = [], None
    for file in scan.files:
        volume = read_volume(file)
        array = volume.array
        if array.ndim < 3 or min(volume.geometry.size[:3]) <= 1:
            raise TumorFMError(
                f"{file}: a 2D image (size {'x'.join(map(str, volume.geometry.size))}); "
                f"tumorfm segments 3D volumes"
            )
        if array.ndim > 4:
            raise TumorFMError(f"{file}: {array.ndim}D image; expected 3D or 4D (channels)")
        spatial = volume.geometry.spatial()
        if geometry is not None and not spatial.close_to(geometry):
            raise TumorFMError(f"{file}: geometry differs from {scan.files[0]} (same case)")
        geometry = geometry or spatial
        arrays.extend(array if array.ndim == 4 else [array])
    if len(arrays) != channels:
        raise TumorFMError(
            f"{scan.files[0]}: {len(arrays)} channel(s), the model expects {channels}"
            + (" (name channel files case_0000, case_0001, ...)" if channels > 1 else "")
        )
    return np.stack([a.astype(np.float32, copy=False) for a in arrays]), geometry
