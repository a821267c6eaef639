"""`autombw config check FILE` and `autombw config schema`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from autombw_cli.cli._app import app, print_warning

config_app = typer.Typer(
    help="Validate a search config or print its JSON schema.", no_args_is_help=True
)
app.add_typer(config_app, name="config")


@config_app.command("check")
def check_command(
    file: Annotated[Path, typer.Argument(help="The YAML search config to validate.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the resolved config as JSON.")
    ] = False,
) -> None:
    """Validate a config and its payloads; print the resolved config (secrets redacted)."""
    from autombw_cli.config import load_config
    from autombw_cli.payloads import expand_payloads, load_payloads

    cfg = load_config(file)
    payloads = load_payloads(cfg.payloads.files)
    prompts = expand_payloads(payloads, cfg.payloads.wildcards, cfg.search.seed)
    err = Console(stderr=True)
    typer.echo(json.dumps(cfg.redacted_dump(), indent=2) if as_json else cfg.redacted_yaml())
    for warning in [*cfg.warnings(), *(w for p in payloads for w in p.warnings())]:
        print_warning(err, warning)
    images = sum(p.images for p in prompts)
    err.print(
        f"[green]ok:[/] {file}: {len(payloads)} payload(s), {len(prompts)} prompt(s), "
        f"{images} image(s) per evaluation",
        highlight=False,
    )


@config_app.command("schema")
def schema_command() -> None:
    """Print the JSON schema of the config file (point your editor's YAML support at it)."""
    from autombw_cli.config import config_json_schema

    typer.echo(json.dumps(config_json_schema(), indent=2))
