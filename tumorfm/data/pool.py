"""The pool file: several datasets fused into one training pool (paper, section 2.1).

A YAML file lists the datasets, each with a map from its own label values to global class names
(the label remapping table). From it follow the global class list, the classes each dataset
annotates (the partial-label loss only scores those) and the sampling probability of each case,
proportional to 1/sqrt(n) of its dataset so that small datasets are not drowned out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tumorfm.data.classes import lesion_classes
from tumorfm.data.formats import RawDataset, read_dataset
from tumorfm.data.looks import read_looks
from tumorfm.data.pool_file import DatasetEntry, parse_pool_file
from tumorfm.errors import TumorFMError


@dataclass
class PoolDataset:
    entry: DatasetEntry
    root: Path  # resolved against the pool file's folder
    raw: RawDataset | None  # None when paths were not checked
    num_cases: int

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def annotated(self) -> list[str]:
        return list(self.entry.labels.values())

    @property
    def case_weight(self) -> float:
        return self.entry.case_weight or 1.0 / math.sqrt(self.num_cases)

    @property
    def modalities(self) -> list[str]:
        return self.entry.modalities or (self.raw.modalities if self.raw else [])


@dataclass
class Pool:
    path: Path
    name: str
    classes: list[str]
    datasets: list[PoolDataset]
    parents: dict[str, str] = field(default_factory=dict)
    lesions: list[str] = field(default_factory=list)

    def class_regions(self) -> list[list[int]]:
        """Per global class, the global label values that make up its target region."""
        regions = [[index + 1] for index in range(len(self.classes))]
        for child, parent in self.parents.items():
            ancestor = parent
            while ancestor is not None:
                regions[self.classes.index(ancestor)].append(self.classes.index(child) + 1)
                ancestor = self.parents.get(ancestor)
        return [sorted(region) for region in regions]

    def dataset(self, name: str) -> PoolDataset:
        return next(d for d in self.datasets if d.name == name)

    def case_probability(self, dataset: PoolDataset) -> float:
        """Probability of drawing one given case of `dataset` (all cases sum to 1)."""
        total = sum(d.num_cases * d.case_weight for d in self.datasets)
        return dataset.case_weight / total

    def global_label(self, dataset: PoolDataset) -> dict[int, int]:
        """Local label value -> global label value (class index + 1; 0 stays background)."""
        return {value: self.classes.index(name) + 1 for value, name in dataset.entry.labels.items()}

    def synthesis(self, dataset: PoolDataset) -> dict | None:
        """The dataset's online synthesis with the global label values it paints and reads."""
        spec = dataset.entry.synthesis
        if spec is None:
            return None
        model = spec.model and beside(self.path, spec.model)
        looks = spec.looks and beside(self.path, spec.looks)
        if looks:  # the measured looks themselves, so that the cache holds all it needs
            looks = read_looks(looks)
        return {
            **spec.model_dump(),
            "model": str(model.resolve()) if model else None,
            "looks": looks or None,
            "organ_value": self.classes.index(spec.organ) + 1 if spec.organ else None,
            "tumour_value": self.classes.index(spec.tumour) + 1,
        }

    def summary(self) -> dict:
        return {
            "name": self.name,
            "classes": self.classes,
            "parents": self.parents,
            "lesions": self.lesions,
            "class_regions": self.class_regions(),
            "datasets": [
                {
                    "name": d.name,
                    "path": str(d.root),
                    "modalities": d.modalities,
                    "num_cases": d.num_cases,
                    "annotated": d.annotated,
                    "labels": {str(k): v for k, v in d.entry.labels.items()},
                    "case_probability": self.case_probability(d),
                    "synthesis": self.synthesis(d),
                    "dataset_probability": self.case_probability(d) * d.num_cases,
                }
                for d in self.datasets
            ],
        }


def beside(pool_file: Path, path: Path) -> Path:
    """A path the pool file names: absolute as given, else relative to the pool file's folder."""
    return path if path.is_absolute() else pool_file.parent / path


