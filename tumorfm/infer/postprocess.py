"""Label maps after prediction: optional clean-up and the statistics a clinician reads.

Lesion classes are counted as connected components and measured; organs are expected to be one
piece. A bundle records its lesion classes (its pool's tumour classes, tumorfm.data.classes), the
user may name others (`--lesion-classes`); for a bundle made before they were recorded, and for a
label map made elsewhere, the class names decide (`lesion_classes`). Clean-up is off by default,
as in nnU-Net and TotalSegmentator: it helps organs but can erase a true small lesion.

Diameters are distances between voxel centres (SimpleITK's Feret diameter, found faster over the
convex hull), so they read up to about one voxel shorter than the outer edges a ruler on the
screen would span.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.spatial.distance import cdist

from tumorfm.data import classes as class_rules
from tumorfm.data.formats import label_names, labels_of_either_layout
from tumorfm.errors import TumorFMError
from tumorfm.files import read_json_object

CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connected: diagonal neighbours touch
MAX_LABEL = 65535  # label values of a label map read from a file (uint16)


def lesion_classes(classes, parents: dict[str, str] | None = None) -> set[str]:
    """The classes measured as lesions when nothing records them: those drawn inside a parent
    and those whose name says lesion (tumorfm.data.classes.named_as_lesion)."""
    return set(class_rules.lesion_classes(list(classes), parents or {}))


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


def _image(mask: np.ndarray, spacing_zyx) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in reversed(spacing_zyx)])  # so that sizes come in mm
    return image


def _measured(labels: sitk.Image) -> sitk.LabelShapeStatisticsImageFilter:
    """SimpleITK's shape statistics of each label (voxels, bounding box)."""
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(labels)
    return shapes


def _farthest_pair(points: np.ndarray) -> tuple[int, int, float]:
    """(i, j, distance) of the two points farthest apart. They are vertices of the convex hull,
    so only those are compared: SimpleITK's Feret diameter compares every pair of border voxels
    (the same number, but 60 s for a ball of radius 90 voxels, a large sarcoma). Qhull's joggle
    (QJ) keeps flat and collinear sets (a lesion on one slice) exact too."""
    if len(points) < 2:
        return 0, 0, 0.0
    index = np.arange(len(points))
    if len(points) > points.shape[1] + 1:
        index = ConvexHull(points, qhull_options="QJ").vertices
    ends, best = points[index], (0, 0, -1.0)
    for start in range(0, len(ends), 1024):  # in blocks: a ball's hull has ~10^4 vertices
        squared = cdist(ends[start : start + 1024], ends, "sqeuclidean")
        i, j = np.unravel_index(int(np.argmax(squared)), squared.shape)
        if squared[i, j] > best[2]:
            best = (start + i, j, squared[i, j])
    return int(index[best[0]]), int(index[best[1]]), float(np.sqrt(best[2]))


def max_diameter_mm(mask: np.ndarray, spacing_zyx) -> float:
    """Largest distance between two voxel centres of `mask` (its 3D Feret diameter) in mm."""
    border = mask & ~ndimage.binary_erosion(mask)  # the farthest pair lies on the border
    return _farthest_pair(np.argwhere(border) * np.asarray(spacing_zyx, dtype=float))[2]


def axial_diameters(section: np.ndarray, spacing_yx) -> tuple[float, float]:
    """RECIST's two diameters of one cross-section ((Y, X) mask) in mm: the longest, and the
    longest perpendicular to it. The perpendicular is measured as a radiologist's second line
    would be: the widest spread across the long axis of the pixels whose position along it is
    the same (to the nearest in-plane pixel step)."""
    points = np.argwhere(section) * np.asarray(spacing_yx, dtype=float)
    i, j, longest = _farthest_pair(points)
    if longest == 0.0:
        return 0.0, 0.0
    along = (points[j] - points[i]) / longest
    position, across = points @ along, points @ np.array([-along[1], along[0]])
    steps = np.rint((position - position.min()) / min(spacing_yx)).astype(np.int64)
    high = np.full(steps.max() + 1, -np.inf)
    low = np.full(steps.max() + 1, np.inf)
    np.maximum.at(high, steps, across)
    np.minimum.at(low, steps, across)
    return longest, float(np.max(high - low))


