"""`autombw payload new|show|expand`: create, inspect and expand payload files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autombw_cli.cli._app import app, print_warning

payload_app = typer.Typer(
    help="Create, inspect and expand payloads (what every candidate merge renders).",
    no_args_is_help=True,
)
app.add_typer(payload_app, name="payload")


@payload_app.command("new")
def new_command(
    file: Annotated[Path, typer.Argument(help="File to create (.json, or .yaml/.yml).")],
    prompt: Annotated[str, typer.Option(help="Positive prompt (wildcards allowed).")],
    negative: Annotated[str, typer.Option(help="Negative prompt.")] = "",
    seed: Annotated[int, typer.Option(help="Seed; -1 derives one from the run seed.")] = 1,
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 48,
    cfg_scale: Annotated[float, typer.Option("--cfg", help="CFG scale.")] = 7.0,
    sampler: Annotated[str, typer.Option(help="Sampler name.")] = "Euler a",
    width: Annotated[int, typer.Option(help="Width in pixels.")] = 512,
    height: Annotated[int, typer.Option(help="Height in pixels.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 1,
    n_iter: Annotated[
        int, typer.Option(help="Batches; with wildcards, the number of prompt variants.")
    ] = 1,
    wildcard_type: Annotated[
        str, typer.Option(help="none, random, combinatorial or jinja2.")
    ] = "none",
    score_weight: Annotated[float, typer.Option(help="Weight in the tally.")] = 1.0,
    reverse_scoring: Annotated[
        bool, typer.Option(help="Negate the scores of this payload.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Create a payload file from options (auto-MBW-rt compatible)."""
    from autombw_cli.payloads import new_payload, write_payload

    payload = new_payload(
        prompt=prompt,
        negative_prompt=negative,
        seed=seed,
        steps=steps,
        cfg_scale=cfg_scale,
        sampler_name=sampler,
        width=width,
        height=height,
        batch_size=batch_size,
        n_iter=n_iter,
        wildcard_type=wildcard_type,
        score_weight=score_weight,
        reverse_scoring=reverse_scoring,
    )
    path = write_payload(payload, file, force=force)
    Console(stderr=True).print(f"[green]created[/] {escape(str(path))}", highlight=False)


@payload_app.command("show")
def show_command(
    file: Annotated[Path, typer.Argument(help="Payload file (.json or .yaml).")],
) -> None:
    """Show a payload's fields: autombw's own, txt2img's known ones, and passed-through ones."""
    from autombw_cli.payloads import A1111_TXT2IMG_FIELDS, OWN_FIELDS, load_payload

    payload = load_payload(file)
    table = Table(title=f"payload {escape(payload.name)} ({escape(str(file))})")
    for column in ("field", "value", "used by"):
        table.add_column(column, overflow="fold")
    set_fields = payload.model_fields_set
    for key in ("name", "wildcard_type", "score_weight", "reverse_scoring"):
        default = "" if key in set_fields else " (default)"
        table.add_row(key, escape(repr(getattr(payload, key))), f"autombw{default}")
    extra = payload.model_extra or {}
    for key, value in payload.txt2img_fields().items():
        if key not in OWN_FIELDS:
            if key not in extra:
                kind = "txt2img"
            elif key in A1111_TXT2IMG_FIELDS:
                kind = "txt2img (checked by the WebUI)"
            else:
                kind = "passed through (not an A1111 txt2img field)"
            table.add_row(key, escape(json.dumps(value, ensure_ascii=False)), kind)
    console = Console()
    console.print(table)
    err = Console(stderr=True)
    for warning in payload.warnings():
        print_warning(err, warning)


@payload_app.command("expand")
def expand_command(
    files: Annotated[list[Path], typer.Argument(help="Payload files to expand.")],
    wildcards: Annotated[
        Path | None,
        typer.Option(help="Wildcard folder (default: a wildcards/ folder beside the first file)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Run seed (as search.seed).")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the txt2img bodies as JSON instead.")
    ] = False,
) -> None:
    """Print the prompts and seeds every candidate will render, as a run expands them."""
    from autombw_cli.payloads import default_wildcard_dir, expand_payloads, load_payloads

    folder = wildcards if wildcards is not None else default_wildcard_dir(files[0])
    prompts = expand_payloads(load_payloads(files), folder, seed)
    if as_json:
        typer.echo(json.dumps([p.txt2img_body() for p in prompts], indent=2, ensure_ascii=False))
        return
    derived = any(p.seed_derived for p in prompts)
    table = Table(
        title=f"{len(prompts)} prompt(s), run seed {seed}",
        caption="* seed derived from the run seed (payload seed -1)" if derived else None,
    )
    for column in ("payload", "#", "seed", "images", "prompt", "negative prompt"):
        table.add_column(column, overflow="fold")
    for p in prompts:
        seed_text = f"{p.seed}*" if p.seed_derived else str(p.seed)
        row = (p.payload_name, str(p.index), seed_text, str(p.images), p.prompt, p.negative_prompt)
        table.add_row(*(escape(c) for c in row))
    Console().print(table)
