"""How real tumours look against their tissue, measured, so procedural ones can copy it.

Hu et al.'s recipe makes liver tumours 30-80 HU darker than the liver, right for hypodense
metastases, wrong for most other tumours: a soft-tissue sarcoma is nearly as dense as the muscle
around it, and benchmarks/synth.py found recipe sarcomas far too dark (two-sample AUC 0.99).
Here each labelled tumour gives two numbers, in the units procedural.synthesise takes:

- shift: its mean HU minus the median HU of its tissue in a shell around it (3-15 mm out);
- texture: the standard deviation of its HU smoothed over one voxel (scan noise taken out, as the
  engine keeps the scan's own noise and adds a smooth texture on top);
- quantiles: that smoothed HU's distribution, standardised (data.looks.QUANTILES): real
  sarcomas hold fat, necrosis or calcification; their tails tell them from a Gaussian texture.

The ranges handed to the engine are the 10th-90th percentiles over tumours.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from tumorfm.data.looks import QUANTILES
from tumorfm.errors import TumorFMError
from tumorfm.synth.dataset import Source, organ_label, read_scan_and_label
from tumorfm.synth.online import hu_window_organ
from tumorfm.synth.procedural import SHELL_MM

MIN_VOXELS = 50  # tumour and shell voxels below which a case says nothing
PERCENTILES = (10, 90)


def tumour_appearance(hu, tumour, tissue, spacing_zyx) -> dict | None:
    """The look of one tumour (bool mask) against `tissue` (bool mask) on a CT scan: shift_hu,
    texture_hu and quantiles, as procedural.synthesise's `looks` take them; None when the
    tumour or its shell of tissue (SHELL_MM outside it) is too small to say."""
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    hu = np.asarray(hu, dtype=np.float32)
    if tumour.sum() < MIN_VOXELS:
        return None
    reach = np.ceil(SHELL_MM[1] / spacing).astype(int) + 1
    where = np.nonzero(tumour)
    lo = np.maximum([w.min() - r for w, r in zip(where, reach)], 0)
    hi = np.minimum([w.max() + 1 + r for w, r in zip(where, reach)], hu.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    inside = tumour[box]
    dist = ndimage.distance_transform_edt(~inside, sampling=spacing)
    shell = tissue[box] & ~inside & (dist >= SHELL_MM[0]) & (dist <= SHELL_MM[1])
    core = ndimage.binary_erosion(inside)
    if shell.sum() < MIN_VOXELS or core.sum() < MIN_VOXELS:
        return None
    local = hu[box]
    smooth = ndimage.gaussian_filter(local, 1.0)
    shift = float(local[inside].mean() - np.median(local[shell]))
    values = smooth[core]
    texture = float(values.std())
    standard = (values - values.mean()) / (texture or 1.0)
    quantiles = [round(float(q), 4) for q in np.percentile(standard, QUANTILES)]
    return {"shift_hu": shift, "texture_hu": texture, "quantiles": quantiles}


def measure(
    source: Source, tumour: str, organ: str | None = None, organ_hu=None, progress: bool = True
) -> dict:
    """The appearance of the `tumour` class over a labelled CT dataset, against the `organ`
    class or, where none is annotated, the unlabelled voxels in the `organ_hu` window (as a
    pool's synthesis block has them). Returns the ranges and each case's numbers."""
    if source.modality != "CT":
        raise TumorFMError(
            f"appearance is measured in HU: CT only, the scans are {source.modality}"
        )
    if (organ is None) == (organ_hu is None):
        raise TumorFMError("give the tumour's tissue as --organ (a class) or --organ-hu LOW,HIGH")
    tumour_value, _ = organ_label(tumour, source.labels, "tumour")
    organ_value = organ_label(organ, source.labels)[0] if organ is not None else None
    cases = {}
    for case in tqdm(
        source.cases, desc="appearance", unit="scan", disable=None if progress else True
    ):
        scan, label = read_scan_and_label(case)
        spacing = scan.geometry.spacing_zyx
        if organ_value is not None:
            tissue = label.array == organ_value
        else:
            tissue = hu_window_organ(scan.array, label.array == 0, organ_hu, spacing)
        found = tumour_appearance(scan.array, label.array == tumour_value, tissue, spacing)
        if found is not None:
            cases[case.case_id] = found
    if not cases:
        raise TumorFMError(f"no case has a '{tumour}' with enough tissue around it to measure")
    return {**ranges(cases.values()), "tumours": len(cases), "percentiles": list(PERCENTILES),
            "cases": cases}  # fmt: skip


def ranges(found) -> dict[str, list[float]]:
    """The engine's shift_hu and texture_hu ranges from tumours' {"shift_hu", "texture_hu"}."""
    found = list(found)
    out = {
        key: [round(float(v), 1) for v in np.percentile([f[key] for f in found], PERCENTILES)]
        for key in ("shift_hu", "texture_hu")
    }
    out["texture_hu"][0] = max(out["texture_hu"][0], 0.0)
    return out
