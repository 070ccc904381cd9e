"""What a pool file may say (tumorfm.data.pool derives the pool from it): its YAML schema, checked
field by field so that a misspelt key, a mapped background or a bad synthesis block is a one-line
error naming the field and the dataset."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tumorfm.data.classes import CLASS_NAME
from tumorfm.errors import TumorFMError


class SynthesisEntry(BaseModel):
    """Online synthetic tumours for one dataset: the loader inserts them into sampled patches
    (tumorfm.synth), which then count as annotated for the tumour class."""

    model_config = ConfigDict(extra="forbid")

    organ: str | None = None  # a global class this dataset annotates: where tumours go
    # or, on CT, where no class is annotated: the unlabelled voxels in this HU window (e.g.
    # [-20, 100], muscle and soft tissue, to put sarcomas beside the real ones)
    organ_hu: tuple[float, float] | None = None
    tumour: str = Field(pattern=CLASS_NAME.pattern)  # the global class they are labelled as
    engine: Literal["procedural", "diffusion"] = "procedural"
    model: Path | None = None  # the diffusion engine's bundle (tumorfm synth train)
    probability: float = Field(default=0.5, gt=0, le=1)  # share of this dataset's samples
    size: Literal["tiny", "small", "medium", "large", "mixed"] = "mixed"
    count: int = Field(default=1, ge=1, le=10)  # tumours per synthesised patch
    mass_effect: bool = False
    # procedural on CT: the tumour's mean minus the organ's median, and the std of its texture,
    # drawn from these HU ranges (`tumorfm synth appearance` measures them on real tumours)
    shift_hu: tuple[float, float] | None = None
    texture_hu: tuple[float, float] | None = None
    # or, instead of the ranges, a `tumorfm synth appearance -o` file (relative to the pool
    # file): each tumour takes one measured real tumour's look, its HU distribution included
    looks: Path | None = None


class DatasetEntry(BaseModel):
    """One dataset of the pool, as written in the pool file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path: Path
    labels: dict[int, str]  # local label value -> global class name
    modalities: list[str] | None = None  # overrides dataset.json's channel names
    case_weight: float | None = Field(default=None, gt=0)  # overrides 1/sqrt(n)
    num_cases: int | None = Field(default=None, gt=0)  # expected training cases (documentation)
    # overrides `preprocess --config` for this dataset: a small lesion that a coarser spacing
    # would shrink to a few voxels keeps full resolution inside a lowres pool
    config: Literal["fullres", "lowres"] | None = None
    synthesis: SynthesisEntry | None = None
    description: str = ""

    @field_validator("labels")
    @classmethod
    def _labels_valid(cls, labels: dict[int, str]) -> dict[int, str]:
        if not labels:
            raise ValueError("the dataset annotates no class; map at least one label value")
        if 0 in labels:
            raise ValueError("label 0 is background and must not be mapped")
        for value, name in labels.items():
            if not CLASS_NAME.match(name):
                raise ValueError(
                    f"global class name '{name}' (label {value}) must be lower "
                    f"snake_case, like 'liver_tumour'"
                )
        seen: dict[str, int] = {}
        for value, name in labels.items():
            if name in seen:
                raise ValueError(
                    f"global class '{name}' is mapped twice (labels {seen[name]} "
                    f"and {value}); each global class once per dataset"
                )
            seen[name] = value
        return labels

    @model_validator(mode="after")
    def _synthesis_organ_annotated(self) -> DatasetEntry:
        spec = self.synthesis
        if spec is not None and (spec.organ is None) == (spec.organ_hu is None):
            raise ValueError("synthesis: give either organ (a class) or organ_hu (an HU window)")
        if spec is not None and spec.organ_hu and not spec.organ_hu[0] < spec.organ_hu[1]:
            raise ValueError(f"synthesis: organ_hu {list(spec.organ_hu)} must be [low, high]")
        if spec is not None and spec.organ and spec.organ not in self.labels.values():
            raise ValueError(
                f"synthesis: organ '{spec.organ}' is not a class this dataset annotates "
                f"({', '.join(self.labels.values())})"
            )
        if spec is not None and (spec.engine == "diffusion") != (spec.model is not None):
            raise ValueError("synthesis: the diffusion engine needs a model, procedural none")
        for name in ("shift_hu", "texture_hu"):
            span = spec and getattr(spec, name)
            if span and not (all(map(math.isfinite, span)) and span[0] <= span[1]):
                raise ValueError(f"synthesis: {name} {list(span)} must be finite [low, high]")
            if span and spec.engine != "procedural":
                raise ValueError(f"synthesis: {name} is for the procedural engine")
        if spec and spec.looks and (spec.shift_hu or spec.texture_hu):
            raise ValueError("synthesis: give looks or shift_hu / texture_hu ranges, not both")
        if spec and spec.looks and spec.engine != "procedural":
            raise ValueError("synthesis: looks are for the procedural engine")
        if spec and spec.texture_hu and spec.texture_hu[0] < 0:
            raise ValueError(f"synthesis: texture_hu {list(spec.texture_hu)} is a std, >= 0")
        if spec is not None and spec.tumour == spec.organ:
            raise ValueError(f"synthesis: tumour '{spec.tumour}' must differ from its organ")
        return self


class PoolFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    classes: list[str] | None = None  # global class list in paint order; default: first seen
    # child -> parent: a child's voxels also belong to its parent (a liver tumour is liver), so
    # the parent's target is the region parent + children, as multi-organ datasets draw organs
    parents: dict[str, str] = Field(default_factory=dict)
    # the tumour classes, which bundles record as lesion classes (counted and measured by
    # `predict --statistics`); default: see lesion_classes
    lesions: list[str] | None = None
    datasets: list[DatasetEntry] = Field(min_length=1)


def _field_path(location: tuple, parsed: PoolFile | dict) -> str:
    parts = []
    for item in location:
        parts.append(f"[{item}]" if isinstance(item, int) else f".{item}")
    text = "".join(parts).lstrip(".")
    if len(location) >= 2 and location[0] == "datasets" and isinstance(location[1], int):
        try:
            text += f" (dataset '{parsed['datasets'][location[1]]['name']}')"
        except (KeyError, IndexError, TypeError):
            pass
    return text


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last,
    silently: a pool with two `labels:` would lose the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' given twice (line {key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_pool_file(path: Path) -> PoolFile:
    """The pool file as written, its schema checked: a one-line error names the field."""
    if not path.is_file():
        raise TumorFMError(f"{path}: pool file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise TumorFMError(f"{path}: not a text file (not UTF-8)") from None
    except yaml.YAMLError as error:
        raise TumorFMError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TumorFMError(f"{path}: expected a mapping with 'name' and 'datasets'")
    try:
        return PoolFile.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        where = _field_path(first["loc"], data)
        raise TumorFMError(f"{path}: {where}: {message}") from None