def lesion_measures(mask: np.ndarray, spacing_zyx) -> dict:
    """The lesions of one class: the connected components of `mask` (26-connected, as
    CONNECTIVITY) and, in mm, the largest 3D diameter of any of them and the RECIST 1.1
    measure. RECIST here: of the lesion with the longest diameter on any single axial slice,
    that diameter and the longest perpendicular to it on the same slice. Axial means the array's
    z axis as it is given: `predict` hands over scans reoriented to axial (tumorfm.data.orient),
    and so does `tumorfm statistics`; `axial_slice` is the z index of that array."""
    separate = sitk.ConnectedComponent(_image(mask, spacing_zyx), True)  # fully connected
    shapes, labelled = _measured(separate), sitk.GetArrayViewFromImage(separate)
    found = list(shapes.GetLabels())

    def box(n: int) -> tuple[int, np.ndarray]:
        x, y, z, size_x, size_y, size_z = shapes.GetBoundingBox(n)
        return z, labelled[z : z + size_z, y : y + size_y, x : x + size_x] == n

    feret = {n: max_diameter_mm(box(n)[1], spacing_zyx) for n in found}
    best = (0.0, 0.0, None)  # longest axial, its perpendicular, slice
    # a section is never longer than its lesion: stop at the first lesion that cannot win
    for n in sorted(found, key=feret.get, reverse=True):
        if best[2] is not None and feret[n] <= best[0]:
            break
        z, sections = box(n)
        for offset, section in enumerate(sections):
            longest, perpendicular = axial_diameters(section, spacing_zyx[1:])
            if best[2] is None or longest > best[0]:
                best = (longest, perpendicular, z + offset)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    largest = max((shapes.GetNumberOfPixels(n) for n in found), default=0)
    return {
        "lesions": len(found),
        "largest_lesion_ml": round(largest * voxel_ml, 3),
        "largest_diameter_mm": round(max(feret.values(), default=0.0), 2),
        "longest_axial_diameter_mm": round(best[0], 2),
        "perpendicular_diameter_mm": round(best[1], 2),
        "axial_slice": best[2],
    }


def intensities(label: np.ndarray, values: dict[str, int], image: np.ndarray) -> dict:
    """Per class, the mean and std of the scan inside it (HU on CT): numbers for a (Z, Y, X)
    scan, lists (one per channel) for a (C, Z, Y, X) one; None for an empty class."""
    channels = image[None] if image.ndim == 3 else image
    if channels.shape[1:] != label.shape:
        raise ValueError(f"scan {image.shape} and label map {label.shape} differ in shape")
    boxes = ndimage.find_objects(label, max_label=max(values.values(), default=0))
    single, result = image.ndim == 3, {}
    for name, value in values.items():
        box = boxes[value - 1] if value >= 1 else None
        if box is None:
            result[name] = {"intensity_mean": None, "intensity_std": None}
            continue
        samples = channels[(slice(None), *box)][:, label[box] == value]
        mean = samples.mean(axis=1, dtype=np.float64).round(3).tolist()
        std = samples.std(axis=1, dtype=np.float64).round(3).tolist()
        result[name] = {
            "intensity_mean": mean[0] if single else mean,
            "intensity_std": std[0] if single else std,
        }
    return result


def statistics(
    label: np.ndarray,
    values: dict[str, int],
    spacing_zyx,
    lesions: set[str],
    image: np.ndarray | None = None,
) -> dict[str, dict]:
    """Per class: volume in ml and voxels; for lesion classes the lesion count and measures
    (lesion_measures); with the scan, its mean and std intensity inside (intensities)."""
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    top = max(values.values(), default=0)
    counts = np.bincount(label.ravel().astype(np.int64), minlength=top + 1)
    result = {}
    for name, value in values.items():
        voxels = int(counts[value])
        result[name] = {"volume_ml": round(voxels * voxel_ml, 3), "voxels": voxels}
        if name in lesions:
            result[name].update(lesion_measures(label == value, spacing_zyx))
    if image is not None:
        for name, row in intensities(label, values, image).items():
            result[name].update(row)
    return result


def _class_names(label_map: Path, labels: Path | None) -> tuple[Path | None, dict | None]:
    """{value: name} from `labels` or from the dataset.json beside the label map (or one folder
    above it, as nnU-Net keeps labelsTr)."""
    if labels is None:
        return label_names(label_map, parents=1)
    table = read_json_object(labels, "it names the label values").get("labels")
    if not isinstance(table, dict):
        raise TumorFMError(f"{labels}: no 'labels' object naming the label values")
    return labels, labels_of_either_layout(table, labels)


