"""`autombw merge A B --weights ... -o OUT`: the offline block-weighted merge (a weighted sum,
or with ``--model-c C`` the add difference A + (B - C) * w)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from autombw_cli.blocks import (
    Arch,
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
            help="Checkpoint B (.safetensors or .ckpt), or with --lora a LoRA; for a chain "
            "recipe, each step's B in step order.",
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
    lora: Annotated[
        bool,
        typer.Option(
            "--lora",
            help="B is a LoRA/LoCon .safetensors: bake A + w * delta(B), each weight the LoRA "
            "strength of its block (also LBW lines NAME:1,0,... of 17/26, SDXL 12/20 values). "
            "Default: off.",
        ),
    ] = False,
) -> None:
    """Merge checkpoints A and B block by block into one .safetensors or .ckpt (streamed, atomic).

    UNet blocks get their slot's weight, text encoders the --text-encoder-weight (else A's),
    everything else is A's. With --model-c each weight scales B - C added to A; with --lora
    each weight is the strength of LoRA B in that block. Writes OUT plus OUT.recipe.txt and
    OUT.recipe.json beside it (with --lora also OUT.lbw.txt, the LBW preset line).

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
        extrapolate=extrapolate, preset_file=presets, model_c=model_c, lora=lora,
    )  # fmt: skip
    _check_b_kind(model_b, lora=the_recipe.formula is Formula.LORA)
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
    lora: bool = False,
) -> Recipe:
    """The Recipe for a merge from ``--weights`` or ``--recipe`` (arch detected from A); with
    ``model_c`` an add-difference one (an add-difference ``--recipe`` needs it, a weighted-sum
    one refuses it); with ``lora`` (or a LoRA ``--recipe``) a LoRA bake, whose ``--weights``
    may also be an LBW line or vector."""
    from autombw_cli.merging.checkpoint_io import read_key_shapes

    if (weights_text is None) == (recipe_file is None):
        raise ConfigError(
            "give exactly one of --weights and --recipe",
            hint="e.g. --weights 0.5, --weights GRAD_V, or --recipe best.recipe.txt",
        )
    arch = detect_arch(read_key_shapes(model_a), source=f"model A ({model_a})")
    upstream = ordering is Ordering.UPSTREAM
    formula = Formula.WEIGHTED_SUM if model_c is None else Formula.ADD_DIFFERENCE
    if lora:
        if model_c is not None:
            raise ConfigError("--lora and --model-c do not go together", hint="drop one")
        formula = Formula.LORA
    if recipe_file is not None:
        read = read_recipe_file(recipe_file, upstream=upstream)
        _check_formula(read, recipe_file, model_c)
        if lora and read.formula is not Formula.LORA:
            raise ConfigError(
                f"{recipe_file} is a {read.formula.label} recipe, not a LoRA bake",
                hint="drop --lora, or merge with --weights",
            )
        formula = read.formula
        w = read.weights
        if len(w) == len(layout(arch).slots):  # a 27-value recipe reads as sd1; A may be sd2
            w = Weights(arch, w.values, w.text_encoder)
        source = str(recipe_file)
    else:
        assert weights_text is not None
        lbw = _lbw_weights(weights_text, arch) if formula is Formula.LORA else None
        w = lbw or parse_weights(
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


def _lbw_weights(text: str, arch: Arch) -> Weights | None:
    """``--weights`` as an LBW line or vector (``NAME:1,0,...``, 17/26 or SDXL 12/20 numbers),
    or None when it is not one (then it is read as any other weights)."""
    from autombw_cli.lbw import is_lbw_length, parse_lbw_line

    body = text.split(":", 1)[1] if text.count(":") == 1 else text
    parts = [p for p in re.split(r"[,\s]+", body.strip()) if p]
    if not parts or not all(re.fullmatch(r"[-+0-9.eE]+", p) for p in parts):
        return None
    if not is_lbw_length(arch, len(parts)):
        return None
    return parse_lbw_line(text, arch, source="--weights")[1]


def _check_b_kind(model_b: Path, *, lora: bool) -> None:
    """A LoRA given as B without --lora (or a checkpoint with it): say so before merging."""
    from autombw_cli.merging.lora import is_lora_file

    if not lora and is_lora_file(model_b):
        raise ConfigError(
            f"{model_b} is a LoRA file, not a checkpoint",
            hint="pass --lora to bake it into A with per-block strengths",
        )


def _check_formula(recipe: Recipe, recipe_file: Path, model_c: Path | None) -> None:
    """An add-difference recipe is merged with --model-c only; a weighted-sum one without."""
    if recipe.formula is Formula.LORA and model_c is not None:
        raise ConfigError(
            f"{recipe_file} bakes a LoRA into A, but --model-c was given", hint="drop --model-c"
        )
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
    what = "patched" if recipe.formula is Formula.LORA else "interpolated"
    table = Table(title=f"{report.arch.value} merge: keys {what} per block", title_justify="left")
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
    if recipe.formula is Formula.LORA:
        inputs = f"{escape(str(model_a))} + LoRA {escape(str(model_b))}"
    console.print(
        f"merged {inputs} → "
        f"[bold]{escape(str(report.output))}[/] ({_size(report.bytes_written)}, "
        f"{report.total_keys} keys, dtype {report.dtype or 'as A'}) in {report.elapsed_s:.1f} s"
    )
    console.print("recipe: " + ", ".join(escape(str(p)) for p in report.recipe_files))
    for p in report.recipe_files:
        if p.name.endswith(".lbw.txt"):
            line = p.read_text(encoding="utf-8").strip()  # unwrapped: users copy it
            console.print("LBW preset: " + escape(line), soft_wrap=True)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
