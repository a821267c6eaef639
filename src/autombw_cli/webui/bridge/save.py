"""Saving a merge as a checkpoint file: A's non-UNet tensors + the block-merged UNet.

Streams one tensor at a time from A's and B's files (lerp in float32, then the output dtype)
into a temp file beside the target, hashing as it writes, then renames it into place; as
``.safetensors`` or as a ``.ckpt`` torch pickle (the writers of `autombw_cli.merging`). Only
torch, safetensors and the standard library (copied into the WebUI extension).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from autombw_cli.blocks import Weights, is_text_encoder_key, layout
from autombw_cli.merging.ckpt_writer import CheckpointFormat, write_checkpoint_stream
from autombw_cli.merging.safetensors_writer import TensorEntry
from autombw_cli.webui.bridge.files import TensorFile


def write_merged_checkpoint(
    a_path: Path,
    b_path: Path,
    weights: Weights,
    target: Path,
    *,
    dtype: torch.dtype | None,
    metadata: dict[str, str],
    fmt: CheckpointFormat = "safetensors",
) -> tuple[int, str]:
    """Write the merge atomically to ``target``; return (bytes written, sha256 of the file).

    ``dtype`` is the dtype of float tensors in the output (None: keep A's); ``metadata`` goes
    into a ``.safetensors`` header (a ``.ckpt`` holds only ``{"state_dict": ...}``)."""
    hashing: list[_HashingWriter] = []

    def wrap(raw: BinaryIO) -> BinaryIO:
        hashing.append(_HashingWriter(raw))
        return hashing[-1]  # type: ignore[return-value]

    with TensorFile(a_path) as fa, TensorFile(b_path) as fb:
        producers = {e.key: (e, make) for e, make in _entries(fa, fb, weights, dtype)}
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
    fa: TensorFile, fb: TensorFile, w: Weights, out_dtype: torch.dtype | None
) -> Iterator[tuple[TensorEntry, Callable[[], Tensor]]]:
    lay = layout(w.arch)
    b_keys = set(fb.tensor_keys())
    for key in fa.tensor_keys():
        src_dtype = fa.dtype(key)
        shape = fa.shape(key)
        floating = src_dtype.is_floating_point
        dtype = out_dtype if (out_dtype is not None and floating) else src_dtype
        slot = lay.slot_of(key)
        if slot is not None:
            weight = w.values[slot]
        elif w.text_encoder is not None and is_text_encoder_key(key, w.arch):
            weight = w.text_encoder
        else:
            weight = 0.0
        mix = floating and weight != 0.0 and key in b_keys and fb.shape(key) == shape

        def produce(key: str = key, weight: float = weight, mix: bool = mix, dtype=dtype) -> Tensor:
            a = fa.get(key)
            if not mix:
                return a.to(dtype)
            b = fb.get(key)
            return torch.lerp(a.float(), b.float(), weight).to(dtype)

        yield TensorEntry(key, dtype, shape), produce


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
