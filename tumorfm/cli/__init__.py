"""The `tumorfm` command: thin sub-commands that parse, call the library and print. Each module
adds its commands to the one app (tumorfm.cli.app); errors end in one line and exit code 2."""

from __future__ import annotations

import sys

import typer

from tumorfm.cli import data, infer, interactive, synth, train, view  # noqa: F401  (commands)
from tumorfm.cli.app import app
from tumorfm.errors import TumorFMError

try:  # typer >= 0.20 carries its own click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors


def main() -> None:
    try:
        code = app(standalone_mode=False)  # usage errors come here, not into a Rich panel
    except click_errors.NoArgsIsHelpError as error:
        typer.echo(error.ctx.get_help() if error.ctx else str(error))
        sys.exit(2)
    except click_errors.UsageError as error:
        command = error.ctx.command_path if error.ctx else "tumorfm"
        message = " ".join(error.format_message().split())
        typer.echo(f"tumorfm: error: {message} (see `{command} --help`)", err=True)
        sys.exit(error.exit_code)
    except click_errors.ClickException as error:
        typer.echo(f"tumorfm: error: {' '.join(error.format_message().split())}", err=True)
        sys.exit(error.exit_code)
    except TumorFMError as error:
        for line in str(error).splitlines():
            typer.echo(f"tumorfm: error: {line}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("tumorfm: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
