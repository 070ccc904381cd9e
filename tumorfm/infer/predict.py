"""`tumorfm predict`: scans in, label maps (and probabilities, statistics) out.

One case at a time, each written as soon as it is done, so a folder of any size runs in the
memory of its largest scan; a bad scan is reported and skipped, the others are still written.
Beside the label maps: `dataset.json` (label values, nnU-Net style, so `tumorfm evaluate` and
other tools read the names) and `predict.json` (settings, timings and every case's outcome).
With statistics, CASE_statistics.json: volumes, and for the lesion classes (those the bundle
records, or the user names) counts and diameters (tumorfm.infer.postprocess); intensities too.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

import tumorfm
from tumorfm.data.io import VOLUME_SUFFIXES, volume_suffix, write_volume
from tumorfm.errors import TumorFMError
from tumorfm.files import atomic_file, ensure_writable, read_json_object, write_json
from tumorfm.infer.inputs import ScanInput, list_inputs, load_scan
from tumorfm.infer.predictor import CasePrediction, PredictOptions, Predictor


def _names_a_file(scans: list[ScanInput], out: Path) -> bool:
    """OUT may name the label-map file of a single scan, else it is a folder."""
    return len(scans) == 1 and volume_suffix(out) is not None


NOT_FOLDERS = (".txt", ".json", ".csv", ".png", ".jpg", ".npy", ".npz", ".gz", ".zip", ".dcm")


def _targets(scans: list[ScanInput], out: Path) -> tuple[Path, dict[str, Path]]:
    """Output folder and label-map path per case. OUT names a folder unless it is a volume file
    name for a single scan; a file name of another kind (out.txt) is refused, not made a folder."""
    if _names_a_file(scans, out):
        return ensure_writable(out.parent), {scans[0].case_id: out}
    if not out.is_dir() and (volume_suffix(out) or out.suffix.lower() in NOT_FOLDERS):
        if volume_suffix(out):
            raise TumorFMError(f"{out}: one label map's name for {len(scans)} scans; give a folder")
        raise TumorFMError(
            f"{out}: a {out.suffix} file's name; give a folder, or for a single scan a label map "
            f"({', '.join(VOLUME_SUFFIXES)})"
        )
    folder = ensure_writable(out)
    return folder, {scan.case_id: folder / f"{scan.case_id}.nii.gz" for scan in scans}


EXISTING = ("refuse", "overwrite", "continue")  # what to do with an earlier run in the folder


def _earlier_cases(folder: Path, existing: str, settings: dict) -> dict[str, dict]:
    """The finished cases of an earlier run in `folder` that this run keeps (`continue`), after
    refusing to mix runs (`refuse`) or removing the earlier run's own files (`overwrite`)."""
    record = folder / "predict.json"
    if existing not in EXISTING:
        raise TumorFMError(f"existing '{existing}': choose {', '.join(EXISTING)}")
    if not record.is_file():
        return {}
    if existing == "refuse":
        raise TumorFMError(
            f"{folder}: holds an earlier prediction run (predict.json); --overwrite replaces it, "
            "--continue adds the cases it lacks"
        )
    earlier = read_json_object(record, "the record of a prediction run")
    cases = earlier.get("cases") if isinstance(earlier.get("cases"), dict) else {}
    if existing == "overwrite":
        for entry in cases.values():
            for file in (entry.get("files") or {}).values():
                if Path(file).parent.resolve() == folder.resolve():  # its own files only
                    Path(file).unlink(missing_ok=True)
        return {}
    if earlier.get("settings") != json.loads(json.dumps(settings)):
        raise TumorFMError(
            f"{record}: the earlier run used another model, plan or options; --continue needs "
            "the same (or --overwrite)"
        )
    return {
        case: entry
        for case, entry in cases.items()
        if entry.get("files") and all(Path(f).is_file() for f in entry["files"].values())
    }


def write_prediction(result: CasePrediction, label_path: Path) -> dict[str, str]:
    """Write a case's label map and, if present, its probabilities and statistics beside it."""
    files = {"label": str(write_volume(result.label, result.geometry, label_path))}
    stem = label_path.name[: -len(volume_suffix(label_path))]
    if result.probabilities is not None:
        path = label_path.parent / f"{stem}_probabilities.npz"
        with atomic_file(path, suffix=".npz") as tmp:
            classes = np.array(list(result.labels))
            np.savez_compressed(tmp, probabilities=result.probabilities, classes=classes)
        files["probabilities"] = str(path)
    if result.statistics is not None:
        path = label_path.parent / f"{stem}_statistics.json"
        spacing = list(result.geometry.spacing)
        write_json(path, {"case": result.case_id, "spacing": spacing, **result.statistics})
        files["statistics"] = str(path)
    return files


