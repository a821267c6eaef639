"""`autombw blocks`: show an architecture's slots and the legacy orderings."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from autombw_cli.blocks import Arch, Ordering, layout
from autombw_cli.cli._app import app


@app.command("blocks")
def blocks_command(
    arch: Annotated[Arch, typer.Option(help="Architecture. Default: sd1.")] = Arch.SD1,
) -> None:
    """List the block slots of an architecture and their position in every legacy order."""
    lay = layout(arch)
    table = Table(title=f"{arch.value} block slots")
    table.add_column("slot")
    for ordering in Ordering:
        table.add_column(f"{ordering.value} #")
    for slot in lay.slots:
        row = [slot]
        for ordering in Ordering:
            order = lay.order(ordering)
            row.append(str(order.index(slot)) if slot in order else "-")
        table.add_row(*row)
    Console().print(table)
