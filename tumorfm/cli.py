"""The `tumorfm` command: thin sub-commands that parse, call the library and print."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Annotated

import typer

import tumorfm
from tumorfm.errors import TumorFMError

app = typer.Typer(
    help="tumorfm: 3D tumour segmentation with a foundation model (TSFM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
pool_app = typer.Typer(help="Inspect pool files.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")
model_app = typer.Typer(help="Inspect the network presets.", no_args_is_help=True)
app.add_typer(model_app, name="model")

Workers = Annotated[int, typer.Option("--workers", "-w", min=1, help="Worker processes.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tumorfm {tumorfm.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
):
    pass


@app.command()
def info() -> None:
    """Print versions, torch threads and the available devices."""
    import numpy
    import SimpleITK
    import torch

    typer.echo(f"tumorfm     {tumorfm.__version__}")
    typer.echo(f"python      {platform.python_version()} ({sys.executable})")
    typer.echo(f"torch       {torch.__version__} ({torch.get_num_threads()} threads)")
    typer.echo(f"numpy       {numpy.__version__}")
    typer.echo(f"SimpleITK   {SimpleITK.Version.VersionString()}")
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [
            f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())
        ]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    typer.echo(f"devices     {', '.join(devices)}")


@app.command()
def check(
    dataset: Annotated[Path, typer.Argument(help="nnU-Net v2 raw or MSD dataset folder.")],
    workers: Workers = 1,
) -> None:
    """Report every problem of a dataset, one line each; exit 1 if there is any."""
    from tumorfm.data.check import check_dataset

    problems = check_dataset(dataset, workers=workers, progress=True)
    for problem in problems:
        typer.echo(problem)
    if problems:
        typer.echo(f"{dataset}: {len(problems)} problem(s)", err=True)
        raise typer.Exit(1)
    typer.echo(f"{dataset}: no problems found")


@pool_app.command("show")
def pool_show(
    file: Annotated[Path, typer.Argument(help="Pool file (YAML).")],
    check_paths: Annotated[bool, typer.Option(help="List each dataset on disk.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the global label table, the classes each dataset annotates and sampling odds."""
    from tumorfm.data.pool import load_pool

    pool = load_pool(file, check_paths=check_paths)
    summary = pool.summary()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(
        f"pool {pool.name}: {len(pool.datasets)} datasets, {len(pool.classes)} classes, "
        f"{sum(d.num_cases for d in pool.datasets)} cases\n"
    )
    typer.echo("global label  class                      annotated by")
    for index, name in enumerate(pool.classes, start=1):
        owners = [d.name for d in pool.datasets if name in d.annotated]
        if name in pool.parents:
            name = f"{name} (in {pool.parents[name]})"
        typer.echo(f"{index:>12}  {name:<26} {', '.join(owners)}")
    typer.echo("\ndataset                   cases  p(case)    p(dataset)  local -> global")
    for row in summary["datasets"]:
        mapping = ", ".join(f"{k}->{v}" for k, v in row["labels"].items())
        typer.echo(
            f"{row['name']:<25} {row['num_cases']:>5}  {row['case_probability']:.3e}  "
            f"{row['dataset_probability']:>9.3f}   {mapping}"
        )


@model_app.command("list")
def model_list() -> None:
    """List the model presets with their parameter counts."""
    import torch

    from tumorfm.model import create_model, list_models

    for name in list_models():
        with torch.device("meta"):
            count = sum(p.numel() for p in create_model(name).parameters())
        typer.echo(f"{name:<12} {count / 1e6:>10,.1f}M parameters")


