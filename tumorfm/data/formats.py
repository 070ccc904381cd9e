"""Dataset layouts: nnU-Net v2 raw and the original Medical Segmentation Decathlon (MSD).

Both are read into one case model: a case id, one file reference per input channel, a label file
and the modality of each channel. Listing a dataset never stops at the first problem: layout
problems (a label without an image, a missing channel, a duplicate case id) are collected in
`RawDataset.problems` so `tumorfm check` can report all of them at once.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tumorfm.data.io import Geometry, read_volume, volume_suffix
from tumorfm.errors import TumorFMError
from tumorfm.files import read_json_object


@dataclass(frozen=True)
class ChannelFile:
    """One input channel: a 3D file, or channel `index` of a 4D (MSD) file."""

    path: Path
    index: int | None = None


@dataclass(frozen=True)
class Case:
    case_id: str
    channels: tuple[ChannelFile, ...]
    label: Path | None


@dataclass
class RawDataset:
    root: Path
    name: str
    layout: str  # "nnunet" or "msd"
    modalities: list[str]  # one per input channel, e.g. ["CT"] or ["FLAIR", "T1w", ...]
    labels: dict[int, str]  # label value -> name, background (0) included
    cases: list[Case]
    problems: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # problems no command may go past

    @property
    def labelled_cases(self) -> list[Case]:
        return [case for case in self.cases if case.label is not None and case.channels]


def _load_json(path: Path) -> dict:
    return read_json_object(path, "a dataset folder needs a dataset.json")


def _channel_map(meta: dict, key: str, path: Path) -> list[str]:
    channels = meta.get(key)
    if not isinstance(channels, dict) or not channels:
        raise TumorFMError(f'{path}: \'{key}\' must be a non-empty object like {{"0": "CT"}}')
    try:
        order = sorted(channels, key=int)
    except ValueError:
        raise TumorFMError(f"{path}: '{key}' keys must be channel numbers 0, 1, ...") from None
    if [int(k) for k in order] != list(range(len(order))):
        raise TumorFMError(f"{path}: '{key}' keys must be 0..{len(order) - 1} without gaps")
    return [str(channels[k]) for k in order]


def nnunet_labels(meta: dict, path: Path) -> dict[int, str]:
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise TumorFMError(f"{path}: 'labels' must be an object like {{\"background\": 0}}")
    out: dict[int, str] = {}
    for name, value in labels.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TumorFMError(
                f"{path}: label '{name}' must be an integer value (region-based "
                f"labels are not supported), got {value!r}"
            )
        if value in out:
            raise TumorFMError(
                f"{path}: label value {value} is given twice ('{out[value]}', '{name}')"
            )
        out[value] = str(name)
    return out


def msd_labels(meta: dict, path: Path) -> dict[int, str]:
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise TumorFMError(f'{path}: \'labels\' must be an object like {{"0": "background"}}')
    try:
        return {int(value): str(name) for value, name in labels.items()}
    except ValueError:
        raise TumorFMError(f"{path}: MSD 'labels' keys must be label values 0, 1, ...") from None


def labels_of_either_layout(labels, path: Path) -> dict[int, str]:
    """{value: name} from a 'labels' object of either layout: MSD's {"1": "liver"} or nnU-Net's
    {"liver": 1}."""
    msd = isinstance(labels, dict) and all(str(key).isdigit() for key in labels)
    return (msd_labels if msd else nnunet_labels)({"labels": labels}, path)


def label_names(path: Path, parents: int = 0) -> tuple[Path | None, dict[int, str] | None]:
    """The dataset.json with 'labels' in `path`'s folder or up to `parents` folders above (nnU-Net
    keeps it beside labelsTr): its path and {value: name}."""
    start = path if path.is_dir() else path.parent
    for folder in [start, *start.parents][: parents + 1]:
        file = folder / "dataset.json"
        labels = read_json_object(file, "").get("labels") if file.is_file() else None
        if labels is not None:
            return file, labels_of_either_layout(labels, file)
    return None, None


def _volume_files(folder: Path, ending: str) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.name.endswith(ending) and not p.name.startswith(".")
    )


def _duplicates(ids: list[str]) -> list[str]:
    return sorted(case_id for case_id, count in Counter(ids).items() if count > 1)


def _read_nnunet(root: Path, meta: dict, json_path: Path) -> RawDataset:
    modalities = _channel_map(meta, "channel_names", json_path)
    labels = nnunet_labels(meta, json_path)
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise TumorFMError(f"{json_path}: 'file_ending' must be a string like \".nii.gz\"")
    problems: list[str] = []
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    images: dict[str, dict[int, Path]] = {}
    for path in _volume_files(root / "imagesTr", ending):
        match = pattern.match(path.name)
        if not match:
            problems.append(f"{path}: name does not follow <case>_<XXXX>{ending}")
            continue
        images.setdefault(match.group(1), {})[int(match.group(2))] = path
    labels_by_case = {p.name[: -len(ending)]: p for p in _volume_files(root / "labelsTr", ending)}
    cases = []
    for case_id in sorted(set(images) | set(labels_by_case)):
        found = images.get(case_id, {})
        label = labels_by_case.get(case_id)
        if not found:
            problems.append(f"{label}: label without image (no imagesTr/{case_id}_0000{ending})")
        elif label is None:
            problems.append(
                f"{root / 'imagesTr' / (case_id + '_0000' + ending)}: image without "
                f"label (no labelsTr/{case_id}{ending})"
            )
        missing = [c for c in range(len(modalities)) if c not in found]
        extra = sorted(c for c in found if c >= len(modalities))
        if found and missing:
            problems.append(
                f"{root / 'imagesTr'}/{case_id}: channel(s) {missing} missing; "
                f"dataset.json declares {len(modalities)} channel(s)"
            )
        if extra:
            problems.append(
                f"{found[extra[0]]}: channel {extra[0]:04d} not declared in "
                f"dataset.json channel_names ({len(modalities)} channel(s))"
            )
        channels = tuple(ChannelFile(found[c]) for c in range(len(modalities)) if c in found)
        cases.append(Case(case_id, channels if not missing else (), label))
    if not cases:
        problems.append(f"{root / 'imagesTr'}: no training images ending in {ending}")
    name = str(meta.get("name") or root.name)
    return RawDataset(root, name, "nnunet", modalities, labels, cases, problems)


def _msd_case_id(path: Path) -> str:
    suffix = volume_suffix(path) or path.suffix
    return path.name[: -len(suffix)] if suffix else path.name


def unsafe_case_id(case_id: str) -> bool:
    """A case id becomes a folder name (the cache, predictions): '', '.', '..', a hidden name or
    a path separator would write somewhere else."""
    return not case_id or case_id.startswith(".") or "/" in case_id or "\\" in case_id


def _read_msd(root: Path, meta: dict, json_path: Path) -> RawDataset:
    modalities = _channel_map(meta, "modality", json_path)
    labels = msd_labels(meta, json_path)
    training = meta.get("training")
    if not isinstance(training, list):
        raise TumorFMError(f"{json_path}: 'training' must be a list of {{image, label}} entries")
    problems: list[str] = []
    refused: list[str] = []
    cases = []
    listed_images, listed_labels = set(), set()
    for number, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            problems.append(f"{json_path}: training[{number}] needs 'image' and 'label'")
            continue
        image, label = (root / entry["image"]).resolve(), (root / entry["label"]).resolve()
        listed_images.add(image)
        listed_labels.add(label)
        if not image.is_file():
            problems.append(f"{image}: listed in dataset.json training[{number}] but missing")
        if not label.is_file():
            problems.append(f"{label}: label listed in dataset.json training[{number}] but missing")
        several = len(modalities) > 1
        channels = (
            tuple(ChannelFile(image, c if several else None) for c in range(len(modalities)))
            if image.is_file()
            else ()
        )
        case_id = _msd_case_id(image)
        if unsafe_case_id(case_id):
            refused.append(
                f"{json_path}: training[{number}] image {entry['image']!r} gives case id "
                f"{case_id!r}, which cannot name a folder; rename the file"
            )
            continue
        cases.append(Case(case_id, channels, label if label.is_file() else None))
    for duplicate in _duplicates([case.case_id for case in cases]):
        problems.append(f"{json_path}: case id '{duplicate}' appears more than once in 'training'")
    for path in _volume_files(root / "imagesTr", ""):
        if volume_suffix(path) and path.resolve() not in listed_images:
            problems.append(f"{path}: image not listed in dataset.json 'training' (no label)")
    for path in _volume_files(root / "labelsTr", ""):
        if volume_suffix(path) and path.resolve() not in listed_labels:
            problems.append(f"{path}: label not listed in dataset.json 'training' (no image)")
    if not cases:
        problems.append(f"{json_path}: 'training' lists no cases")
    name = str(meta.get("name") or root.name)
    return RawDataset(root, name, "msd", modalities, labels, cases, problems + refused, refused)


def read_dataset(path: str | Path, refuse: bool = True) -> RawDataset:
    """List a dataset folder in either layout (told apart by its dataset.json keys). A problem
    no command may go past (RawDataset.refused) is a one-line error, unless `refuse` is False
    (`check`, which lists every problem)."""
    raw = _read_layout(Path(path))
    if refuse and raw.refused:
        more = f" (and {len(raw.refused) - 1} more)" if len(raw.refused) > 1 else ""
        raise TumorFMError(f"{raw.refused[0]}{more}")
    return raw


def _read_layout(root: Path) -> RawDataset:
    if not root.is_dir():
        raise TumorFMError(f"{root}: dataset folder not found")
    json_path = root / "dataset.json"
    meta = _load_json(json_path)
    if "channel_names" in meta:
        return _read_nnunet(root, meta, json_path)
    if "modality" in meta and "training" in meta:
        return _read_msd(root, meta, json_path)
    raise TumorFMError(
        f"{json_path}: neither nnU-Net v2 ('channel_names', 'labels', "
        f"'file_ending') nor MSD ('modality', 'training') layout"
    )


def load_channels(case: Case) -> tuple[np.ndarray, Geometry]:
    """The case's image as (C, Z, Y, X) float32 and the 3D geometry of its first channel."""
    arrays, geometry, cache = [], None, {}
    for channel in case.channels:
        if channel.path not in cache:
            cache[channel.path] = read_volume(channel.path)
        volume = cache[channel.path]
        array = volume.array if channel.index is None else volume.array[channel.index]
        if array.ndim != 3:
            raise TumorFMError(
                f"{channel.path}: expected a 3D volume per channel, got "
                f"{volume.array.ndim}D with shape {volume.array.shape}"
            )
        arrays.append(array.astype(np.float32, copy=False))
        geometry = geometry or volume.geometry.spatial()
    return np.stack(arrays), geometry


def load_label(case: Case) -> tuple[np.ndarray, Geometry]:
    volume = read_volume(case.label)
    if volume.array.ndim != 3:
        raise TumorFMError(f"{case.label}: expected a 3D label map, got shape {volume.array.shape}")
    return volume.array, volume.geometry
