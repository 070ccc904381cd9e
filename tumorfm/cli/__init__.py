"""The `tumorfm` command: thin sub-commands that parse, call the library and print. Each module
adds its commands to the one app (tumorfm.cli.app); errors end in one line and exit code 2."""

from __future__ import annotations

import sys

import typer

from tumorfm.cli import data, infer, synth, train  # noqa: F401  (they register their commands)
from tumorfm.cli.app import app
from tumorfm.errors import TumorFMError


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
