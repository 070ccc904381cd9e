"""`tumorfm synth`: tumour synthesis from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tumorfm.cli.app import app

synth_app = typer.Typer(help="Synthesise tumours in healthy organs.", no_args_is_help=True)
app.add_typer(synth_app, name="synth")


@synth_app.command()
def tumours(
    image: Annotated[
        Path, typer.Option("--image", "-i", help="A scan, or a dataset (nnU-Net v2 raw or MSD).")
    ],
    organ: Annotated[
        str,
        typer.Option(help="The organ: a label name, a value, or NAME=VALUE for a single scan."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="New dataset folder to write.")],
    labels: Annotated[
        Path | None, typer.Option("--labels", "-l", help="The label map of a single scan.")
    ] = None,
    tumour: Annotated[
        str | None, typer.Option(help="Name of the new class [default: <organ>_tumour].")
    ] = None,
    engine: Annotated[str, typer.Option(help="procedural or diffusion.")] = "procedural",
    model: Annotated[
        Path | None, typer.Option(help="Synthesis bundle for the diffusion engine.")
    ] = None,
    count: Annotated[int, typer.Option(help="Tumours per scan.")] = 1,
    size: Annotated[str, typer.Option(help="tiny, small, medium, large or mixed.")] = "mixed",
    seed: Annotated[int, typer.Option(help="Same seed, same tumours.")] = 0,
    mass_effect: Annotated[
        bool, typer.Option(help="Push the tissue around each tumour outward.")
    ] = False,
    modality: Annotated[
        str | None, typer.Option(help="CT or MR [default: the dataset's channel, CT for a scan].")
    ] = None,
    shift_hu: Annotated[
        str | None,
        typer.Option(help="LOW,HIGH: tumour mean minus organ median, HU (synth appearance)."),
    ] = None,
    texture_hu: Annotated[
        str | None, typer.Option(help="LOW,HIGH: std of the tumour's texture, HU.")
    ] = None,
    looks: Annotated[
        Path | None,
        typer.Option(
            help="A `synth appearance -o` file: each tumour takes one measured real tumour's look "
            "(shift, texture, HU distribution), instead of --shift-hu and --texture-hu.",
        ),
    ] = None,
) -> None:
    """Put new tumours into an organ; write the scans and label maps as a new dataset."""
    from tumorfm.data.looks import read_looks
    from tumorfm.synth.dataset import source_of, synthesise_dataset

    source = source_of(image, labels, modality)
    look = {
        "shift_hu": _span("--shift-hu", shift_hu),
        "texture_hu": _span("--texture-hu", texture_hu),
        "looks": read_looks(looks) if looks is not None else None,
    }
    record = synthesise_dataset(
        source, organ, out, tumour, engine, count, size, seed, mass_effect, model=model, look=look
    )
    made = sum(len(t) for t in record["cases"].values())
    typer.echo(f"{made} {record['settings']['tumour']} in {len(record['cases'])} scans: {out}")
    for case, reason in record["skipped"].items():
        typer.echo(f"skipped {case}: {reason}", err=True)


@synth_app.command()
def appearance(
    image: Annotated[
        Path, typer.Option("--image", "-i", help="A labelled CT dataset (nnU-Net v2 raw or MSD).")
    ],
    tumour: Annotated[str, typer.Option(help="The tumour's label name (or value).")],
    organ: Annotated[
        str | None, typer.Option(help="The tissue it grows in: a label name or value.")
    ] = None,
    organ_hu: Annotated[
        str | None, typer.Option(help="LOW,HIGH: or the unlabelled voxels in this HU window.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the measurements here (JSON).")
    ] = None,
) -> None:
    """Measure how a dataset's real tumours differ from their tissue (mean HU shift, texture,
    HU distribution), for `synth tumours --looks` (or --shift-hu --texture-hu) and a pool's
    synthesis block."""
    from tumorfm.files import write_json
    from tumorfm.synth.appearance import measure
    from tumorfm.synth.dataset import source_of

    window = _span("--organ-hu", organ_hu)
    found = measure(source_of(image, None, None), tumour, organ, window)
    if out is not None:
        write_json(out, found)
    low, high = found["percentiles"]
    typer.echo(f"{found['tumours']} {tumour} tumours, {low}th-{high}th percentiles:")
    typer.echo(f"shift_hu: {found['shift_hu']}\ntexture_hu: {found['texture_hu']}")


def _span(option: str, text: str | None) -> tuple[float, float] | None:
    """'LOW,HIGH' as two numbers, or a one-line error naming the option."""
    from tumorfm.errors import TumorFMError

    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise TumorFMError(f"{option} {text!r}: give two numbers, LOW,HIGH") from None
    if not (abs(low) < float("inf") and abs(high) < float("inf") and low <= high):
        raise TumorFMError(f"{option} {text!r}: LOW,HIGH must be finite with LOW <= HIGH")
    return low, high


@synth_app.command()
def train(
    datasets: Annotated[
        list[Path], typer.Argument(help="Labelled datasets (nnU-Net v2 raw or MSD) with tumours.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")],
    tumour: Annotated[str, typer.Option(help="The tumour's label name in the datasets.")],
    stage: Annotated[str, typer.Option(help="autoencoder, then diffusion.")],
    preset: Annotated[str, typer.Option(help="tiny, small or paper.")] = "tiny",
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 1000,
    crops: Annotated[int, typer.Option(min=1, help="Crops around tumours per case.")] = 8,
    autoencoder: Annotated[
        Path | None, typer.Option(help="Stage 1's bundle (RUN/bundle), for --stage diffusion.")
    ] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
) -> None:
    """Train the latent-diffusion engine on crops around real tumours: its autoencoder, then its
    denoiser; the result (RUN/bundle) is what `synth tumours --engine diffusion --model` takes."""
    from tumorfm.errors import TumorFMError
    from tumorfm.synth.crops import dataset_crops
    from tumorfm.synth.diffusion import PRESETS, DiffusionConfig, load_synth_bundle
    from tumorfm.synth.train_diffusion import train_autoencoder, train_diffusion

    if stage not in ("autoencoder", "diffusion"):
        raise TumorFMError(f"--stage {stage}: choose autoencoder or diffusion")
    if preset not in PRESETS:
        raise TumorFMError(f"--preset {preset}: choose one of {', '.join(PRESETS)}")
    if (stage == "diffusion") != (autoencoder is not None):
        raise TumorFMError("--autoencoder BUNDLE goes with --stage diffusion, and only with it")
    first = load_synth_bundle(autoencoder) if autoencoder else None
    size = first.config.crop if first else DiffusionConfig(preset=preset).crop
    images, masks, modality = dataset_crops(datasets, tumour, size, crops, seed)
    if first is not None:
        if first.config.modality != modality:
            raise TumorFMError(
                f"{autoencoder}: a {first.config.modality} autoencoder for {modality} scans"
            )
        train_diffusion((images, masks), first.autoencoder, first.config, out, steps, seed, resume)
    else:
        config = DiffusionConfig(preset=preset, modality=modality)
        train_autoencoder(images, config, out, steps, seed, resume)
    typer.echo(f"{len(images)} crops of {tumour}; synthesis bundle in {out / 'bundle'}")
