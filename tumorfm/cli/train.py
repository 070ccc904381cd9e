"""`tumorfm pretrain`, `finetune` and `transfer-study`: the training commands."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated

import typer

from tumorfm.cli.app import Fold, Precision, Profile, Seed, SplitFile, Workers, app, pairs
from tumorfm.defaults import CPU_PATCH
from tumorfm.errors import TumorFMError


@app.command()
def pretrain(
    ctx: typer.Context,
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
    precision: Precision = None,
    val_every: Annotated[int | None, typer.Option(min=1, help="Validate every k epochs.")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Loader worker processes.")] = None,
    seed: Seed = None,
    checkpointing: Annotated[bool, typer.Option(help="Activation checkpointing.")] = False,
    fsdp: Annotated[bool, typer.Option(help="Shard with FSDP (under torchrun).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    init_from: Annotated[
        Path | None, typer.Option(help="Start from this bundle's weights (head by class name).")
    ] = None,
    split: SplitFile = None,
    fold: Fold = None,
    placement: Annotated[
        str | None,
        typer.Option(
            help="Where a foreground sample's voxel, and a case smaller than the patch, sit in "
            "the patch: centred (default, nnU-Net's rule) or anywhere (the patch may hang out "
            "of the case by half its size; for scans cropped around their tumour)."
        ),
    ] = None,
) -> None:
    """Pretrain TSFM on a preprocessed pool (SGD, Nesterov 0.99, poly lr: the paper's recipe)."""
    from tumorfm.train.config import make_config
    from tumorfm.train.trainer import pretrain as run_pretrain

    config = None
    if resume is not None:
        _refuse_changes_on_resume(ctx, resume)
    else:
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
            split_file=_existing(split),
            fold=fold,
            placement=placement,
        )
    row = run_pretrain(cache, out, config, resume)
    if os.environ.get("RANK", "0") == "0":
        message = _pretrained(Path(resume or out), row)
        if message:
            typer.echo(message)


def _refuse_changes_on_resume(ctx: typer.Context, resume: Path) -> None:
    """--resume continues a run with the settings it started with (the poly lr follows its
    --epochs, the batches its seed and patch): an option given beside it would be ignored."""
    given = [
        param.opts[0]
        for param in ctx.command.params
        if param.name not in ("resume", "cache")
        and getattr(ctx.get_parameter_source(param.name), "name", "DEFAULT")
        not in ("DEFAULT", "DEFAULT_MAP")
    ]
    if given:
        raise TumorFMError(
            f"{' '.join(given)}: cannot be changed on resume; --resume {resume} continues the run "
            f"exactly as {resume / 'settings.json'} says (to train further, start a new run with "
            f"--init-from {resume / 'last'})"
        )


def _pretrained(run: Path, row: dict) -> str:
    """The end of `pretrain`, in plain words: the epochs done, the validation pseudo-Dice and the
    bundles (RUN/log.jsonl keeps the full rows)."""
    from tumorfm.train.logs import read_rows

    rows = read_rows(run)
    row = row or (rows[-1] if rows else {})
    if "epoch" not in row:
        return ""
    try:
        epochs = f" of {json.loads((run / 'settings.json').read_text())['config']['epochs']}"
    except (OSError, ValueError, KeyError, TypeError):
        epochs = ""
    text = f"{run}: epoch {row['epoch'] + 1}{epochs} done, train loss {row['train_loss']:.4f}"
    scored = [r for r in rows if math.isfinite(r.get("val_mean_dice", math.nan))]
    if scored:
        best = max(scored, key=lambda r: r["val_mean_dice"])  # the first best, as the trainer's
        text += (
            f"; validation pseudo-Dice (mean over classes) {scored[-1]['val_mean_dice']:.3f} at "
            f"epoch {scored[-1]['epoch'] + 1}, best {best['val_mean_dice']:.3f} at epoch "
            f"{best['epoch'] + 1} (per class in {run / 'curves.csv'})"
        )
    if (run / "best" / "config.json").is_file():
        return f"{text}. Bundles: {run / 'best'} (best validation) and {run / 'last'}."
    why = "" if scored else " (no validation score, so no best bundle)"
    return f"{text}. Bundle: {run / 'last'}{why}."


