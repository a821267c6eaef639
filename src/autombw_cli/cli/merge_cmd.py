"""`autombw merge A B --weights ... -o OUT`: the offline block-weighted merge (a weighted sum,
or with ``--model-c C`` the add difference A + (B - C) * w)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autombw_cli.blocks import (
    Ordering,
    Weights,
    detect_arch,
    format_weight,
    layout,
    parse_weights,
)
from autombw_cli.cli._app import app
from autombw_cli.errors import ConfigError
from autombw_cli.recipe import Formula, Recipe, read_recipe_file

if TYPE_CHECKING:  # the merging package imports torch: only load it when merging
    from autombw_cli.merging.offline import MergeReport


class MergeOrder(StrEnum):
    RECIPE = "recipe"
    NAT = "nat"
    UPSTREAM = "upstream"


class MergeDtype(StrEnum):
    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"


@app.command("merge")
def merge_command(
    model_a: Annotated[Path, typer.Argument(help="Checkpoint A (.safetensors or .ckpt).")],
    models_b: Annotated[
        list[Path],
        typer.Argument(
            help="Checkpoint B (.safetensors or .ckpt); for a chain recipe, each step's B in "
            "step order.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Merged checkpoint to write: .safetensors, or .ckpt for a torch pickle "
            "(.safetensors is added when the name has neither).",
        ),
    ],
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights",
            "-w",
            help="Block weights (B's share): one number, 27/22 values, 25/26 values, "
            "IN00:0.5,... or a preset name. Default: none (give this or --recipe).",
        ),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(help="Take the weights from a .recipe.txt or recipe .json. Default: none."),
    ] = None,
    order: Annotated[
        MergeOrder,
        typer.Option(
            help="Order of a 27-value list: recipe (runtime-block-merge), nat (auto-MBW-rt) or "
            "upstream (OUT/TIME_EMBED swapped, read only). Default: recipe."
        ),
    ] = MergeOrder.RECIPE,
    dtype: Annotated[
        MergeDtype | None,
        typer.Option(help="Output dtype of float tensors. Default: keep A's dtypes."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            "--force",
            help="Replace an existing OUT and its recipe files (never model A or B). "
            "Default: off (an existing OUT is an error, exit 7).",
        ),
    ] = False,
    text_encoder_weight: Annotated[
        float | None,
        typer.Option(
            help="Also lerp the text encoder(s) with this weight. Default: text encoders from A."
        ),
    ] = None,
    extrapolate: Annotated[
        bool,
        typer.Option("--extrapolate", help="Allow weights in -1..2 instead of 0..1. Default: off."),
    ] = False,
    presets: Annotated[
        Path | None,
        typer.Option(help="A preset.tsv adding to the built-in presets. Default: built-ins only."),
    ] = None,
    models_c: Annotated[
        list[Path] | None,
        typer.Option(
            "--model-c",
            help="Checkpoint C, B's base (e.g. SD1.5): merge A + (B - C) * w (add difference) "
            "instead of the weighted sum. Needed by an add-difference --recipe; for a chain "
            "recipe, once per add-difference step, in step order. Default: none.",
        ),
    ] = None,
) -> None:
    """Merge checkpoints A and B block by block into one .safetensors or .ckpt (streamed, atomic).

    UNet blocks get their slot's weight, text encoders the --text-encoder-weight (else A's),
    everything else is A's. With --model-c each weight scales B - C added to A. Writes OUT
    plus OUT.recipe.txt and OUT.recipe.json beside it.

    A chain recipe (a chained search's chain.recipe.json) replays every step: give A, then
    each step's B; only the final checkpoint is written (and OUT.chain.json).
    """
    from autombw_cli.chain_recipe import is_chain_file
    from autombw_cli.merging.offline import output_path

    cs = list(models_c or [])
    if recipe is not None and is_chain_file(recipe):
        if weights is not None:
            raise ConfigError("give either --weights or --recipe, not both")
        _merge_chain(model_a, models_b, cs, recipe, output, dtype, force)
        return
    if len(models_b) != 1 or len(cs) > 1:
        raise ConfigError(
            f"a merge takes one model B and at most one --model-c (got {len(models_b)} B, "
            f"{len(cs)} C)",
            hint="several B files are for a chain recipe (--recipe chain.recipe.json)",
        )
    model_b, model_c = models_b[0], (cs[0] if cs else None)

    the_recipe = build_recipe(
        model_a, model_b, output_path(output), weights_text=weights, recipe_file=recipe,
        ordering=Ordering(order.value), text_encoder_weight=text_encoder_weight,
        extrapolate=extrapolate, preset_file=presets, model_c=model_c,
    )  # fmt: skip
    err = Console(stderr=True)
    report = _run_with_progress(
        err, model_a, model_b, the_recipe, output, dtype.value if dtype else None, force,
        model_c=model_c,
    )  # fmt: skip
    print_report(Console(highlight=False), report, the_recipe, model_a, model_b, model_c)


def _merge_chain(
    model_a: Path,
    models_b: list[Path],
    models_c: list[Path],
    recipe_file: Path,
    output: Path,
    dtype: MergeDtype | None,
    force: bool,
) -> None:
    from autombw_cli.chain_recipe import read_chain_recipe
    from autombw_cli.merging.chain import merge_chain

    chain = read_chain_recipe(recipe_file)
    err = Console(stderr=True)
    with err.status(f"merging a chain of {len(chain.steps)} steps", spinner="dots"):
        report = merge_chain(
            model_a,
            models_b,
            models_c,
            chain,
            output,
            dtype=dtype.value if dtype else None,
            force=force,
        )
    last = chain.steps[-1]
    print_report(
        Console(highlight=False),
        report,
        last,
        Path(last.model_a),
        models_b[-1],
        models_c[-1] if last.formula.needs_c else None,
    )


def build_recipe(
    model_a: Path,
    model_b: Path,
    output: Path,
    *,
    weights_text: str | None,
    recipe_file: Path | None,
    ordering: Ordering = Ordering.RECIPE,
    text_encoder_weight: float | None = None,
    extrapolate: bool = False,
    preset_file: Path | None = None,
    model_c: Path | None = None,
) -> Recipe:
    """The Recipe for a merge from ``--weights`` or ``--recipe`` (arch detected from A); with
    ``model_c`` an add-difference one (an add-difference ``--recipe`` needs it, a weighted-sum
    one refuses it)."""
    from autombw_cli.merging.checkpoint_io import read_key_shapes

    if (weights_text is None) == (recipe_file is None):
        raise ConfigError(
            "give exactly one of --weights and --recipe",
            hint="e.g. --weights 0.5, --weights GRAD_V, or --recipe best.recipe.txt",
        )
    arch = detect_arch(read_key_shapes(model_a), source=f"model A ({model_a})")
    upstream = ordering is Ordering.UPSTREAM
    formula = Formula.WEIGHTED_SUM if model_c is None else Formula.ADD_DIFFERENCE
    if recipe_file is not None:
        read = read_recipe_file(recipe_file, upstream=upstream)
        _check_formula(read, recipe_file, model_c)
        w = read.weights
        if len(w) == len(layout(arch).slots):  # a 27-value recipe reads as sd1; A may be sd2
            w = Weights(arch, w.values, w.text_encoder)
        source = str(recipe_file)
    else:
        assert weights_text is not None
        w = parse_weights(
            weights_text, arch, ordering=ordering, allow_upstream=upstream,
            presets=_load_presets(preset_file), extrapolation=extrapolate, source="--weights",
        )  # fmt: skip
        source = "--weights"
    if text_encoder_weight is not None:
        w = Weights(w.arch, w.values, text_encoder_weight)
    w.check_range(extrapolation=extrapolate, source=source)
    return Recipe(
        model_a.name,
        model_b.name,
        output.with_suffix("").name,
        w,
        model_c=None if model_c is None else model_c.name,
        formula=formula,
    )


def _check_formula(recipe: Recipe, recipe_file: Path, model_c: Path | None) -> None:
    """An add-difference recipe is merged with --model-c only; a weighted-sum one without."""
    if recipe.formula.needs_c and model_c is None:
        raise ConfigError(
            f"{recipe_file} is an add-difference recipe (A + (B - C) * w, C = "
            f"{recipe.model_c}): give model C",
            hint=f"add --model-c PATH/TO/{recipe.model_c}",
        )
    if not recipe.formula.needs_c and model_c is not None:
        raise ConfigError(
            f"{recipe_file} is a weighted-sum recipe of A and B, but --model-c was given",
            hint="drop --model-c, or merge with --weights to make an add-difference merge",
        )


def _load_presets(preset_file: Path | None) -> Mapping[str, Sequence[float]]:
    from autombw_cli.presets import load_presets

    return load_presets(preset_file)


def _run_with_progress(
    err: Console,
    model_a: Path,
    model_b: Path,
    recipe: Recipe,
    output: Path,
    dtype: str | None,
    force: bool,
    *,
    model_c: Path | None = None,
) -> MergeReport:
    from autombw_cli.merging.offline import merge_checkpoints

    if not err.is_terminal:
        return merge_checkpoints(
            model_a, model_b, recipe, output, model_c=model_c, dtype=dtype, force=force
        )
    from rich.progress import Progress

    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("merging", total=None)
        return merge_checkpoints(
            model_a, model_b, recipe, output, model_c=model_c, dtype=dtype, force=force,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip


def print_report(
    console: Console,
    report: MergeReport,
    recipe: Recipe,
    model_a: Path,
    model_b: Path,
    model_c: Path | None = None,
) -> None:
    """The short summary after a merge: arch, keys per slot with their weight, time, files."""
    w = recipe.weights
    table = Table(
        title=f"{report.arch.value} merge: keys interpolated per block", title_justify="left"
    )
    table.add_column("block")
    table.add_column("weight", justify="right")
    table.add_column("keys", justify="right")
    for slot, n in report.keys_per_slot.items():
        value = w.text_encoder if slot == "BASE" else w[slot]
        table.add_row(slot, format_weight(value) if value is not None else "-", str(n))
    table.add_row("(from A)", "-", str(report.copied_keys))
    console.print(table)
    inputs = f"{escape(str(model_a))} + {escape(str(model_b))}"
    if model_c is not None:
        inputs = f"{escape(str(model_a))} + ({escape(str(model_b))} - {escape(str(model_c))})"
    console.print(
        f"merged {inputs} → "
        f"[bold]{escape(str(report.output))}[/] ({_size(report.bytes_written)}, "
        f"{report.total_keys} keys, dtype {report.dtype or 'as A'}) in {report.elapsed_s:.1f} s"
    )
    console.print("recipe: " + ", ".join(escape(str(p)) for p in report.recipe_files))


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
