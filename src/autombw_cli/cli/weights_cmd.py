"""`autombw weights ...`: convert weights between orderings, list presets."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from autombw_cli.blocks import Arch, Ordering, Weights, format_weight, parse_weights
from autombw_cli.cli._app import app
from autombw_cli.presets import load_presets

weights_app = typer.Typer(
    help="Convert block weights between the orderings old tools use; list presets.",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


class TargetForm(StrEnum):
    RECIPE = "recipe"
    NAT = "nat"
    BLOCKS = "blocks"
    NAMED = "named"
    JSON = "json"


def convert_weights(weights: Weights, to: TargetForm) -> str:
    """One weights value in a written form (`blocks` puts BASE first when it is set)."""
    if to is TargetForm.NAMED:
        return weights.to_named_string()
    if to is TargetForm.JSON:
        data: dict[str, float] = {}
        if weights.text_encoder is not None:
            data["BASE"] = weights.text_encoder
        data.update(weights.items())
        return json.dumps(data)
    values = weights.to_list(Ordering(to.value))
    if to is TargetForm.BLOCKS and weights.text_encoder is not None:
        values.insert(0, weights.text_encoder)
    return ",".join(format_weight(v) for v in values)


PresetsOption = Annotated[
    Path | None,
    typer.Option(
        "--presets",
        help="A preset.tsv whose presets add to / override the built-in ones. Default: none.",
    ),
]


@weights_app.command("convert")
def convert_command(
    text: Annotated[
        str,
        typer.Argument(
            help="Weights: one number, NAME:VALUE list, 27/22 values, 25/26 values or a preset.",
            show_default=False,
            metavar="TEXT",
        ),
    ],
    from_: Annotated[
        Ordering,
        typer.Option(
            "--order",
            "--from",
            help="Order of a full-length list (upstream = OUT/TIME_EMBED swapped, read only). "
            "Default: recipe.",
        ),
    ] = Ordering.RECIPE,
    to: Annotated[
        TargetForm, typer.Option(help="Form to print. Default: recipe.")
    ] = TargetForm.RECIPE,
    arch: Annotated[Arch, typer.Option(help="Architecture. Default: sd1.")] = Arch.SD1,
    extrapolation: Annotated[
        bool,
        typer.Option("--extrapolate", help="Allow values in -1..2 instead of 0..1. Default: off."),
    ] = False,
    presets: PresetsOption = None,
) -> None:
    """Read weights in one form and print them in another."""
    weights = parse_weights(
        text,
        arch,
        ordering=from_,
        allow_upstream=from_ is Ordering.UPSTREAM,
        presets=load_presets(presets),
        extrapolation=extrapolation,
        source="TEXT",
    )
    if to is TargetForm.BLOCKS and (lost := blocks_form_losses(weights)):
        Console(stderr=True, highlight=False).print(
            f"[yellow]warning:[/] the blocks form has no {', '.join(lost)}; "
            "reading it back gives them IN00's / the last OUT block's value",
            soft_wrap=True,
        )
    typer.echo(convert_weights(weights, to))


def blocks_form_losses(weights: Weights) -> list[str]:
    """Slots whose value a 25/26-value list cannot carry (they follow IN00 / the last OUT)."""
    lay = weights.layout
    follows = {"OUT": lay.out_slots[-1], "TIME_EMBED": "IN00", "LABEL_EMB": "IN00"}
    return [
        f"{slot}={format_weight(weights[slot])}"
        for slot, source in follows.items()
        if slot in lay.slots and weights[slot] != weights[source]
    ]


@weights_app.command("presets")
def presets_command(
    presets: PresetsOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {name: [25 values]} as JSON. Default: table.")
    ] = False,
) -> None:
    """List the named presets (built-in auto-MBW-rt ones plus --presets FILE)."""
    found = load_presets(presets)
    if as_json:
        typer.echo(json.dumps({k: list(v) for k, v in found.items()}, indent=2))
        return
    table = Table(title="weight presets (blocks order: [BASE,] IN00..IN11, M00, OUT00..OUT11)")
    table.add_column("name")
    table.add_column("values")
    for preset_name, values in found.items():
        table.add_row(preset_name, ",".join(f"{v:.3g}" for v in values))
    Console().print(table)


@weights_app.command("lbw")
def lbw_command(
    recipe: Annotated[
        Path, typer.Argument(help="A .recipe.txt or recipe .json (of a LoRA run or bake).")
    ],
    name: Annotated[
        str | None, typer.Option(help="Preset name. Default: the recipe's output name.")
    ] = None,
) -> None:
    """Print a recipe's weights as an sd-webui-lora-block-weight preset line (NAME:1,0,...)."""
    from autombw_cli.lbw import lbw_preset_line
    from autombw_cli.recipe import read_recipe_file

    read = read_recipe_file(recipe)
    typer.echo(lbw_preset_line(name or read.output_name or recipe.stem, read.weights))
