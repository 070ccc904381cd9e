"""DICOM-SEG and RTSTRUCT out: how a prediction goes back to PACS or a planning system.

Made after `predict` from what its output folder holds (predict.json, the NIfTI label maps), as
the report is: the NIfTI label map is always written, and each DICOM object is made from it, so
the two can never disagree. Only a case read from a DICOM series has instances to reference.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

import tumorfm
from tumorfm.data.io import Geometry, read_volume
from tumorfm.errors import TumorFMError
from tumorfm.files import atomic_file

OUTPUT_TYPES = ("nifti", "dicom-seg", "rtstruct")
SUFFIXES = {"dicom-seg": "_seg.dcm", "rtstruct": "_rtstruct.dcm"}

# SNOMED-CT segmented property types, by class name (side suffixes dropped). The codes are taken
# from pydicom's tables of DICOM PS3.16 (each in CID 7151 "Segmentation Property Types"), never
# typed in by hand; a class not named here gets the generic Tissue code.
ORGAN_KEYWORDS = {
    "liver": "Liver", "kidney": "Kidney", "spleen": "Spleen", "pancreas": "Pancreas",
    "stomach": "Stomach", "gallbladder": "Gallbladder", "lung": "Lung", "brain": "Brain",
    "prostate": "Prostate", "bladder": "Bladder", "urinary_bladder": "Bladder",
    "colon": "Colon", "esophagus": "Esophagus", "duodenum": "Duodenum", "aorta": "Aorta",
    "heart": "Heart", "adrenal_gland": "AdrenalGland", "breast": "Breast",
    "lymph_node": "LymphNode",
}  # fmt: skip


def check_output_types(types: list[str] | None, input: Path) -> list[str]:
    """The DICOM types asked for; refuses an unknown type, and a DICOM type for an input that is
    not a DICOM series, before anything is predicted."""
    from tumorfm.infer.inputs import list_inputs

    types = types or ["nifti"]
    unknown = [t for t in types if t not in OUTPUT_TYPES]
    if unknown:
        raise TumorFMError(
            f"--output-type {unknown[0]}: unknown; choose from {', '.join(OUTPUT_TYPES)}"
        )
    wanted = sorted({t for t in types if t != "nifti"}, key=OUTPUT_TYPES.index)
    if wanted and not all(_is_series(scan.files) for scan in list_inputs(input)):
        raise TumorFMError(
            f"--output-type {wanted[0]}: {input} is not a DICOM series folder; DICOM objects "
            f"reference the instances they were drawn on"
        )
    if "rtstruct" in wanted:
        try:
            import rt_utils  # noqa: F401
        except ImportError:
            raise TumorFMError(
                "--output-type rtstruct needs rt-utils: pip install rt-utils"
            ) from None
    return wanted


def _is_series(files: list[Path]) -> bool:
    return len(files) == 1 and Path(files[0]).is_dir()


def write_dicom_outputs(folder: Path, types: list[str]) -> dict[str, dict[str, str]]:
    """Write each finished case's DICOM objects into `folder` (OUT/<case>_seg.dcm, ...), list
    them in predict.json's case entries, and return {case: {type: path}}."""
    from tumorfm.files import read_json, write_json

    record = read_json(folder / "predict.json")
    settings = record["settings"]
    labels, lesions = settings["labels"], set(settings.get("lesion_classes", []))
    bundle = Path(str(settings.get("bundle", "bundle"))).name
    written = {}
    for case, entry in record["cases"].items():
        files = entry.get("files") or {}
        if "label" not in files or not _is_series(entry.get("input", [])):
            continue
        series, label = Path(entry["input"][0]), read_volume(files["label"])
        instances = source_instances(series, label.geometry)
        for kind in types:
            path = folder / f"{case}{SUFFIXES[kind]}"
            write = write_seg if kind == "dicom-seg" else write_rtstruct
            if write(instances, label.array, labels, lesions, bundle, path, series):
                files[kind] = written.setdefault(case, {})[kind] = str(path)
    write_json(folder / "predict.json", record)
    return written


def source_instances(folder: Path, geometry: Geometry) -> list:
    """The series' instances in SimpleITK's order (the label map's z order), checked by
    geometry: slice k must sit where the label map's slice k sits."""
    import pydicom
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    (series,) = reader.GetGDCMSeriesIDs(str(folder))  # read_volume checked there is one
    files = reader.GetGDCMSeriesFileNames(str(folder), series)
    instances = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    direction = np.asarray(geometry.direction).reshape(3, 3)
    origin, spacing = np.asarray(geometry.origin), np.asarray(geometry.spacing)
    expected_orientation = np.concatenate([direction[:, 0], direction[:, 1]])
    for k, instance in enumerate(instances):
        position = origin + direction[:, 2] * spacing[2] * k
        orientation = np.asarray(instance.ImageOrientationPatient, float)
        if len(instances) != geometry.size[2] or not (
            np.allclose(instance.ImagePositionPatient, position, atol=1e-2)
            and np.allclose(orientation, expected_orientation, atol=1e-4)
        ):
            raise TumorFMError(
                f"{folder}: instance {k + 1} ({Path(files[k]).name}) is not where the label "
                f"map's slice {k + 1} is; the series and the prediction do not match"
            )
    return instances


