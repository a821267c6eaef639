"""The Typer app object and per-invocation CLI state (shared by the command modules)."""

from __future__ import annotations

from dataclasses import dataclass

import typer
from rich.console import Console
from rich.markup import escape


@dataclass
class CliState:
    debug: bool = False


state = CliState()


def print_warning(console: Console, message: str) -> None:
    """One warning for the user: a yellow label, the message as plain text on one line (it
    may name config fields in brackets, which rich would otherwise read as markup)."""
    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


app = typer.Typer(
    name="autombw",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