def _check_against_dataset(path: Path, entry: DatasetEntry, raw: RawDataset) -> None:
    declared = {value for value in raw.labels if value != 0}
    unmapped = sorted(declared - set(entry.labels))
    if unmapped:
        names = ", ".join(f"{v} ({raw.labels[v]})" for v in unmapped)
        raise TumorFMError(
            f"{path}: dataset '{entry.name}': label value(s) {names} of "
            f"{raw.root / 'dataset.json'} have no global name in 'labels'"
        )
    unknown = sorted(set(entry.labels) - declared)
    if unknown:
        raise TumorFMError(
            f"{path}: dataset '{entry.name}': label value(s) {unknown} are not "
            f"declared in {raw.root / 'dataset.json'}"
        )
    if entry.modalities and len(entry.modalities) != len(raw.modalities):
        raise TumorFMError(
            f"{path}: dataset '{entry.name}': {len(entry.modalities)} modalities "
            f"given, the dataset has {len(raw.modalities)} channel(s)"
        )
    if not raw.labelled_cases:
        why = f" ({raw.problems[0]})" if raw.problems else ""
        raise TumorFMError(f"{path}: dataset '{entry.name}': no labelled case in {raw.root}{why}")
    if entry.synthesis and len(raw.modalities) != 1:
        raise TumorFMError(
            f"{path}: dataset '{entry.name}': synthesis handles single-channel scans, the "
            f"dataset has {len(raw.modalities)} channels"
        )
    model = entry.synthesis and entry.synthesis.model
    if model and not beside(path, model).is_dir():
        raise TumorFMError(f"{path}: dataset '{entry.name}': synthesis.model {model} not found")
    spec = entry.synthesis
    looks = spec and spec.looks
    if looks:
        try:
            read_looks(beside(path, looks))
        except TumorFMError as error:
            raise TumorFMError(
                f"{path}: dataset '{entry.name}': synthesis.looks: {error}"
            ) from None
    for name in ("organ_hu", "shift_hu", "texture_hu", "looks"):
        if spec and getattr(spec, name) and raw.modalities[0].upper() != "CT":
            raise TumorFMError(
                f"{path}: dataset '{entry.name}': synthesis.{name} needs CT, the scans are "
                f"{raw.modalities[0]}"
            )


def _classes_of(entry: DatasetEntry) -> list[str]:
    """The global classes a dataset brings: its labels, and the tumour it synthesises."""
    return [*entry.labels.values(), *([entry.synthesis.tumour] if entry.synthesis else [])]


def load_pool(path: str | Path, check_paths: bool = True) -> Pool:
    """Parse and validate a pool file; with `check_paths`, list every dataset on disk too."""
    path = Path(path)
    parsed = parse_pool_file(path)
    names = [entry.name for entry in parsed.datasets]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise TumorFMError(f"{path}: dataset name '{duplicate}' is used twice")
    datasets = []
    for entry in parsed.datasets:
        root = beside(path, entry.path)
        raw = None
        if check_paths:
            if not root.is_dir():
                raise TumorFMError(f"{path}: dataset '{entry.name}': path {root} not found")
            raw = read_dataset(root)
            _check_against_dataset(path, entry, raw)
        num_cases = len(raw.labelled_cases) if raw else entry.num_cases
        if not num_cases:
            raise TumorFMError(
                f"{path}: dataset '{entry.name}': give 'num_cases' when the dataset is not on disk"
            )
        datasets.append(PoolDataset(entry, root.resolve(), raw, num_cases))
    mapped = list(dict.fromkeys(n for entry in parsed.datasets for n in _classes_of(entry)))
    classes = parsed.classes or mapped
    if parsed.classes is not None:
        if len(set(classes)) != len(classes):
            raise TumorFMError(f"{path}: classes: a class is listed twice")
        stray = [n for n in mapped if n not in classes]
        if stray:
            raise TumorFMError(
                f"{path}: classes: '{stray[0]}' is mapped by a dataset but "
                f"missing from 'classes' (a typo?)"
            )
        unused = [n for n in classes if n not in mapped]
        if unused:
            raise TumorFMError(f"{path}: classes: '{unused[0]}' is annotated by no dataset")
    for child, parent in parsed.parents.items():
        for name in (child, parent):
            if name not in classes:
                raise TumorFMError(f"{path}: parents: '{name}' is not a global class")
        seen, ancestor = {child}, parent
        while ancestor in parsed.parents:
            if ancestor in seen:
                raise TumorFMError(f"{path}: parents: '{child}' is its own ancestor")
            seen.add(ancestor)
            ancestor = parsed.parents[ancestor]
    stray = [n for n in parsed.lesions or [] if n not in classes]
    if stray:
        raise TumorFMError(f"{path}: lesions: '{stray[0]}' is not a global class")
    lesions = parsed.lesions
    if lesions is None:
        synthesised = [e.synthesis.tumour for e in parsed.datasets if e.synthesis]
        lesions = lesion_classes(classes, parsed.parents, synthesised)
    return Pool(path, parsed.name, classes, datasets, dict(parsed.parents), list(lesions))
