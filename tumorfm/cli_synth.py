"""`tumorfm synth`: tumour synthesis from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tumorfm.cli import app

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
    engine: Annotated[str, typer.Option(help="procedural.")] = "procedural",
    count: Annotated[int, typer.Option(help="Tumours per scan.")] = 1,
    size: Annotated[str, typer.Option(help="tiny, small, medium, large or mixed.")] = "mixed",
    seed: Annotated[int, typer.Option(help="Same seed, same tumours.")] = 0,
    mass_effect: Annotated[
        bool, typer.Option(help="Push the tissue around each tumour outward.")
    ] = False,
    modality: Annotated[
        str | None, typer.Option(help="CT or MR [default: the dataset's channel, CT for a scan].")
    ] = None,
) -> None:
    """Put new tumours into an organ; write the scans and label maps as a new dataset."""
    from tumorfm.synth.dataset import source_of, synthesise_dataset

    source = source_of(image, labels, modality)
    record = synthesise_dataset(source, organ, out, tumour, engine, count, size, seed, mass_effect)
    made = sum(len(t) for t in record["cases"].values())
    typer.echo(f"{made} {record['settings']['tumour']} in {len(record['cases'])} scans: {out}")
    for case, reason in record["skipped"].items():
        typer.echo(f"skipped {case}: {reason}", err=True)
