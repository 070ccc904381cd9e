"""The `tumorfm` Typer app, and what its command modules share: option types and parsers.
Command modules import from here only, never from each other."""

from __future__ import annotations

from typing import Annotated

import typer

from tumorfm.errors import TumorFMError

app = typer.Typer(
    help="tumorfm: 3D tumour segmentation with a foundation model (TSFM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Workers = Annotated[int, typer.Option("--workers", "-w", min=1, help="Worker processes.")]
Fast = Annotated[
    bool, typer.Option(help="No mirroring, overlap 0.25 (still blended: no tile seams).")
]


def pairs(items: list[str] | None, option: str) -> dict[str, str]:
    """Repeated NAME=VALUE options as a dict, or a one-line error naming the option."""
    found = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise TumorFMError(f"{option} {item}: expected NAME=VALUE")
        found[name.strip()] = value.strip()
    return found