def _existing(path: Path | None) -> str | None:
    """An absolute path (settings.json records it), or a one-line error when it is missing."""
    if path is not None and not path.is_file():
        raise TumorFMError(f"{path}: no such split file")
    return str(path.resolve()) if path is not None else None


def synthesis_option(text: str | None) -> dict | None:
    """--synth ORGAN:TUMOUR[:ENGINE] as a pool file's synthesis block."""
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise TumorFMError(f"--synth {text}: expected ORGAN:TUMOUR or ORGAN:TUMOUR:ENGINE")
    spec = {"tumour": parts[1], **({"engine": parts[2]} if len(parts) == 3 else {})}
    if not parts[0].upper().startswith("HU="):
        return {"organ": parts[0], **spec}
    try:
        low, high = (float(x) for x in parts[0][3:].split(","))
    except ValueError:
        raise TumorFMError(f"--synth {text}: expected HU=LOW,HIGH, e.g. HU=-20,100") from None
    return {"organ_hu": [low, high], **spec}


def _run_settings(workers, profile, iterations, patch, lr, seed, precision, split, fold) -> dict:
    """The options finetune and distill share, as their functions take them."""
    return dict(
        workers=workers,
        profile=profile,
        iterations_per_epoch=iterations,
        patch_size=patch,
        lr=lr,
        seed=seed,
        precision=precision,
        split_file=_existing(split),
        fold=fold,
    )


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
    profile: Profile = "cpu",
    seed: Seed = None,
    precision: Precision = None,
    workers: Workers = 2,
    split: SplitFile = None,
    fold: Fold = None,
    config: Annotated[
        str | None,
        typer.Option(help="fullres or lowres plan for the dataset (default: as the bundle's)."),
    ] = None,
    synth: Annotated[
        str | None,
        typer.Option(
            help="Online synthetic tumours, ORGAN:TUMOUR[:ENGINE] (ORGAN a class, or HU=LOW,HIGH "
            "on CT: unlabelled tissue in that window), in half the samples."
        ),
    ] = None,
    promptable: Annotated[
        bool,
        typer.Option(help="Learn from simulated clicks and boxes: a bundle for `refine`."),
    ] = False,
) -> None:
    """Fine-tune a pretrained bundle on a new dataset; the result is a bundle for `predict`
    (or, with --promptable, for `refine`)."""
    from tumorfm.train.finetune import finetune as run_finetune

    row = run_finetune(
        dataset,
        bundle,
        out,
        epochs=epochs,
        mode=mode,
        mapping=pairs(map_, "--map"),
        new_head=new_head,
        warmup_epochs=warmup_epochs,
        plan_config=config,
        **_run_settings(workers, profile, iterations, patch, lr, seed, precision, split, fold),
        synthesis=synthesis_option(synth),
        promptable=promptable or None,
    )
    typer.echo(json.dumps({k: v for k, v in row.items() if k != "val_dice"}))
    typer.echo(f"bundles: {out / 'best'} and {out / 'last'}")