@model_app.command("summary")
def model_summary(
    name: Annotated[str, typer.Argument(help="Preset name (see `tumorfm model list`).")],
    patch: Annotated[tuple[int, int, int], typer.Option(help="Patch size z y x.")] = (
        112,
        160,
        192,
    ),
    in_channels: Annotated[int, typer.Option(min=1, help="Input channels.")] = 1,
    classes: Annotated[int, typer.Option(min=1, help="Output classes.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Parameters per part, bottleneck tokens, multiply-adds and activation memory of a preset,
    computed on the meta device (no memory is allocated, even for tsfm-1.6b)."""
    from tumorfm.model import list_models, preset_config
    from tumorfm.model.summary import format_summary, summarize

    if name not in list_models():
        raise TumorFMError(f"unknown model '{name}'; choose one of {', '.join(list_models())}")
    summary = summarize(preset_config(name, in_channels, classes, patch))
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(name, summary))


@app.command()
def preprocess(
    pool_file: Annotated[Path, typer.Argument(help="Pool file (YAML).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Cache folder to write.")],
    workers: Workers = 1,
) -> None:
    """Fingerprint, plan, crop, normalise and resample every case of a pool into a cache."""
    from tumorfm.data.pool import load_pool
    from tumorfm.data.preprocess import preprocess_pool

    report = preprocess_pool(load_pool(pool_file), out, workers=workers, progress=True)
    for name, row in report["datasets"].items():
        spacing = "x".join(f"{s:.3g}" for s in row["target_spacing"])
        patch = "x".join(str(p) for p in row["patch_size"])
        typer.echo(
            f"{name}: {row['written']} written, {row['skipped']} up to date; "
            f"spacing {spacing} mm, patch {patch}"
        )
    typer.echo(f"cache {out} ready in {report['seconds']:.1f} s")


@app.command()
def pretrain(
    cache: Annotated[Path | None, typer.Argument(help="Cache from `tumorfm preprocess`.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder to create.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run exactly.")] = None,
    profile: Annotated[str, typer.Option(help="paper (the paper's recipe) or cpu.")] = "paper",
    model: Annotated[str | None, typer.Option(help="Preset (see `tumorfm model list`).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    iterations: Annotated[int | None, typer.Option(min=1, help="Iterations per epoch.")] = None,
    batch: Annotated[int | None, typer.Option(min=1, help="Global batch size.")] = None,
    patch: Annotated[tuple[int, int, int] | None, typer.Option(help="Patch z y x.")] = None,
    lr: Annotated[float | None, typer.Option(help="Initial learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adamw.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto, bf16, fp16 or fp32.")] = None,
    val_every: Annotated[int | None, typer.Option(min=1, help="Validate every k epochs.")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Loader worker processes.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    checkpointing: Annotated[bool, typer.Option(help="Activation checkpointing.")] = False,
    fsdp: Annotated[bool, typer.Option(help="Shard with FSDP (under torchrun).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    init_from: Annotated[
        Path | None, typer.Option(help="Start from this bundle's weights (head by class name).")
    ] = None,
) -> None:
    """Pretrain TSFM on a preprocessed pool (SGD, Nesterov 0.99, poly lr: the paper's recipe)."""
    from tumorfm.train.trainer import make_config
    from tumorfm.train.trainer import pretrain as run_pretrain

    config = None
    if resume is None:
        config = make_config(
            profile,
            model=model,
            epochs=epochs,
            iterations_per_epoch=iterations,
            batch_size=batch,
            patch_size=patch,
            lr=lr,
            optimizer=optimizer,
            precision=precision,
            val_every=val_every,
            workers=workers,
            seed=seed,
            checkpointing=checkpointing or None,
            fsdp=fsdp or None,
            device=device,
            init_from=str(init_from) if init_from else None,
        )
    row = run_pretrain(cache, out, config, resume)
    if row and os.environ.get("RANK", "0") == "0":
        typer.echo(json.dumps({k: v for k, v in row.items() if k != "val_dice"}))


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise TumorFMError(f"{option} {item}: expected NAME=VALUE")
        pairs[name.strip()] = value.strip()
    return pairs


@app.command()
def finetune(
    dataset: Annotated[Path, typer.Argument(help="nnU-Net v2 raw or MSD dataset folder.")],
    bundle: Annotated[Path, typer.Option("--from", help="Pretrained bundle folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create.")],
    epochs: Annotated[int, typer.Option(min=1, help="Epochs.")] = 10,
    mode: Annotated[str, typer.Option(help="full, decoder, head, adapter or lora.")] = "full",
    iterations: Annotated[int | None, typer.Option(min=1, help="Iterations per epoch.")] = None,
    patch: Annotated[tuple[int, int, int] | None, typer.Option(help="Patch z y x.")] = None,
    lr: Annotated[float | None, typer.Option(help="Initial learning rate.")] = None,
    warmup_epochs: Annotated[int, typer.Option(min=0, help="Train the heads alone first.")] = 0,
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="Rename a class to a bundle class, NAME=BUNDLE_CLASS."),
    ] = None,
    new_head: Annotated[bool, typer.Option(help="Allow heads that all start fresh.")] = False,
    profile: Annotated[str, typer.Option(help="cpu or paper (training settings).")] = "cpu",
    seed: Annotated[int | None, typer.Option()] = None,
    precision: Annotated[str | None, typer.Option(help="auto, bf16, fp16 or fp32.")] = None,
    workers: Workers = 2,
) -> None:
    """Fine-tune a pretrained bundle on a new dataset; the result is a bundle for `predict`."""
    from tumorfm.train.finetune import finetune as run_finetune

    row = run_finetune(
        dataset,
        bundle,
        out,
        epochs=epochs,
        mode=mode,
        mapping=_pairs(map_, "--map"),
        new_head=new_head,
        workers=workers,
        profile=profile,
        iterations_per_epoch=iterations,
        patch_size=patch,
        lr=lr,
        warmup_epochs=warmup_epochs,
        seed=seed,
        precision=precision,
    )
    typer.echo(json.dumps({k: v for k, v in row.items() if k != "val_dice"}))
    typer.echo(f"bundles: {out / 'best'} and {out / 'last'}")


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
    overlap: Annotated[float, typer.Option(help="Sliding-window overlap.")] = 0.5,
    mirror: Annotated[bool, typer.Option(help="Average over the 8 mirrorings.")] = True,
    fast: Annotated[bool, typer.Option(help="No mirroring, windows without overlap.")] = False,
    save_probabilities: Annotated[bool, typer.Option(help="Also write CASE_probabilities.npz.")] = (
        False
    ),
    statistics: Annotated[
        bool, typer.Option(help="Also write CASE_statistics.json (ml, lesions, diameter).")
    ] = False,
    min_lesion_ml: Annotated[
        float, typer.Option(min=0, help="Drop lesions smaller than this (ml).")
    ] = 0.0,
    largest_component: Annotated[
        bool, typer.Option(help="Keep only each organ's largest component.")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or mps.")] = "cpu",
    precision: Annotated[str, typer.Option(help="auto, bf16, fp16 or fp32.")] = "auto",
    windows: Annotated[int, typer.Option(min=1, help="Windows per network call.")] = 4,
) -> None:
    """Segment scans with a model bundle: label maps in each scan's own geometry."""
    from tumorfm.infer.predict import predict_iter
    from tumorfm.infer.predictor import PredictOptions

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
    )
    failed, done = [], 0
    for scan, result in predict_iter(
        input, bundle, out, options, save_probabilities, statistics, progress=True
    ):
        if isinstance(result, TumorFMError):
            failed.append(scan.case_id)
            typer.echo(f"tumorfm: skipped {scan.case_id}: {result}", err=True)
            continue
        done += 1
        total = sum(result.seconds.values())
        typer.echo(f"{scan.case_id}: {total:.1f} s")
    if failed:
        raise TumorFMError(
            f"{len(failed)} of {len(failed) + done} scan(s) could not be segmented "
            f"({', '.join(failed)}); the others are written to {out}"
        )
    typer.echo(f"{done} label map(s) in {out}")


@app.command()
def phantom(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the phantom datasets.")],
    cases: Annotated[int, typer.Option(min=1, help="Cases per site.")] = 8,
    shape: Annotated[tuple[int, int, int], typer.Option(help="Volume shape z y x.")] = (64, 96, 96),
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
) -> None:
    """Write synthetic CT phantom datasets (nnU-Net raw layout) for demos and tests."""
    from tumorfm.data.phantom import write_phantom_pool
    from tumorfm.files import ensure_writable

    ensure_writable(out)
    for folder in write_phantom_pool(
        out, cases_per_site=cases, shape_zyx=shape, seed=seed, progress=True
    ):
        typer.echo(str(folder))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("demo-output"),
    workers: Workers = 2,
    cases: Annotated[int, typer.Option(min=2, help="Phantom cases per site.")] = 8,
    test_cases: Annotated[int, typer.Option(min=1, help="Unseen test cases.")] = 4,
    epochs: Annotated[int, typer.Option(min=1, help="Pretraining epochs.")] = 8,
    finetune_epochs: Annotated[int, typer.Option(min=1, help="Fine-tuning epochs.")] = 8,
    iterations: Annotated[int, typer.Option(min=1, help="Iterations per epoch.")] = 50,
) -> None:
    """Run the pipeline on synthetic phantoms: pretrain, fine-tune on a held-out site, predict,
    evaluate, and write an HTML report."""
    from tumorfm.demo import run_demo

    run_demo(
        out,
        workers=workers,
        cases_per_site=cases,
        test_cases=test_cases,
        epochs=epochs,
        iterations=iterations,
        finetune_epochs=finetune_epochs,
    )


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
) -> None:
    """Score label maps against the ground truth: Dice, HD95, NSD, lesion and patient detection."""
    from tumorfm.eval.evaluate import default_output, format_summary, parse_tolerances
    from tumorfm.eval.evaluate import evaluate as run_evaluate

    out = out or default_output(pred)
    tolerances = parse_tolerances(tolerance or [])
    result = run_evaluate(pred, gt, out, labels, tolerances, default_tolerance, workers)
    typer.echo(format_summary(result))
    typer.echo(f"metrics.json, metrics.csv and summary.md written to {out}")
    if images is not None:
        from tumorfm.eval.report import report_from_evaluation

        title = f"tumorfm evaluation of {pred}"
        page = report_from_evaluation(
            result, images, Path(out) / "report.html", title, [], modality
        )
        typer.echo(f"report: {page}")


def main() -> None:
    try:
        app()
    except TumorFMError as error:
        for line in str(error).splitlines():
            typer.echo(f"tumorfm: error: {line}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("tumorfm: interrupted", err=True)
        sys.exit(130)