def label_array(path: Path, array: np.ndarray, top: int = MAX_LABEL) -> np.ndarray:
    """`array` as a label map's whole values (uint8, or uint16 above 255), or a one-line error
    naming `path`: not 3D, fractions, or values outside 0..`top`."""
    if array.ndim != 3:
        raise TumorFMError(f"{path}: a {array.ndim}D image; a label map is one 3D volume")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise TumorFMError(f"{path}: holds non-integer values; not a label map")
    if array.min() < 0 or array.max() > top:
        raise TumorFMError(
            f"{path}: holds the value {array.min() if array.min() < 0 else array.max():g}; "
            f"label values go from 0 to {top}"
        )
    return array.astype(np.uint8 if array.max() < 256 else np.uint16, copy=False)


def label_map_statistics(
    label_map: str | Path,
    image: str | Path | None = None,
    lesions: list[str] | None = None,
    labels: str | Path | None = None,
) -> dict:
    """`statistics` of a label map made elsewhere, as `predict --statistics` writes them: class
    names from `labels` or a dataset.json beside it (else class_1, class_2, ... by value), the
    lesion classes given (else chosen by name), the scan's intensities if `image` is given. A
    scan stored sagittally or coronally is measured as its axial stack (tumorfm.data.orient)."""
    from tumorfm.data.io import read_volume, volume_suffix
    from tumorfm.data.orient import Orientation

    label_map = Path(label_map)
    volume = read_volume(label_map)
    array = label_array(label_map, volume.array)
    present = np.flatnonzero(np.bincount(array.ravel()))
    names_file, names = _class_names(label_map, Path(labels) if labels is not None else None)
    if names is None:
        names = {int(v): f"class_{v}" for v in present if v}
    undeclared = [int(v) for v in present if v and v not in names]
    if undeclared:
        raise TumorFMError(f"{label_map}: label value {undeclared[0]} is not in {names_file}")
    values = {name: value for value, name in sorted(names.items()) if value}
    if lesions is None:
        lesions = lesion_classes(values)
    unknown = [name for name in lesions if name not in values]
    if unknown:
        raise TumorFMError(
            f"lesion class '{unknown[0]}' is not a class of {label_map} "
            f"({', '.join(values) or 'it holds only background'})"
        )
    scan = None
    if image is not None:
        scanned = read_volume(image)
        differences = scanned.geometry.spatial().differences(volume.geometry)
        if differences:
            raise TumorFMError(
                f"{image}: its grid differs from the label map {label_map} in "
                f"{', '.join(differences)}; give the scan the label map was drawn on"
            )
        scan = scanned.array
    orientation = Orientation.of(volume.geometry)
    stats = statistics(
        np.ascontiguousarray(orientation.to_axial(array)),
        values,
        orientation.spacing_zyx(volume.geometry),
        set(lesions),
        None if scan is None else orientation.to_axial(scan),
    )
    suffix = volume_suffix(label_map)
    case = label_map.name[: -len(suffix)] if suffix else label_map.name
    return {"case": case, "spacing": list(volume.geometry.spacing), **stats}


def format_statistics(stats: dict) -> str:
    """The statistics as a table for the terminal; axial: longest x perpendicular (slice)."""
    header = (
        "class",
        "volume ml",
        "lesions",
        "largest ml",
        "max diam mm",
        "axial mm",
        "mean (std)",
    )
    rows = [header]
    for name, row in stats.items():
        if not isinstance(row, dict):  # case, spacing
            continue
        axial = ""
        if row.get("axial_slice") is not None:
            axial = (
                f"{row['longest_axial_diameter_mm']:g} x {row['perpendicular_diameter_mm']:g} "
                f"(z {row['axial_slice']})"
            )
        means, stds = row.get("intensity_mean"), row.get("intensity_std")
        if isinstance(means, list):
            intensity = ", ".join(f"{m:.1f} ({s:.1f})" for m, s in zip(means, stds, strict=True))
        else:
            intensity = "" if means is None else f"{means:.1f} ({stds:.1f})"
        lesion = "lesions" in row
        rows.append((
            name,
            f"{row['volume_ml']:g}",
            str(row["lesions"]) if lesion else "",
            f"{row['largest_lesion_ml']:g}" if lesion else "",
            f"{row['largest_diameter_mm']:g}" if lesion else "",
            axial,
            intensity,
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
