"""The offline merge: two checkpoints (three for an add-difference recipe: A + (B - C) * w)
and a `Recipe` in, one merged ``.safetensors`` (or ``.ckpt``, by the output's suffix) out.

Streams tensor by tensor: both inputs are read one tensor at a time (see `checkpoint_io`), large
tensors are interpolated in chunks, and each result goes straight into the output file (see
`safetensors_writer`, `ckpt_writer`), so peak memory stays around a few tensors of A, B and
the output (the next pair is read ahead, the previous result written behind on helper threads),
far below the size of the inputs. Everything is validated before the first byte is written; the
output appears atomically (temp file, fsync, rename) or not at all.

Per key: UNet keys (``model.diffusion_model.*``) are merged with their block slot's weight; text
encoder keys with the text-encoder weight when the recipe has one; everything else (VAE, other
buffers) is A's tensor bit for bit (converted only when an output dtype is asked for). The
recipe's formula picks the kernel (`merging.kernels`): a weighted sum of A and B, or A plus
the weighted difference of B and C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from autombw_cli.blocks import Arch, Weights, layout
from autombw_cli.errors import ConfigError, ModelMismatchError, OutputExistsError
from autombw_cli.merging.checkpoint_io import (
    CheckpointReader,
    check_mergeable,
    checkpoint,
)
from autombw_cli.merging.ckpt_writer import CheckpointFormat, write_checkpoint_stream
from autombw_cli.merging.dtypes import OUTPUT_DTYPES
from autombw_cli.merging.kernels import ChunkedLerp
from autombw_cli.merging.plan import TEXT_ENCODER, plan_weights
from autombw_cli.merging.safetensors_writer import TensorEntry, layout_order
from autombw_cli.recipe import Formula, Recipe, write_recipe_files

OTHER_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
# The arithmetic runs on one thread while a second reads ahead and a third writes behind. Small
# chunks on torch's multi-threaded pool lose badly to thread synchronisation (10x slower on a
# busy 2-core machine); one compute thread plus overlapped I/O keeps both cores busy.
MERGE_THREADS = 1

ProgressFn = Callable[[int, int], None]  # (tensors done, tensors total)
# A's tensor, B's and C's (None when not needed: weight 0, or no C in a weighted sum)
_Inputs = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


@dataclass(frozen=True)
class MergeReport:
    output: Path
    recipe_files: tuple[Path, ...]
    arch: Arch
    keys_per_slot: Mapping[str, int]  # [BASE,] slots in recipe order -> keys lerped with it
    copied_keys: int  # taken from A unchanged
    total_keys: int
    bytes_written: int
    elapsed_s: float
    dtype: str | None  # None: each tensor keeps A's dtype


def output_path(output: Path | str) -> Path:
    """The merged file's path: ``.safetensors`` or ``.ckpt`` (``.safetensors`` appended when
    the name has neither)."""
    p = Path(output)
    if p.suffix.lower() in (".safetensors", ".ckpt"):
        return p
    if p.suffix.lower() in OTHER_TORCH_SUFFIXES:
        raise ConfigError(
            f"{p}: autombw writes .safetensors or .ckpt files only",
            hint=f"use -o {p.with_suffix('.safetensors')} (or {p.with_suffix('.ckpt')})",
        )
    return p.with_name(p.name + ".safetensors")


def output_format(path: Path) -> CheckpointFormat:
    """The format a merged file is written in, by its suffix (see `output_path`)."""
    return "ckpt" if path.suffix.lower() == ".ckpt" else "safetensors"


def recipe_stem(output: Path) -> Path:
    """``out/mix.safetensors`` → ``out/mix`` (sidecars: ``mix.recipe.txt``, ``mix.recipe.json``)."""
    return output.with_suffix("")


def merge_checkpoints(
    model_a: Path | str,
    model_b: Path | str,
    recipe: Recipe,
    output: Path | str,
    *,
    model_c: Path | str | None = None,
    dtype: str | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> MergeReport:
    """Merge A and B (and C: ``model_c``, exactly when the recipe's formula is add difference)
    with ``recipe``'s weights into ``output`` and write ``<stem>.recipe.txt`` /
    ``.recipe.json`` beside it (a LoRA recipe: B is a LoRA file baked into A, see
    `lora_bake`). ``output`` ending in ``.ckpt`` is written as a torch pickle
    ``{"state_dict": ...}`` (what A1111 loads), anything else as ``.safetensors``.

    Raises ConfigError (bad dtype/output path, missing input, C missing for an add-difference
    recipe or given for a weighted sum), ModelMismatchError (not a checkpoint, refused pickle,
    different arch/keys/shapes), OutputExistsError (without ``force``). Safe to call from a
    worker thread; note that torch's intra-op thread count is process-wide and is set to
    `MERGE_THREADS` for the duration of the merge.
    """
    if recipe.formula is Formula.LORA:  # B is a LoRA file: bake it into A
        from autombw_cli.merging.lora_bake import bake_lora

        if model_c is not None:
            raise ConfigError(
                f"model C ({model_c}) was given but the recipe bakes a LoRA into A",
                hint="drop model C",
            )
        return bake_lora(
            model_a, model_b, recipe, output, dtype=dtype, force=force, progress=progress
        )
    started = time.perf_counter()
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}", hint=f"one of {', '.join(OUTPUT_DTYPES)}")
    out_dtype = OUTPUT_DTYPES[dtype] if dtype else None
    out = output_path(output)
    fmt = output_format(out)
    path_a, path_b = Path(model_a), Path(model_b)
    path_c = _model_c_path(recipe, model_c)
    check_output(out, (path_a, path_b) + ((path_c,) if path_c else ()), force=force)

    with contextlib.ExitStack() as stack:
        reader_a = stack.enter_context(checkpoint(path_a))
        reader_b = stack.enter_context(checkpoint(path_b))
        reader_c = stack.enter_context(checkpoint(path_c)) if path_c else None
        recipe = _validated_recipe(reader_a, reader_b, reader_c, recipe)
        keys = reader_a.keys()
        not_float = {k for k in keys if not reader_a.info(k).dtype.is_floating_point}
        plan = plan_weights(keys, recipe.weights, copy=not_float)
        entries = [_output_entry(reader_a, k, out_dtype) for k in keys]
        _check_disk_space(out, sum(e.nbytes for e in entries))
        lerp = ChunkedLerp()
        done = 0

        def read(entry: TensorEntry) -> _Inputs:
            step = plan[entry.key]
            need_b = step is not None and step[1] != 0.0
            b = reader_b.get(entry.key) if need_b else None
            c = reader_c.get(entry.key) if need_b and reader_c is not None else None
            return reader_a.get(entry.key), b, c

        def produce(entry: TensorEntry) -> torch.Tensor:
            nonlocal done
            step = plan[entry.key]
            a, b, c = reads.take(entry)
            if step is None:
                result = a.to(entry.dtype)
            else:
                result = lerp(a, a if b is None else b, step[1], entry.dtype, c=c)
            done += 1
            if progress is not None:
                progress(done, len(entries))
            return result

        metadata = {"format": "pt", **recipe.safetensors_metadata()}
        order = layout_order(entries) if fmt == "safetensors" else entries  # the writer's order
        with _ReadAhead(read, order) as reads, _torch_threads(MERGE_THREADS):
            size = write_checkpoint_stream(
                out, entries, produce, fmt=fmt, metadata=metadata, write_behind=True
            )

    sidecars = write_recipe_files(recipe, recipe_stem(out))
    counts = dict.fromkeys((TEXT_ENCODER, *layout(recipe.arch).slots), 0)
    for step in plan.values():
        if step is not None:
            counts[step[0]] += 1
    if recipe.weights.text_encoder is None:
        del counts[TEXT_ENCODER]
    return MergeReport(
        output=out,
        recipe_files=sidecars,
        arch=recipe.arch,
        keys_per_slot=counts,
        copied_keys=sum(1 for s in plan.values() if s is None),
        total_keys=len(plan),
        bytes_written=size,
        elapsed_s=time.perf_counter() - started,
        dtype=dtype,
    )


class _ReadAhead:
    """Reads the next entry's tensors on a helper thread while the current one is merged."""

    def __init__(
        self, read: Callable[[TensorEntry], _Inputs], order: Sequence[TensorEntry]
    ) -> None:
        self._read = read
        self._next = {a.key: b for a, b in itertools.pairwise(order)}
        self._pool = ThreadPoolExecutor(1, "checkpoint-read")
        self._pending: tuple[str, Future[_Inputs]] | None = None

    def take(self, entry: TensorEntry) -> _Inputs:
        if self._pending is not None and self._pending[0] == entry.key:
            pair = self._pending[1].result()
        else:
            pair = self._read(entry)
        following = self._next.get(entry.key)
        self._pending = None if following is None else (
            following.key, self._pool.submit(self._read, following)
        )  # fmt: skip
        return pair

    def __enter__(self) -> _ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pending = None
        self._pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _output_entry(reader: CheckpointReader, key: str, out_dtype: torch.dtype | None) -> TensorEntry:
    info = reader.info(key)
    dt = info.dtype
    if out_dtype is not None and dt.is_floating_point:
        dt = out_dtype
    return TensorEntry(key, dt, info.shape)


def _model_c_path(recipe: Recipe, model_c: Path | str | None) -> Path | None:
    """C's file: required by an add-difference recipe, refused for a weighted sum."""
    if recipe.formula is Formula.ADD_DIFFERENCE and model_c is None:
        raise ConfigError(
            f"the recipe is an add-difference merge (A + (B - C) * w, C = {recipe.model_c}) "
            "but no model C file was given",
            hint="pass C's checkpoint (autombw merge A B --model-c C ...)",
        )
    if recipe.formula is Formula.WEIGHTED_SUM and model_c is not None:
        raise ConfigError(
            f"model C ({model_c}) was given but the recipe is a weighted sum of A and B",
            hint="drop model C, or use an add-difference recipe",
        )
    return None if model_c is None else Path(model_c)


def check_output(out: Path, inputs: Sequence[Path], *, force: bool) -> None:
    """Refuse an output that is A, B or C (or shares their recipe files), whatever ``force``
    says, and an existing output or recipe file unless ``force``."""
    stem = recipe_stem(out)
    for p, name in zip(inputs, ("A", "B", "C"), strict=False):
        if _same_path(out, p):
            raise ConfigError(
                f"{out}: the output is model {name} itself",
                hint="choose another -o path; the input models are never overwritten",
            )
        if _same_path(out.parent, p.parent) and stem.name.lower() == p.stem.lower():
            raise ConfigError(
                f"{out}: the output shares model {name}'s name ({p.name}) and would replace "
                "its recipe files",
                hint="choose another -o path; the input models are never overwritten",
            )
    targets = [
        out,
        stem.with_name(stem.name + ".recipe.txt"),
        stem.with_name(stem.name + ".recipe.json"),
    ]
    if not force:
        for target in targets:
            if target.exists():
                raise OutputExistsError(
                    f"{target} already exists; not overwriting it",
                    hint="pass --force to overwrite, or choose another -o path",
                )


def _same_path(a: Path, b: Path) -> bool:
    """One file under both names (same path, symlink, hard link, case-insensitive folder)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _validated_recipe(
    reader_a: CheckpointReader,
    reader_b: CheckpointReader,
    reader_c: CheckpointReader | None,
    recipe: Recipe,
) -> Recipe:
    name_a = f"model A ({reader_a.path.name})"
    arch_a = check_mergeable(
        reader_a.shapes(),
        reader_b.shapes(),
        name_a=name_a,
        name_b=f"model B ({reader_b.path.name})",
    )
    if reader_c is not None:
        check_mergeable(
            reader_a.shapes(),
            reader_c.shapes(),
            name_a=name_a,
            name_b=f"model C ({reader_c.path.name})",
        )
    weights = recipe.weights
    if weights.arch is not arch_a:
        if len(layout(weights.arch).slots) != len(layout(arch_a).slots):
            raise ModelMismatchError(
                f"the weights are for {weights.arch.value} ({len(weights)} blocks) but the "
                f"checkpoints are {arch_a.value} ({len(layout(arch_a).slots)} blocks)",
                hint="give weights for the checkpoints' architecture",
            )
        weights = Weights(arch_a, weights.values, weights.text_encoder)  # SD1 ↔ SD2: same slots
        recipe = dataclasses.replace(recipe, weights=weights)
    return recipe


def _check_disk_space(out: Path, needed: int) -> None:
    folder = out.parent if out.parent.exists() else Path.cwd()
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise ConfigError(
            f"{out}: the merge needs {needed / 1e9:.2f} GB but only {free / 1e9:.2f} GB is free",
            hint="free some space or write elsewhere with -o",
        )