def _codes(name: str, lesion: bool) -> tuple:
    """(category, type, anatomic regions) of a class: lesions are neoplasms in their organ."""
    from pydicom.sr.codedict import codes

    words = re.sub(r"[_ ](left|right|l|r)$", "", name.lower().replace(" ", "_"))
    organ = ORGAN_KEYWORDS.get(words)
    if lesion:
        site = next((k for k in ORGAN_KEYWORDS if words.startswith(k + "_")), None)
        region = [getattr(codes.SCT, ORGAN_KEYWORDS[site])] if site else None
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, region
    if organ:
        return codes.SCT.AnatomicalStructure, getattr(codes.SCT, organ), None
    return codes.SCT.Tissue, codes.SCT.Tissue, None  # generic: no code of its own here


def _present(label: np.ndarray, labels: dict[str, int]) -> list[tuple[str, int]]:
    """(name, value) of the classes with voxels, in label-value order."""
    values = set(np.unique(label).tolist())
    return sorted(((n, v) for n, v in labels.items() if v in values), key=lambda nv: nv[1])


def _colour(value: int, labels: dict[str, int]) -> tuple[int, int, int]:
    """The class's colour in tumorfm's report (class_colours, indexed by label value)."""
    from tumorfm.data.classes import class_colours

    return tuple(class_colours(max(labels.values(), default=1))[value - 1])


def write_seg(instances, label, labels, lesions, bundle, path, series=None) -> bool:
    """A binary DICOM-SEG, one segment per class present; False when no class is present."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    present = _present(label, labels)
    if not present:
        return False
    algorithm = hd.AlgorithmIdentificationSequence(
        name="tumorfm",
        family=codes.cid7162.ArtificialIntelligence,
        version=tumorfm.__version__,
        parameters={"bundle": bundle},
    )
    segments, numbered = [], np.zeros(label.shape, np.uint16)
    for number, (name, value) in enumerate(present, start=1):
        category, kind, regions = _codes(name, name in lesions)
        segments.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                anatomic_regions=regions,
                display_color=hd.color.CIELabColor.from_rgb(*_colour(value, labels)),
            )
        )
        numbered[label == value] = number  # highdicom numbers segments 1..N
    seg = hd.seg.Segmentation(
        source_images=instances,
        pixel_array=numbered,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(instances[0], "SeriesNumber", None) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="tumorfm",
        manufacturer_model_name=bundle[:64],
        software_versions=tumorfm.__version__,
        device_serial_number="none",
        series_description=f"tumorfm {bundle}"[:64],
        content_description=f"tumorfm {tumorfm.__version__} segmentation"[:64],
        content_label="TUMORFM",
    )
    with atomic_file(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return True


def write_rtstruct(instances, label, labels, lesions, bundle, path, series=None) -> bool:
    """An RTSTRUCT through rt-utils: one ROI (contours per slice) per class present."""
    from rt_utils import RTStructBuilder

    present = _present(label, labels)
    if not present:
        return False
    row, column = map(float, instances[0].PixelSpacing)
    if abs(row - column) > 1e-4 * max(row, column):  # rt-utils swaps them when placing contours
        raise TumorFMError(
            f"{series}: pixels of {row:g} x {column:g} mm; rt-utils places contours right only "
            f"on square pixels, so no RTSTRUCT (use --output-type dicom-seg)"
        )
    with warnings.catch_warnings():  # rt-utils sets attributes pydicom 3 deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        rtstruct = RTStructBuilder.create_new(dicom_series_path=str(series))
    # rt-utils sorts slices its own way: put the label map's slices in its order, by UID
    order = {inst.SOPInstanceUID: k for k, inst in enumerate(instances)}
    slices = [order.get(item.SOPInstanceUID) for item in rtstruct.series_data]
    if None in slices or len(slices) != len(instances):
        raise TumorFMError(f"{series}: rt-utils reads other images than the series' instances")
    for name, value in present:
        mask = np.moveaxis(label[slices] == value, 0, -1)  # (rows, columns, slices)
        rtstruct.add_roi(
            mask=mask,
            color=list(_colour(value, labels)),
            name=name,
            description=f"tumorfm {tumorfm.__version__}, {bundle}",
            approximate_contours=False,
            roi_generation_algorithm=0,  # AUTOMATIC
        )
    rtstruct.ds.SeriesDescription = f"tumorfm {bundle}"[:64]
    with atomic_file(path, suffix=".dcm") as tmp:
        rtstruct.ds.save_as(tmp)
    return True
