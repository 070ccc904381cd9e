"""Label maps after prediction: optional clean-up and the statistics a clinician reads.

Lesion classes (tumours, the children in the pool's `parents`, or names that say lesion) are
counted as connected components; organs are expected to be one piece. Clean-up is off by
default, as in nnU-Net and TotalSegmentator: it helps organs but can erase a true small lesion.
"""

from __future__ import annotations

import re

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

LESION_WORDS = re.compile(r"tumou?r|lesion|cancer|carcinoma|metasta|nodule|cyst|mass|sarcoma")
CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connected: diagonal neighbours touch


def lesion_classes(classes: list[str], parents: dict[str, str] | None = None) -> set[str]:
    """Classes whose voxels form separate lesions (counted, diameters) rather than one organ."""
    parents = parents or {}
    return {name for name in classes if name in parents or LESION_WORDS.search(name.lower())}


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(component labels, voxel count per component 1..n)."""
    labelled, count = ndimage.label(mask, structure=CONNECTIVITY)
    return labelled, np.bincount(labelled.ravel(), minlength=count + 1)[1:]


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, sizes = components(mask)
    if sizes.size <= 1:
        return mask
    return labelled == int(np.argmax(sizes)) + 1


def remove_small_components(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    labelled, sizes = components(mask)
    keep = np.concatenate([[False], sizes >= min_voxels])
    return keep[labelled]


def postprocess(
    label: np.ndarray,
    values: dict[str, int],
    spacing_zyx,
    lesions: set[str],
    parents: dict[str, str] | None = None,
    min_lesion_ml: float = 0.0,
    largest_organ_component: bool = False,
) -> np.ndarray:
    """Drop lesions below `min_lesion_ml` (their voxels return to the parent organ, if any) and
    keep each organ's largest component."""
    parents = parents or {}
    out = label.copy()
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    for name, value in values.items():
        mask = out == value
        if not mask.any():
            continue
        if name in lesions and min_lesion_ml > 0:
            kept = remove_small_components(mask, min_lesion_ml / voxel_ml)
        elif name not in lesions and largest_organ_component:
            kept = keep_largest_component(mask)
        else:
            continue
        out[mask & ~kept] = values.get(parents.get(name, ""), 0)
    return out


def max_diameter_mm(mask: np.ndarray, spacing_zyx) -> float:
    """Largest distance between two voxel centres of a component (3D Feret diameter) in mm."""
    surface = mask & ~ndimage.binary_erosion(mask)
    points = np.argwhere(surface) * np.asarray(spacing_zyx, dtype=float)
    if len(points) > 4:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # flat or degenerate: all points are needed
            pass
    if len(points) > 4000:  # only for degenerate sets; sample to bound the pairwise cost
        points = points[np.linspace(0, len(points) - 1, 4000).astype(int)]
    differences = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((differences**2).sum(-1).max())) if len(points) > 1 else 0.0


def statistics(
    label: np.ndarray, values: dict[str, int], spacing_zyx, lesions: set[str]
) -> dict[str, dict]:
    """Per class: volume in ml, voxels, connected components; for lesions the largest diameter."""
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    counts = np.bincount(label.ravel().astype(np.int64), minlength=max(values.values()) + 1)
    result = {}
    for name, value in values.items():
        voxels = int(counts[value])
        row = {"volume_ml": round(voxels * voxel_ml, 3), "voxels": voxels}
        if name in lesions:
            labelled, sizes = components(label == value) if voxels else (None, np.zeros(0))
            boxes = ndimage.find_objects(labelled) if voxels else []
            diameters = [  # of the 20 largest lesions: the largest diameter is among them
                max_diameter_mm(labelled[boxes[i]] == i + 1, spacing_zyx)
                for i in np.argsort(sizes)[::-1][:20]
            ]
            row.update(
                lesions=int(sizes.size),
                largest_lesion_ml=round(float(sizes.max(initial=0)) * voxel_ml, 3),
                largest_diameter_mm=round(max(diameters, default=0.0), 2),
            )
        result[name] = row
    return result
