"""The offline LoRA bake: checkpoint A, a LoRA file and per-block strengths in, one checkpoint out.

Each key the LoRA patches becomes ``A + s * delta`` (`lora.PlacedLora.patched`, float32,
rounded once to the output dtype), ``s`` being the strength the merge policy gives the key
(`plan.weight_of`: its UNet slot's weight, the text-encoder weight for text-encoder keys, none
when the recipe has no text-encoder weight); every other key is A's tensor bit for bit. Streams
like the offline merge (`offline.py`: one tensor of A and its delta at a time, output written
as produced, atomically), with the same checks of the output path, and writes the same recipe
sidecars (``merge_mode=LoRA``, the LoRA file as model B) plus ``<stem>.lbw.txt``, the
strengths as an sd-webui-lora-block-weight preset line.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from autombw_cli.atomic import atomic_write_text
from autombw_cli.blocks import Weights, layout
from autombw_cli.errors import ConfigError, ModelMismatchError, OutputExistsError, WeightsError
from autombw_cli.lbw import lbw_preset_line
from autombw_cli.merging.checkpoint_io import checkpoint
from autombw_cli.merging.ckpt_writer import write_checkpoint_stream
from autombw_cli.merging.dtypes import OUTPUT_DTYPES
from autombw_cli.merging.lora import PlacedLora, place_lora
from autombw_cli.merging.offline import (
    MERGE_THREADS,
    MergeReport,
    ProgressFn,
    _check_disk_space,
    _output_entry,
    _torch_threads,
    check_output,
    output_format,
    output_path,
    recipe_stem,
)
from autombw_cli.merging.plan import TEXT_ENCODER, Step, weight_of
from autombw_cli.merging.safetensors_writer import TensorEntry
from autombw_cli.recipe import Formula, Recipe, write_recipe_files

LBW_SUFFIX = ".lbw.txt"


def lora_plan(placed: PlacedLora, keys: list[str], weights: Weights) -> dict[str, Step | None]:
    """The strength each key is patched with (None: A's tensor): the merge policy's weight for
    the keys the LoRA patches, nothing for the rest."""
    return {k: weight_of(k, weights) if k in placed.slots else None for k in keys}


def bake_lora(
    model_a: Path | str,
    lora: Path | str,
    recipe: Recipe,
    output: Path | str,
    *,
    dtype: str | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> MergeReport:
    """Bake ``lora`` into ``model_a`` with ``recipe``'s strengths (a `Formula.LORA` recipe)
    into ``output`` (``.safetensors``, or ``.ckpt``), with ``<stem>.recipe.txt``,
    ``.recipe.json`` and ``.lbw.txt`` beside it. Raises as `offline.merge_checkpoints`, plus
    ConfigError/ModelMismatchError for a LoRA file that cannot be applied to A."""
    started = time.perf_counter()
    if recipe.formula is not Formula.LORA:
        raise ValueError("bake_lora needs a LoRA recipe")
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}", hint=f"one of {', '.join(OUTPUT_DTYPES)}")
    out_dtype = OUTPUT_DTYPES[dtype] if dtype else None
    out = output_path(output)
    path_a, path_lora = Path(model_a), Path(lora)
    check_output(out, (path_a, path_lora), force=force)
    lbw_file = recipe_stem(out).with_name(recipe_stem(out).name + LBW_SUFFIX)
    if lbw_file.exists() and not force:
        raise OutputExistsError(
            f"{lbw_file} already exists; not overwriting it",
            hint="pass --force to overwrite, or choose another -o path",
        )

    with checkpoint(path_a) as reader_a:
        shapes = reader_a.shapes()
        placed = place_lora(path_lora, shapes, source=path_lora.name)
        recipe = _recipe_for(recipe, placed)
        line = _lbw_line_or_none(recipe, placed)
        keys = reader_a.keys()
        weights = recipe.weights
        plan = lora_plan(placed, keys, weights)
        entries = [_output_entry(reader_a, k, out_dtype) for k in keys]
        _check_disk_space(out, sum(e.nbytes for e in entries))
        done = 0

        def produce(entry: TensorEntry) -> torch.Tensor:
            nonlocal done
            result = placed.patched(entry.key, reader_a.get(entry.key), weights, entry.dtype)
            done += 1
            if progress is not None:
                progress(done, len(entries))
            return result

        metadata = {"format": "pt", **recipe.safetensors_metadata()}
        with _torch_threads(MERGE_THREADS):
            size = write_checkpoint_stream(
                out, entries, produce, fmt=output_format(out), metadata=metadata, write_behind=True
            )

    sidecars = write_recipe_files(recipe, recipe_stem(out))
    if line is not None:
        atomic_write_text(lbw_file, line + "\n")
        sidecars = (*sidecars, lbw_file)
    counts = dict.fromkeys((TEXT_ENCODER, *layout(recipe.arch).slots), 0)
    for step in plan.values():
        if step is not None:
            counts[step[0]] += 1
    return MergeReport(
        output=out,
        recipe_files=sidecars,
        arch=recipe.arch,
        keys_per_slot={s: n for s, n in counts.items() if n},
        copied_keys=sum(1 for s in plan.values() if s is None),
        total_keys=len(plan),
        bytes_written=size,
        elapsed_s=time.perf_counter() - started,
        dtype=dtype,
    )


def lbw_line(recipe: Recipe, placed: PlacedLora | None = None) -> str:
    """The recipe's strengths as an LBW preset line named after its output (the short vector
    when the LoRA has no modules in the blocks it omits)."""
    name = recipe.output_name or Path(recipe.model_b).stem
    return lbw_preset_line(name, recipe.weights, None if placed is None else placed.touched)


def _lbw_line_or_none(recipe: Recipe, placed: PlacedLora) -> str | None:
    """`lbw_line`, or None when no LBW vector can hold the strengths (a LoRA module in OUT,
    TIME_EMBED or LABEL_EMB at a strength other than 1): the bake itself is still right."""
    try:
        return lbw_line(recipe, placed)
    except WeightsError:
        return None


def _recipe_for(recipe: Recipe, placed: PlacedLora) -> Recipe:
    """The recipe with weights of A's architecture (SD1 and SD2 share their slots)."""
    weights = recipe.weights
    if weights.arch is placed.arch:
        return recipe
    if len(layout(weights.arch).slots) != len(layout(placed.arch).slots):
        raise ModelMismatchError(
            f"the strengths are for {weights.arch.value} but model A is {placed.arch.value}",
            hint="give strengths for model A's architecture",
        )
    weights = Weights(placed.arch, weights.values, weights.text_encoder)
    return dataclasses.replace(recipe, weights=weights)
