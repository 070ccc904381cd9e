"""Synthetic tumours written as a dataset: scans with new tumours in an organ, their label maps
with the tumour class added, in the nnU-Net v2 raw layout that `tumorfm check`, pool files and
nnU-Net itself read. Offline, so a user can look at what the network will be shown.

Each scan keeps its geometry and dtype; voxels away from the new tumours are unchanged. The label
map keeps every label of the input and paints the tumour over the organ with a new value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import tumorfm
from tumorfm.data.formats import Case, ChannelFile, read_dataset
from tumorfm.data.io import read_volume, volume_suffix, write_volume
from tumorfm.errors import TumorFMError
from tumorfm.files import atomic_folder, write_json
from tumorfm.synth.procedural import SIZES, synthesise

ENGINES = ("procedural", "diffusion")


@dataclass(frozen=True)
class Source:
    """What to put tumours into: labelled cases, their label names, and their modality."""

    cases: list[Case]
    labels: dict[int, str]  # value -> name, background included
    modality: str  # "CT" or "MR": how the tumour's intensity is set


def source_of(image: Path, labels: Path | None, modality: str | None) -> Source:
    """A dataset folder (nnU-Net v2 raw or MSD; its labelled cases), or one scan with `labels`."""
    if image.is_dir():
        if labels is not None:
            raise TumorFMError(f"{labels}: -l/--labels is for a single scan; {image} is a dataset")
        dataset = read_dataset(image)
        if len(dataset.modalities) != 1:
            raise TumorFMError(
                f"{image}: {len(dataset.modalities)} channels ({', '.join(dataset.modalities)}); "
                "synthesis handles single-channel scans"
            )
        if not dataset.labelled_cases:
            raise TumorFMError(f"{image}: no labelled case to put tumours into")
        guess = "CT" if dataset.modalities[0].upper() == "CT" else "MR"
        return Source(dataset.labelled_cases, dataset.labels, (modality or guess).upper())
    if volume_suffix(image) is None or not image.is_file():
        raise TumorFMError(f"{image}: neither a scan file (.nii.gz, .nrrd, ...) nor a dataset")
    if labels is None:
        raise TumorFMError(f"{image}: a single scan needs its label map (-l/--labels)")
    case_id = image.name[: -len(volume_suffix(image))]
    case = Case(case_id, (ChannelFile(image),), labels)
    return Source([case], {0: "background"}, (modality or "CT").upper())


def organ_label(organ: str, labels: dict[int, str], what: str = "organ") -> tuple[int, str]:
    """(value, name) of `organ`: a label name of the dataset, a value, or NAME=VALUE (which
    names the organ of a single scan, whose label map has no names)."""
    by_name = {name: value for value, name in labels.items() if value}
    if organ in by_name:
        return by_name[organ], organ
    name, _, value = organ.rpartition("=")
    if value.isdigit() and int(value) > 0:
        return int(value), name or labels.get(int(value), "organ")
    known = ", ".join(by_name) or "none (a single scan: give NAME=VALUE, e.g. liver=5)"
    raise TumorFMError(f"{what} '{organ}' is not a label name or value; names: {known}")


def synthesise_dataset(
    source: Source,
    organ: str,
    out: Path,
    tumour: str | None = None,
    engine: str = "procedural",
    count: int = 1,
    size: str = "mixed",
    seed: int = 0,
    mass_effect: bool = False,
    progress: bool = True,
    model: Path | None = None,
    look: dict | None = None,
) -> dict:
    """Write `out` (a new dataset: imagesTr, labelsTr, dataset.json, synthesis.json); returns the
    record. A case whose organ is missing or too small is skipped and named in the record; if
    none can hold a tumour, nothing is written. The diffusion engine needs `model`, a synthesis
    bundle of the scans' modality (`tumorfm synth train`). `look`: the procedural engine's
    shift_hu / texture_hu ranges or its measured `looks` (synth.appearance measures both on real
    tumours)."""
    look = {k: v for k, v in (look or {}).items() if v is not None}
    if look and engine != "procedural":
        raise TumorFMError(f"{', '.join(look)}: the {engine} engine learns its tumours' look")
    make = engine_function(engine, model, source.modality)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TumorFMError(f"seed {seed!r} must be a non-negative integer")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise TumorFMError(f"count {count!r} must be a whole number of tumours, 1 or more")
    if size != "mixed" and size not in SIZES:  # said once, not once per skipped case
        raise TumorFMError(f"size {size!r} is unknown: use one of {', '.join([*SIZES, 'mixed'])}")
    if out.exists():
        raise TumorFMError(f"{out}: already exists; choose a new output folder")
    value, organ_name = organ_label(organ, source.labels)
    tumour = tumour or f"{organ_name}_tumour"
    if tumour in source.labels.values():
        raise TumorFMError(f"tumour class '{tumour}' is already a label of the input; name another")
    settings = dict(organ=organ_name, organ_value=value, tumour=tumour, engine=engine,
                    count=count, size=size, seed=seed, mass_effect=mass_effect,
                    modality=source.modality, model=str(model) if model else None,
                    **{k: list(v) for k, v in look.items() if k != "looks"},
                    looks=len(look["looks"]) if "looks" in look else None)  # fmt: skip
    record = {"tumorfm_version": tumorfm.__version__, "settings": settings, "cases": {}}
    skipped = {}
    with atomic_folder(out) as tmp:
        image_dir, label_dir = tmp / "imagesTr", tmp / "labelsTr"
        image_dir.mkdir()
        label_dir.mkdir()
        tumour_value, present = None, set()
        for index, case in enumerate(
            tqdm(source.cases, desc="synthesise", unit="scan", disable=None if progress else True)
        ):
            scan, label = read_scan_and_label(case)
            if tumour_value is None:
                tumour_value = max([*source.labels, int(label.array.max())]) + 1
            try:
                made = make(scan.array, label.array == value, scan.geometry.spacing_zyx,
                                  seed=_case_seed(seed, index), modality=source.modality,
                                  count=count, size=size, mass_effect=mass_effect,
                                  **look)  # fmt: skip
            except TumorFMError as error:
                if len(source.cases) == 1:
                    raise TumorFMError(f"{case.label}: {error}") from None
                skipped[case.case_id] = str(error)
                continue
            wide = np.iinfo(label.array.dtype).max < tumour_value
            painted = label.array.astype(np.int16) if wide else label.array.copy()
            painted[made.tumour] = tumour_value
            present.update(int(v) for v in np.unique(label.array) if v)
            write_volume(made.image, scan.geometry, image_dir / f"{case.case_id}_0000.nii.gz")
            write_volume(painted, label.geometry, label_dir / f"{case.case_id}.nii.gz")
            record["cases"][case.case_id] = [asdict(t) for t in made.tumours]
        if not record["cases"]:
            reasons = "; ".join(f"{c}: {e}" for c, e in sorted(skipped.items())[:3])
            raise TumorFMError(f"no case could hold a tumour ({reasons})")
        names = {v: f"label_{v}" for v in sorted(present)}  # a single scan's are unnamed
        names |= {v: n for v, n in source.labels.items() if v} | {value: organ_name}
        labels = {"background": 0, **{n: v for v, n in sorted(names.items())}, tumour: tumour_value}
        write_json(
            tmp / "dataset.json",
            {
                "name": out.name,
                "description": f"synthetic {tumour} ({engine}) in {organ_name}, tumorfm",
                "channel_names": {"0": source.modality},
                "labels": labels,
                "numTraining": len(record["cases"]),
                "file_ending": ".nii.gz",
            },
        )
        record["skipped"] = skipped
        write_json(tmp / "synthesis.json", record)
    return record


def engine_function(engine: str, model: Path | None, modality: str):
    """The engine's synthesise(image, organ, spacing, *, seed, ...): procedural, or diffusion
    with a synthesis bundle (MONAI is imported only then)."""
    if engine not in ENGINES:
        raise TumorFMError(f"engine '{engine}': choose {' or '.join(ENGINES)}")
    if engine == "procedural":
        if model is not None:
            raise TumorFMError(f"--model {model}: the procedural engine takes no model")
        return synthesise
    if model is None:
        raise TumorFMError("the diffusion engine needs --model, a bundle of `tumorfm synth train`")
    from tumorfm.synth.diffusion import DiffusionEngine, load_synth_bundle

    return DiffusionEngine(load_synth_bundle(model, modality)).synthesise


def read_scan_and_label(case: Case):
    """The scan (one channel, its own dtype) and the label map, on one grid."""
    channel = case.channels[0]
    scan = read_volume(channel.path)
    if channel.index is not None:
        scan.array = scan.array[channel.index]
        scan.geometry = scan.geometry.spatial()
    label = read_volume(case.label)
    if scan.array.shape != label.array.shape or not scan.geometry.close_to(label.geometry):
        raise TumorFMError(f"{case.label}: label map and scan {channel.path.name} differ in grid")
    if label.array.dtype.kind not in "iu":
        label.array = np.rint(label.array).astype(np.int16)
    return scan, label


def _case_seed(seed: int, index: int) -> int:
    """Each case its own stream, the same whichever cases are skipped."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


__all__ = ["ENGINES", "SIZES", "Source", "organ_label", "source_of", "synthesise_dataset"]
