"""`tumorfm predict`, `statistics`, `evaluate` and `evaluate-model`: from scans to label maps,
measurements and scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tumorfm.cli.app import Fast, Workers, app, pairs
from tumorfm.errors import TumorFMError


def _names(text: str | None, option: str) -> list[str] | None:
    """A comma-separated option as a list of names, or a one-line error naming the option."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise TumorFMError(f"{option} '{text}': expected names separated by commas")
    return names


def _thresholds(items: list[str] | None) -> dict[str, float]:
    """--threshold CLASS=T options as {class: T}, or a one-line error naming the bad one."""
    found = {}
    for name, text in pairs(items, "--threshold").items():
        try:
            found[name] = float(text)
        except ValueError:
            raise TumorFMError(f"--threshold {name}={text}: not a number") from None
    return found


@app.command("evaluate-model")
def evaluate_model(
    bundle: Annotated[Path, typer.Argument(help="Model bundle folder.")],
    dataset: Annotated[Path, typer.Argument(help="Labelled dataset (nnU-Net v2 raw or MSD).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    plan: Annotated[str | None, typer.Option(help="Dataset plan of a pool bundle.")] = None,
    map_: Annotated[
        list[str] | None, typer.Option("--map", help="NAME=BUNDLE_CLASS (repeatable).")
    ] = None,
    fast: Fast = False,
    workers: Workers = 1,
) -> None:
    """Zero-shot evaluation: predict a labelled dataset with no tuning and score it."""
    from tumorfm.eval.model import evaluate_model as run_evaluation
    from tumorfm.eval.tables import format_summary
    from tumorfm.infer.predictor import PredictOptions

    options = PredictOptions(plan=plan, fast=fast)
    result = run_evaluation(
        bundle, dataset, out, None, pairs(map_, "--map"), options, workers=workers
    )
    typer.echo(format_summary(result))
    typer.echo(f"predictions and scores in {out}")


@app.command()
def predict(
    input: Annotated[
        Path, typer.Option("--input", "-i", help="Scan file, folder of scans, or DICOM folder.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (or .nii.gz file).")],
    bundle: Annotated[Path, typer.Option("--model", "-m", help="Model bundle folder.")],
    plan: Annotated[str | None, typer.Option(help="Dataset plan of a pool bundle.")] = None,
    classes: Annotated[
        list[str] | None, typer.Option("--classes", help="Keep these classes (repeatable).")
    ] = None,
    overlap: Annotated[
        float | None, typer.Option(help="Sliding-window overlap [default: 0.5, 0.25 with --fast].")
    ] = None,
    mirror: Annotated[bool, typer.Option(help="Average over the 8 mirrorings.")] = True,
    fast: Fast = False,
    threshold: Annotated[
        list[str] | None,
        typer.Option(help="CLASS=T: cut this class at T, not at the bundle's (repeatable)."),
    ] = None,
    save_probabilities: Annotated[bool, typer.Option(help="Also write CASE_probabilities.npz.")] = (
        False
    ),
    statistics: Annotated[
        bool,
        typer.Option(help="Also write CASE_statistics.json (ml, lesions, diameters, intensity)."),
    ] = False,
    lesion_classes: Annotated[
        str | None,
        typer.Option(
            "--lesion-classes",
            help="Classes --statistics counts and measures as lesions, comma-separated "
            "[default: the bundle's tumour classes].",
        ),
    ] = None,
    min_lesion_ml: Annotated[
        float, typer.Option(min=0, help="Drop lesions smaller than this (ml).")
    ] = 0.0,
    largest_component: Annotated[
        bool,
        typer.Option(help="Keep only each organ's largest component (lesions stay as they are)."),
    ] = False,
    device: Annotated[
        str, typer.Option(help="auto (cuda, else mps, else cpu), cpu, cuda or mps.")
    ] = ("auto"),
    precision: Annotated[str, typer.Option(help="auto, bf16, fp16 or fp32.")] = "auto",
    windows: Annotated[
        int, typer.Option(min=1, help="Windows per network call (more may pay on a GPU).")
    ] = 1,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier run's results in the output folder.")
    ] = False,
    continue_: Annotated[
        bool,
        typer.Option("--continue", help="Keep an earlier run's finished cases; add the rest."),
    ] = False,
    report: Annotated[
        bool,
        typer.Option(
            help="Also write report.html: each scan and its prediction on a few axial slices, "
            "with the statistics (implies --statistics)."
        ),
    ] = False,
    output_type: Annotated[
        list[str] | None,
        typer.Option(
            "--output-type",
            help="nifti (always written), dicom-seg or rtstruct (repeatable; DICOM input only): "
            "CASE_seg.dcm, CASE_rtstruct.dcm made from the label map.",
        ),
    ] = None,
) -> None:
    """Segment scans with a model bundle: label maps in each scan's own geometry."""
    from tumorfm.infer.allocator import set_allocator

    set_allocator()  # before PyTorch is imported (tumorfm.infer.allocator)
    from tumorfm.infer.dicom_out import check_output_types
    from tumorfm.infer.predict import predict_iter
    from tumorfm.infer.predictor import PredictOptions

    dicom_types = check_output_types(output_type, input)  # refused before anything is predicted

    options = PredictOptions(
        plan=plan,
        classes=classes or None,
        overlap=overlap,
        mirror=mirror,
        fast=fast,
        windows_per_batch=windows,
        device=device,
        precision=precision,
        min_lesion_ml=min_lesion_ml,
        largest_component=largest_component,
        thresholds=_thresholds(threshold),
    )
    if overwrite and continue_:
        raise TumorFMError("--overwrite and --continue: choose one")
    existing = "overwrite" if overwrite else "continue" if continue_ else "refuse"
    failed, done = [], 0
    lesions = _names(lesion_classes, "--lesion-classes")
    statistics = statistics or report
    for scan, result in predict_iter(
        input, bundle, out, options, save_probabilities, statistics, True, existing, lesions
    ):
        if isinstance(result, TumorFMError):
            failed.append(scan.case_id)
            typer.echo(f"tumorfm: skipped {scan.case_id}: {result}", err=True)
            continue
        done += 1
        total = sum(result.seconds.values())
        typer.echo(f"{scan.case_id}: {total:.1f} s")
    if report:
        from tumorfm.eval.report_predict import report_from_prediction

        folder = out if (out / "predict.json").is_file() else out.parent  # OUT may be a file
        typer.echo(f"report: {report_from_prediction(folder)}")
    if dicom_types:
        from tumorfm.infer.dicom_out import write_dicom_outputs

        folder = out if (out / "predict.json").is_file() else out.parent  # OUT may be a file
        for case, files in write_dicom_outputs(folder, dicom_types).items():
            typer.echo(f"{case}: {', '.join(files.values())}")
    if failed:
        raise TumorFMError(
            f"{len(failed)} of {len(failed) + done} scan(s) could not be segmented "
            f"({', '.join(failed)}); "
            + (f"the others are written to {out}" if done else "no label map was written")
        )
    kept = f" ({continued} kept from the earlier run)" if (continued := _kept(out, done)) else ""
    typer.echo(f"{done} label map(s) in {out}{kept}")


def _kept(out: Path, done: int) -> int:
    """Cases the run's record holds beyond those segmented now: kept by --continue."""
    record = out / "predict.json"
    if not record.is_file():
        return 0
    cases = json.loads(record.read_text()).get("cases", {})
    return sum(1 for entry in cases.values() if entry.get("files")) - done


@app.command("statistics")
def statistics_command(
    label_map: Annotated[Path, typer.Argument(help="Label map (NIfTI, NRRD, MHA/MHD).")],
    image: Annotated[
        Path | None,
        typer.Option(help="The scan it was drawn on: mean and std intensity per structure too."),
    ] = None,
    lesion_classes: Annotated[
        str | None,
        typer.Option(
            "--lesion-classes",
            help="Classes to count and measure as lesions, comma-separated [default: by name].",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="dataset.json naming the label values [default: the one beside LABEL_MAP or a "
            "folder above; else class_1, class_2, ... by value]."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="JSON file [default: LABEL_MAP_statistics.json beside it]."
        ),
    ] = None,
) -> None:
    """Volumes, lesion counts, diameters (3D and RECIST axial) and intensities of a label map."""
    from tumorfm.files import ensure_writable, write_json
    from tumorfm.infer.postprocess import format_statistics, label_map_statistics

    lesions = _names(lesion_classes, "--lesion-classes")
    stats = label_map_statistics(label_map, image, lesions, labels)
    if out is None or out.is_dir():
        out = (out or label_map.parent) / f"{stats['case']}_statistics.json"
    ensure_writable(out.parent)
    write_json(out, stats)
    typer.echo(format_statistics(stats))
    typer.echo(f"statistics written to {out}")


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted label map, or a folder of them.")],
    gt: Annotated[Path, typer.Argument(help="Ground-truth label map, or a folder of them.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder [default: PRED/evaluation].")
    ] = None,
    labels: Annotated[
        list[str] | None, typer.Option(help="Score only this class, name or value (repeatable).")
    ] = None,
    tolerance: Annotated[
        list[str] | None, typer.Option(help="NSD tolerance of a class, NAME=MM (repeatable).")
    ] = None,
    default_tolerance: Annotated[
        float, typer.Option(min=0, help="NSD tolerance (mm) of the other classes.")
    ] = 2.0,
    workers: Workers = 1,
    images: Annotated[
        Path | None, typer.Option(help="The scans (file or folder): also write report.html.")
    ] = None,
    modality: Annotated[str, typer.Option(help="Picture window: CT, or anything else.")] = "CT",
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="PRED_CLASS=GT_CLASS where the names differ (repeatable)."),
    ] = None,
    chill: Annotated[
        bool, typer.Option(help="Score only the ground-truth cases that have a prediction.")
    ] = False,
) -> None:
    """Score label maps against the ground truth: Dice, HD95, NSD, lesion and patient detection."""
    from tumorfm.eval.evaluate import default_output, parse_tolerances
    from tumorfm.eval.evaluate import evaluate as run_evaluate
    from tumorfm.eval.tables import format_summary

    out = out or default_output(pred)
    tolerances = parse_tolerances(tolerance or [])
    result = run_evaluate(
        pred, gt, out, labels, tolerances, default_tolerance, workers,
        mapping=pairs(map_, "--map"), chill=chill,
    )  # fmt: skip
    typer.echo(format_summary(result))
    typer.echo(f"metrics.json, metrics.csv and summary.md written to {out}")
    if images is not None:
        from tumorfm.eval.report import report_from_evaluation

        title = f"tumorfm evaluation of {pred}"
        page = report_from_evaluation(
            result, images, Path(out) / "report.html", title, [], modality
        )
        typer.echo(f"report: {page}")