@app.command()
def distill(
    dataset: Annotated[Path, typer.Argument(help="nnU-Net v2 raw or MSD dataset folder.")],
    teacher: Annotated[Path, typer.Option(help="The bundle that teaches (a big model).")],
    student: Annotated[str, typer.Option(help="The student's preset (`tumorfm model list`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to create.")],
    temperature: Annotated[float, typer.Option(help="Softens both sigmoids (> 0).")] = 2.0,
    alpha: Annotated[
        float, typer.Option(help="Weight of the teacher's term, 0 to 1; the labels get the rest.")
    ] = 0.5,
    features: Annotated[
        bool,
        typer.Option(
            "--features",
            help="The student's bottleneck and decoder stages also learn the "
            "teacher's, through 1x1x1 adapters.",
        ),
    ] = False,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs.")] = 10,
    iterations: Annotated[int | None, typer.Option(min=1, help="Iterations per epoch.")] = None,
    patch: Annotated[tuple[int, int, int] | None, typer.Option(help="Patch z y x.")] = None,
    lr: Annotated[float | None, typer.Option(help="Initial learning rate.")] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="Rename a class to a teacher class, NAME=TEACHER_CLASS."),
    ] = None,
    profile: Profile = "cpu",
    seed: Seed = None,
    precision: Precision = None,
    workers: Workers = 2,
    split: SplitFile = None,
    fold: Fold = None,
    unlabelled: Annotated[
        Path | None,
        typer.Option(
            help="Scans without labels: the teacher labels them and they join the training data.",
            show_default=False,
        ),
    ] = None,
    plan: Annotated[
        str | None, typer.Option(help="The teacher's plan for --unlabelled, if it has several.")
    ] = None,
) -> None:
    """Train a small, fast student preset from scratch on a dataset, taught by a big bundle
    (its softened outputs mixed with the labels); the result is a bundle for `predict`."""
    from tumorfm.train.distill import distill as run_distill

    row = run_distill(
        dataset,
        teacher,
        student,
        out,
        temperature=temperature,
        alpha=alpha,
        features=features,
        epochs=epochs,
        mapping=pairs(map_, "--map"),
        unlabelled=unlabelled,
        teacher_plan=plan,
        **_run_settings(workers, profile, iterations, patch, lr, seed, precision, split, fold),
    )
    typer.echo(json.dumps({k: v for k, v in row.items() if k != "val_dice"}))
    typer.echo(f"bundles: {out / 'best'} and {out / 'last'}")


def _budgets(items: list[str]) -> list[int]:
    try:
        return [int(x) for item in items for x in item.replace(",", " ").split()]
    except ValueError:
        raise TumorFMError(f"--epochs {' '.join(items)}: expected whole numbers") from None


@app.command("transfer-study")
def transfer_study(
    dataset: Annotated[Path, typer.Argument(help="nnU-Net v2 raw or MSD dataset folder.")],
    bundle: Annotated[Path, typer.Option("--from", help="Pretrained bundle folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder.")],
    epochs: Annotated[
        list[str], typer.Option(help="Epoch budgets: --epochs 10,20,50,100 or repeated.")
    ] = ["10,20,50,100"],  # noqa: B006 (typer reads the default, never mutates it)
    iterations: Annotated[int, typer.Option(min=1, help="Iterations per epoch.")] = 50,
    patch: Annotated[tuple[int, int, int], typer.Option(help="Patch z y x.")] = CPU_PATCH,
    map_: Annotated[
        list[str] | None, typer.Option("--map", help="NAME=BUNDLE_CLASS (repeatable).")
    ] = None,
    mirror: Annotated[bool, typer.Option(help="Mirroring when scoring (8x slower).")] = False,
    folds: Annotated[
        int, typer.Option(min=0, help="K-fold cross-validation (0: one fixed 20% hold-out).")
    ] = 0,
    reference: Annotated[
        list[str] | None,
        typer.Option(help="NAME=FOLDER: another tool's predictions of the held-out cases."),
    ] = None,
    profile: Profile = "cpu",
    seed: Seed = None,
    workers: Workers = 2,
) -> None:
    """The paper's transfer study: pretrained vs from scratch at each epoch budget; a
    --reference row scores e.g. nnU-Net v2's predictions of the same held-out cases."""
    from tumorfm.workflows.study import transfer_study as run_study

    rows = run_study(
        dataset,
        bundle,
        out,
        _budgets(epochs),
        iterations,
        patch,
        pairs(map_, "--map"),
        mirror,
        workers,
        references=pairs(reference, "--reference"),
        folds=folds,
        profile=profile,
        seed=seed,
    )
    typer.echo((Path(out) / "transfer.md").read_text())
    typer.echo(f"{len(rows)} runs; table, CSV and plot in {out}")