def predict_iter(
    inputs: str | Path | list[ScanInput],
    bundle: str | Path | Predictor,
    out: str | Path | None = None,
    options: PredictOptions | None = None,
    save_probabilities: bool = False,
    statistics: bool = False,
    progress: bool = True,
    existing: str = "refuse",
    lesion_classes: list[str] | None = None,
) -> Iterator[tuple[ScanInput, CasePrediction | TumorFMError]]:
    """Yield (scan, prediction or the error that stopped it) case by case, writing to `out`.
    An output folder holding an earlier run is refused, replaced (`existing="overwrite"`) or
    completed (`"continue"`: its finished cases are kept and not yielded), so predict.json
    always tells what the folder holds. `lesion_classes` overrides the bundle's record of which
    classes are lesions (Predictor.lesion_classes)."""
    if isinstance(bundle, Predictor) and options is not None:
        raise TumorFMError("options go to Predictor.from_bundle: a ready Predictor has its own")
    scans = inputs if isinstance(inputs, list) else list_inputs(inputs)  # a bad path: no load
    predictor = bundle if isinstance(bundle, Predictor) else Predictor.from_bundle(bundle, options)
    if lesion_classes is not None:
        predictor.lesions = predictor.lesion_classes(lesion_classes)
    if predictor.options.largest_component and set(predictor.labels) <= predictor.lesions:
        names = ", ".join(predictor.labels)
        kind = "are lesion classes" if len(predictor.labels) > 1 else "is a lesion class"
        print(  # a tumour may be multifocal: the option leaves lesions as they are
            f"tumorfm: note: --largest-component keeps organs' largest components; "
            f"{names} {kind}, so it changes nothing here",
            file=sys.stderr,
        )
    folder, targets = _targets(scans, Path(out)) if out is not None else (None, {})
    outputs = {"probabilities": save_probabilities, "statistics": statistics}
    settings = {**predictor.settings(), "options": asdict(predictor.options), "outputs": outputs}
    report = {
        "tumorfm_version": tumorfm.__version__,
        "input": str(inputs) if not isinstance(inputs, list) else f"{len(inputs)} scans",
        "settings": settings,
        "cases": {},
    }
    kept = {}
    if folder is not None and not _names_a_file(scans, Path(out)):
        kept = _earlier_cases(folder, existing, settings)
    if folder is not None:
        labels = {"background": 0, **predictor.labels}
        write_json(folder / "dataset.json", {"labels": labels, "file_ending": ".nii.gz"})
    started = time.perf_counter()
    for scan in tqdm(scans, desc="predict", unit="scan", disable=None if progress else True):
        if scan.case_id in kept:
            report["cases"][scan.case_id] = kept[scan.case_id]
            continue
        try:
            image, geometry = load_scan(scan, predictor.in_channels)
            result = predictor(
                image,
                geometry,
                scan.case_id,
                keep_probabilities=save_probabilities,
                statistics=statistics,
                progress=progress,
            )
            del image
            entry = {"input": [str(f) for f in scan.files], "seconds": result.seconds}
            if folder is not None:
                entry["files"] = write_prediction(result, targets[scan.case_id])
            if result.statistics is not None:
                entry["statistics"] = result.statistics
        except TumorFMError as error:
            result, entry = error, {"input": [str(f) for f in scan.files], "error": str(error)}
        report["cases"][scan.case_id] = entry
        if folder is not None:
            report["seconds"] = round(time.perf_counter() - started, 2)
            write_json(folder / "predict.json", report)
        yield scan, result
    if folder is not None:  # also when every case was kept
        report["seconds"] = round(time.perf_counter() - started, 2)
        write_json(folder / "predict.json", report)


def predict(
    inputs: str | Path,
    bundle: str | Path,
    out: str | Path | None = None,
    options: PredictOptions | None = None,
    save_probabilities: bool = False,
    statistics: bool = False,
    progress: bool = True,
    lesion_classes: list[str] | None = None,
) -> dict[str, CasePrediction]:
    """Segment a scan, a folder of scans or a DICOM series; returns the arrays per case (and
    writes them to `out` if given). The first bad scan raises; the command line skips it."""
    results = {}
    for scan, result in predict_iter(
        inputs, bundle, out, options, save_probabilities, statistics, progress,
        lesion_classes=lesion_classes,
    ):  # fmt: skip
        if isinstance(result, TumorFMError):
            raise result
        results[scan.case_id] = result
    return results
