"""The Typer app object and per-invocation CLI state (shared by the command modules)."""

from __future__ import annotations

from dataclasses import dataclass

import typer


@dataclass
class CliState:
    debug: bool = False


state = CliState()

app = typer.Typer(
    name="autombw",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
