"""Commands on data and models: info, check, pool, model, preprocess, phantom, demo."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Annotated

import typer

import tumorfm
from tumorfm.cli.app import Workers, app
from tumorfm.defaults import CPU_PATCH, DEMO_PATCH, PAPER_PATCH
from tumorfm.errors import TumorFMError

pool_app = typer.Typer(help="Inspect pool files.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")
model_app = typer.Typer(
    help="Inspect the network presets and the shipped bundles; calibrate a bundle.",
    no_args_is_help=True,
)
app.add_typer(model_app, name="model")


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
    from tumorfm.data.check import WARNING, check_dataset

    found = check_dataset(dataset, workers=workers, progress=True)
    for line in found:
        typer.echo(line)
    problems = [line for line in found if not line.startswith(WARNING)]
    warned = f" ({len(found) - len(problems)} warning(s))" if len(found) > len(problems) else ""
    if problems:
        typer.echo(f"{dataset}: {len(problems)} problem(s){warned}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{dataset}: no problems found{warned}")


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
        owners += [  # online synthesis annotates the class in that share of a dataset's samples
            f"{d.name} (synthetic, {d.entry.synthesis.probability:g} of samples)"
            for d in pool.datasets
            if d.entry.synthesis and d.entry.synthesis.tumour == name
        ]
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
    """List the presets (parameter counts) and the shipped bundles (use them by name with -m)."""
    import torch

    from tumorfm.model import create_model, list_models
    from tumorfm.model.bundle import list_shipped, models_folder
    from tumorfm.model.shipped import describe

    shipped = list_shipped()
    width = max(len(name) for name in [*list_models(), *shipped])  # one column for both lists
    typer.echo("presets (build with `pretrain --model NAME`):")
    for name in list_models():
        with torch.device("meta"):
            count = sum(p.numel() for p in create_model(name).parameters())
        typer.echo(f"  {name:<{width}} {count / 1e6:>10,.1f}M parameters")
    typer.echo(f"shipped bundles in {models_folder()} (use with `predict -m NAME`):")
    for name in shipped:
        info = describe(name)
        plans = ", ".join(
            f"{dataset} ({plan['configuration']}, "
            + "x".join(f"{s:.3g}" for s in plan["spacing_zyx"])
            + " mm"
            + "".join(f", {c} cut at {t:g}" for c, t in plan["thresholds"].items())
            + ")"
            for dataset, plan in info["plans"].items()
        )
        typer.echo(
            f"  {name:<{width}}  {info['preset']}, {info['megabytes']} MB; classes "
            f"{', '.join(info['classes'])}; plans {plans}"
        )
    if not shipped:
        typer.echo("  none")


@model_app.command("summary")
def model_summary(
    name: Annotated[str, typer.Argument(help="Preset name (see `tumorfm model list`).")],
    patch: Annotated[tuple[int, int, int], typer.Option(help="Patch size z y x.")] = PAPER_PATCH,
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
    if min(patch) < 8:
        raise TumorFMError(f"--patch {' '.join(map(str, patch))}: each axis at least 8 voxels")
    summary = summarize(preset_config(name, in_channels, classes, patch))
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(name, summary))


@model_app.command("calibrate")
def model_calibrate(
    predictions: Annotated[
        Path, typer.Argument(help="A folder of `tumorfm predict --save-probabilities`.")
    ],
    labels: Annotated[Path, typer.Argument(help="The reference label maps of those scans.")],
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="BUNDLE_CLASS=LABEL_CLASS where the names differ (repeatable)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print the thresholds; change neither the bundle nor the folder.")
    ] = False,
) -> None:
    """Choose each class's decision threshold on labelled scans (best mean Dice) and store it in
    the bundle that predicted them: predict, refine and view then use it instead of 0.5."""
    from tumorfm.cli.app import pairs
    from tumorfm.eval.calibrate import calibrate

    record = calibrate(predictions, labels, pairs(map_, "--map"), write=not dry_run)
    for name, c in record["classes"].items():
        volume = ""
        if c["median_volume_ratio"] is not None:
            volume = (f"; volume {c['median_volume_ratio']:.2f}x the reference, median (at 0.50: "
                      f"{c['median_volume_ratio_at_0.5']:.2f}x)")  # fmt: skip
        typer.echo(
            f"{name}: threshold {c['threshold']:.2f}, mean Dice {c['mean_dice']:.3f} over "
            f"{c['cases']} scan(s) (at 0.50: {c['mean_dice_at_0.5']:.3f}){volume}"
        )
    if not dry_run:
        typer.echo(f"stored in {record['bundle']} (plan {record['plan']}); calibration.json "
                   f"written to {predictions}")  # fmt: skip


@app.command()
def preprocess(
    pool_file: Annotated[Path, typer.Argument(help="Pool file (YAML).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Cache folder to write.")],
    workers: Workers = 1,
    config: Annotated[
        str, typer.Option(help="fullres (nnU-Net's 3d_fullres) or lowres (sized for a CPU patch).")
    ] = "fullres",
    patch: Annotated[
        tuple[int, int, int],
        typer.Option(min=1, help="lowres: the patch z y x that should hold most of a case."),
    ] = CPU_PATCH,
) -> None:
    """Fingerprint, plan, crop, normalise and resample every case of a pool into a cache."""
    from tumorfm.data.pool import load_pool
    from tumorfm.data.preprocess import preprocess_pool

    report = preprocess_pool(
        load_pool(pool_file), out, workers=workers, progress=True, config=config, lowres_patch=patch
    )
    for name, row in report["datasets"].items():
        if "note" in row:
            typer.echo(f"note: {row['note']}", err=True)
        spacing = "x".join(f"{s:.3g}" for s in row["target_spacing"])
        patch_text = "x".join(str(p) for p in row["patch_size"])
        removed = f", {row['removed']} removed (not in the pool)" if row["removed"] else ""
        typer.echo(
            f"{name}: {row['written']} written, {row['skipped']} up to date{removed}; "
            f"{row['configuration']}, spacing {spacing} mm, patch {patch_text}"
        )
    typer.echo(f"preprocessed into {out} in {report['seconds']:.1f} s")


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
    epochs: Annotated[int, typer.Option(min=1, help="Pretraining epochs.")] = 6,
    finetune_epochs: Annotated[int, typer.Option(min=1, help="Fine-tuning epochs.")] = 8,
    iterations: Annotated[int, typer.Option(min=1, help="Iterations per epoch.")] = 40,
    patch: Annotated[tuple[int, int, int], typer.Option(help="Patch z y x.")] = DEMO_PATCH,
) -> None:
    """Run the pipeline on synthetic phantoms: pretrain, fine-tune on a held-out site, predict,
    evaluate, and write an HTML report."""
    from tumorfm.workflows.demo import run_demo

    run_demo(
        out,
        workers=workers,
        cases_per_site=cases,
        test_cases=test_cases,
        epochs=epochs,
        iterations=iterations,
        finetune_epochs=finetune_epochs,
        patch_size=patch,
    )
