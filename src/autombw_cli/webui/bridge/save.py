"""Saving a merge as a checkpoint file: A's non-UNet tensors + the block-merged UNet.

Streams one tensor at a time from A's and B's (and for add difference C's) files
(`merging.plan` gives each key's weight, `merging.kernels.ChunkedLerp` merges in float32,
rounded once to the output dtype)
into a temp file beside the target, hashing as it writes, then renames it into place; as
``.safetensors`` or as a ``.ckpt`` torch pickle (the writers of `autombw_cli.merging`). Only
torch, safetensors and the standard library (copied into the WebUI extension).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from autombw_cli.blocks import Weights
from autombw_cli.merging.checkpoint_io import CheckpointReader, checkpoint
from autombw_cli.merging.ckpt_writer import CheckpointFormat, write_checkpoint_stream
from autombw_cli.merging.kernels import ChunkedLerp
from autombw_cli.merging.lora import PlacedLora
from autombw_cli.merging.plan import weight_of
from autombw_cli.merging.safetensors_writer import TensorEntry
from autombw_cli.webui.bridge.errors import BadRequest, Conflict
from autombw_cli.webui.bridge.names import (
    CheckpointRef,
    NameError_,
    checkpoint_stem,
    safe_output_path,
)
from autombw_cli.webui.bridge.pairs import same_or_linked

# the ``dtype`` a save request may name -> float dtype of the output (None: keep A's)
DTYPE_NAMES: dict[str, torch.dtype | None] = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "keep": None,
}


def save_target(
    name: object,
    folder: Path,
    *,
    suffix: str,
    own: list[tuple[str, CheckpointRef]],
    overwrite: bool,
) -> tuple[Path, Path]:
    """``(checkpoint path, recipe path)`` for a save named ``name`` in ``folder``.

    Refuses (400 ``BadName``) a name that is not a plain file name; (409 ``OutputIsInput``)
    one that is a file the bridge reads from (``own``: A, B, the loaded checkpoint, as
    ``(role, ref)``) or shares its stem in the same folder (its recipe), whatever
    ``overwrite`` says; (409 ``OutputExists``) an existing checkpoint or recipe unless
    ``overwrite``."""
    try:
        target = safe_output_path(name, folder, suffix=suffix)
    except NameError_ as exc:
        raise BadRequest(str(exc), kind="BadName") from None
    stem = target.name[: -len(suffix)]
    recipe_path = target.with_name(stem + ".recipe.txt")
    for role, ref in own:
        same_stem = same_or_linked(ref.path.parent, target.parent) and (
            checkpoint_stem(ref.path.name) == stem.lower()
        )
        if same_stem or same_or_linked(ref.path, target):
            raise Conflict(
                f"{target.name} would overwrite {role} ({ref.filename}) or its recipe, "
                "which the bridge is merging from",
                kind="OutputIsInput",
                hint="choose another name; the bridge never overwrites its own inputs",
            )
    for path in (target, recipe_path):  # the recipe follows its checkpoint's rule
        if path.exists() and not overwrite:
            raise Conflict(
                f"{path.name} already exists in the checkpoint folder",
                kind="OutputExists",
                hint="pass overwrite: true to replace it, or choose another name",
            )
    return target, recipe_path


def write_merged_checkpoint(
    a_path: Path,
    b_path: Path,
    weights: Weights,
    target: Path,
    *,
    dtype: torch.dtype | None,
    metadata: dict[str, str],
    fmt: CheckpointFormat = "safetensors",
    c_path: Path | None = None,
    lora: PlacedLora | None = None,
) -> tuple[int, str]:
    """Write the merge atomically to ``target``; return (bytes written, sha256 of the file).

    ``dtype`` is the dtype of float tensors in the output (None: keep A's); ``metadata`` goes
    into a ``.safetensors`` header (a ``.ckpt`` holds only ``{"state_dict": ...}``);
    ``c_path``: C's file for an add-difference merge (None: the weighted sum); ``lora``: B is
    this LoRA (``b_path`` is not read), baked as by `merging.lora_bake`."""
    hashing: list[_HashingWriter] = []

    def wrap(raw: BinaryIO) -> BinaryIO:
        hashing.append(_HashingWriter(raw))
        return hashing[-1]  # type: ignore[return-value]

    with contextlib.ExitStack() as stack:
        fa = stack.enter_context(checkpoint(a_path))
        if lora is not None:
            entries = _lora_entries(fa, lora, weights, dtype)
        else:
            fb = stack.enter_context(checkpoint(b_path))
            fc = stack.enter_context(checkpoint(c_path)) if c_path is not None else None
            entries = _entries(fa, fb, fc, weights, dtype)
        producers = {e.key: (e, make) for e, make in entries}
        size = write_checkpoint_stream(
            target,
            [e for e, _ in producers.values()],
            lambda entry: producers[entry.key][1](),
            fmt=fmt,
            metadata=metadata,
            wrap_file=wrap,
        )
    return size, hashing[-1].hexdigest()


def _entries(
    fa: CheckpointReader,
    fb: CheckpointReader,
    fc: CheckpointReader | None,
    w: Weights,
    out_dtype: torch.dtype | None,
) -> Iterator[tuple[TensorEntry, Callable[[], Tensor]]]:
    """Per key of A: its output entry and how to make its tensor (`merging.plan` says which
    weight; a key B or C lacks, or holds in another shape, is A's: the bridge checks only the
    UNet's keys)."""
    b_shapes = fb.shapes()
    c_shapes = fc.shapes() if fc is not None else None
    lerp = ChunkedLerp()
    for key in fa.keys():  # noqa: SIM118  (a reader, not a dict)
        info = fa.info(key)
        floating = info.dtype.is_floating_point
        dtype = out_dtype if (out_dtype is not None and floating) else info.dtype
        step = weight_of(key, w)
        weight = 0.0 if step is None else step[1]
        mix = floating and weight != 0.0 and b_shapes.get(key) == info.shape
        if c_shapes is not None:
            mix = mix and c_shapes.get(key) == info.shape

        def produce(key: str = key, weight: float = weight, mix: bool = mix, dtype=dtype) -> Tensor:
            a = fa.get(key)
            if not mix:
                return a.to(dtype)
            c = None if fc is None else fc.get(key)
            return lerp(a, fb.get(key), weight, dtype, c=c)

        yield TensorEntry(key, dtype, info.shape), produce


def _lora_entries(
    fa: CheckpointReader, lora: PlacedLora, w: Weights, out_dtype: torch.dtype | None
) -> Iterator[tuple[TensorEntry, Callable[[], Tensor]]]:
    """Per key of A: its output entry and `PlacedLora.patched` (the offline bake's tensor)."""
    for key in fa.keys():  # noqa: SIM118  (a reader, not a dict)
        info = fa.info(key)
        floating = info.dtype.is_floating_point
        dtype = out_dtype if (out_dtype is not None and floating) else info.dtype

        def produce(key: str = key, dtype: torch.dtype = dtype) -> Tensor:
            return lora.patched(key, fa.get(key), w, dtype)

        yield TensorEntry(key, dtype, info.shape), produce


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through it (sha256)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()

    def write(self, data: Any) -> int:
        self._hash.update(data)
        return self._raw.write(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
