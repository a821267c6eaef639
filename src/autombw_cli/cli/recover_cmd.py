"""`autombw recover SOURCE`: the best weights from a history CSV, console log or recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autombw_cli.blocks import Arch, Ordering, Weights, format_weight
from autombw_cli.cli._app import app, print_warning
from autombw_cli.recover import (
    RecoveredSource,
    SourceKind,
    check_merge_options,
    order_line,
    plan_outputs,
    recover,
    write_outputs,
)
from autombw_cli.search.evaluation import Evaluation

MAX_WARNINGS_SHOWN = 10


@app.command("recover")
def recover_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="A history CSV (autombw's or auto-MBW-rt's), an auto-MBW-rt console log, "
            "a .recipe.txt, or a merged .safetensors carrying its recipe.",
            show_default=False,
            metavar="SOURCE",
        ),
    ],
    kind: Annotated[
        SourceKind | None,
        typer.Option(help="What SOURCE is. Default: detected from its content."),
    ] = None,
    arch: Annotated[
        Arch | None,
        typer.Option(
            help="Architecture (27 values read as sd1 unless sd2 is given). Default: detected."
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="List the K best evaluations. Default: 1.")] = 1,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write the best weights as FILE.recipe.txt and FILE.recipe.json. Default: none."
        ),
    ] = None,
    model_a: Annotated[
        str, typer.Option(help="Model A's file name for the recipe. Default: from SOURCE/--merge.")
    ] = "",
    model_b: Annotated[
        str, typer.Option(help="Model B's file name for the recipe. Default: from SOURCE/--merge.")
    ] = "",
    model_c: Annotated[
        str,
        typer.Option(
            "--model-c",
            help="Model C (B's base) of an add-difference search: the recipe says A + (B - C)"
            " * w; with --merge, C's checkpoint file. Default: from SOURCE (none: weighted sum).",
        ),
    ] = "",
    name: Annotated[
        str, typer.Option(help="Output model name for the recipe. Default: from --out/-o.")
    ] = "",
    merge: Annotated[
        tuple[Path, Path] | None,
        typer.Option(
            metavar="A B",
            help="Merge checkpoints A and B with the best weights into -o OUT. Default: no merge.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Merged checkpoint to write with --merge."),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(help="Merged checkpoint dtype: fp16, bf16 or fp32. Default: A's dtype."),
    ] = None,
    upstream: Annotated[
        bool,
        typer.Option(
            "--upstream",
            help="Read a recipe's 27 numbers in the upstream UI's order (TIME_EMBED before OUT).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Overwrite existing recipe/merge outputs. Default: off."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print machine-readable JSON. Default: tables.")
    ] = False,
) -> None:
    """Recover the best weights from a history CSV, console log or recipe.

    Ties in score go to the earliest evaluation in the file.
    """
    check_merge_options(merge, output, dtype)
    result = recover(source, kind=kind, arch=arch, upstream=upstream)
    plan = plan_outputs(
        result, out=out, merge=merge, output=output, dtype=dtype, force=force,
        model_a=model_a, model_b=model_b, name=name, model_c=model_c,
    )  # fmt: skip
    err = Console(stderr=True, highlight=False)
    for warning in [*plan.warnings(), *result.warnings[:MAX_WARNINGS_SHOWN]]:
        print_warning(err, warning)
    if len(result.warnings) > MAX_WARNINGS_SHOWN:
        hidden = len(result.warnings) - MAX_WARNINGS_SHOWN
        print_warning(err, f"... and {hidden} more (all of them are in --json)")
    if as_json:
        typer.echo(json.dumps(result.to_dict(top), indent=2))
    else:
        _render(Console(highlight=False), result, result.best(), top)
    write_outputs(plan, lambda line: err.print(escape(line), soft_wrap=True))


def _render(console: Console, result: RecoveredSource, best: Evaluation, top: int) -> None:
    score = "n/a (a recipe has no score)" if best.score is None else repr(best.score)
    console.print(
        f"[bold]{escape(result.source)}[/] ({result.kind.value}): "
        f"{len(result.evaluations)} evaluation(s)",
        soft_wrap=True,
    )
    console.print(f"best score: [bold]{score}[/] at {escape(best.location)}", soft_wrap=True)
    console.print(weights_table(best.weights))
    console.print("recipe order (runtime-block-merge):", soft_wrap=True)
    console.print(order_line(best.weights, Ordering.RECIPE), soft_wrap=True)
    console.print("nat order (auto-MBW-rt):", soft_wrap=True)
    console.print(order_line(best.weights, Ordering.NAT), soft_wrap=True)
    if top > 1:
        ranked = Table(title=f"top {min(top, len(result.evaluations))}")
        ranked.add_column("#", justify="right")
        ranked.add_column("score", justify="right")
        ranked.add_column("where")
        ranked.add_column("recipe order", overflow="fold")
        for i, e in enumerate(result.top(top), start=1):
            ranked.add_row(
                str(i),
                "n/a" if e.score is None else repr(e.score),
                e.location,
                order_line(e.weights, Ordering.RECIPE),
            )
        console.print(ranked)


def weights_table(weights: Weights) -> Table:
    """Weights by block name: IN blocks, OUT blocks and the rest side by side."""
    lay = weights.layout
    table = Table(title=f"best weights ({weights.arch.value}, w = B's share)")
    for header in ("in", "w", "out", "w", "other", "w"):
        table.add_column(header, justify="right" if header == "w" else "left")
    other = [s for s in lay.slots if s not in lay.in_slots and s not in lay.out_slots]
    cells: list[tuple[str, float]] = [(s, weights[s]) for s in other]
    if weights.text_encoder is not None:
        cells.append(("BASE", weights.text_encoder))
    for i in range(max(lay.n_in, lay.n_out, len(cells))):
        row: list[str] = []
        for column in (lay.in_slots, lay.out_slots):
            row += [column[i], format_weight(weights[column[i]])] if i < len(column) else ["", ""]
        row += [cells[i][0], format_weight(cells[i][1])] if i < len(cells) else ["", ""]
        table.add_row(*row)
    return table
