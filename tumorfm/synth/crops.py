"""Training crops for the diffusion engine: cubes around the real tumours of one class, cut from
labelled datasets in their own spacing (the engine works on the scan's grid too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from tumorfm.data.formats import read_dataset
from tumorfm.errors import TumorFMError
from tumorfm.synth.dataset import read_scan_and_label
from tumorfm.synth.train_diffusion import tumour_crops


def dataset_crops(
    datasets: list[Path], tumour: str, crop: int, per_case: int, seed: int, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, str]:
    """(images, masks, modality) of `per_case` crops around the tumours of class `tumour` (a
    label name in each dataset.json) in every labelled case; one modality across datasets."""
    jobs, modalities = [], set()
    for folder in datasets:
        dataset = read_dataset(folder)
        values = [v for v, name in dataset.labels.items() if name == tumour and v]
        if not values:
            names = ", ".join(n for v, n in dataset.labels.items() if v)
            raise TumorFMError(f"{folder}: no label named '{tumour}' (its labels: {names})")
        if len(dataset.modalities) != 1:
            raise TumorFMError(f"{folder}: {len(dataset.modalities)} channels; synthesis takes one")
        modalities.add("CT" if dataset.modalities[0].upper() == "CT" else "MR")
        jobs += [(case, values[0]) for case in dataset.labelled_cases]
    if len(modalities) > 1:
        raise TumorFMError("the datasets mix CT and MR: train one synthesis model per modality")
    images, masks = [], []
    bar = tqdm(jobs, desc="crops", unit="case", disable=None if progress else True)
    for index, (case, value) in enumerate(bar):
        scan, label = read_scan_and_label(case)
        if not (label.array == value).any():
            continue  # a case without this tumour
        made = tumour_crops(scan.array, label.array, value, crop, per_case, seed + index,
                            scan.geometry.spacing_zyx)  # fmt: skip
        images.append(made[0])
        masks.append(made[1])
    if not images:
        raise TumorFMError(f"no case holds a '{tumour}' voxel: nothing to learn from")
    return np.concatenate(images), np.concatenate(masks), modalities.pop()
