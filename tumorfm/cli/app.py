"""The `tumorfm` Typer app, and what its command modules share: option types and parsers.
Command modules import from here only, never from each other."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from tumorfm.errors import TumorFMError


class _PlainHelp(TyperGroup):
    """The app's command group: help texts are plain text. Rich reads `[word...]` as a style tag
    and drops it (help="Output folder [default: PRED/evaluation]." printed "Output folder ."), so
    every help string of every command is escaped here, once, when the command line is built."""

    def __init__(self, **attrs):
        super().__init__(**attrs)
        _escape_help(self)


def _escape_help(command) -> None:
    """Escape the help of `command`, its options and arguments, then of its sub-commands."""
    from rich.markup import escape

    # without rich, click prints help as plain text: brackets need no escape there
    if getattr(command, "rich_markup_mode", None) == "rich" and not hasattr(command, "_escaped"):
        command._escaped = True
        command.help = command.help and escape(reflow(command.help))
        for param in command.params:
            if getattr(param, "help", None):
                param.help = escape(param.help)
    for sub in getattr(command, "commands", {}).values():
        _escape_help(sub)


def reflow(text: str) -> str:
    """A docstring's paragraphs as one line each: rich keeps every newline, so a docstring wrapped
    at 100 columns printed ragged inside the help's narrower box. Indented lines and list items
    keep their own line."""
    lines = text.split("\n")
    out = lines[:1]
    for line in lines[1:]:
        joins = out[-1].strip() and line.strip() and not line[:1].isspace()
        if joins and not line.lstrip().startswith(("- ", "* ")):
            out[-1] = f"{out[-1].rstrip()} {line.strip()}"
        else:
            out.append(line)
    return "\n".join(out)


app = typer.Typer(
    cls=_PlainHelp,
    help="tumorfm: 3D tumour segmentation with a foundation model (TSFM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Workers = Annotated[int, typer.Option("--workers", "-w", min=1, help="Worker processes.")]
# the training options pretrain, finetune, distill and transfer-study share
Profile = Annotated[str, typer.Option(help="cpu or paper (training settings).")]
Seed = Annotated[int | None, typer.Option()]
Precision = Annotated[str | None, typer.Option(help="auto, bf16, fp16 or fp32.")]
SplitFile = Annotated[
    Path | None, typer.Option(help="Split file: nnU-Net's splits_final.json or a RUN/split.json.")
]
Fold = Annotated[int | None, typer.Option(min=0, help="Fold of the split file's list.")]
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
