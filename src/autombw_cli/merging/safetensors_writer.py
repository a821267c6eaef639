"""A streaming safetensors writer: the header is computed up front from shapes and dtypes, then
each tensor's bytes are written as it is produced, so peak memory stays about one tensor.

File layout (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
N bytes of JSON (``{"__metadata__": {str: str}, key: {"dtype", "shape", "data_offsets"}}``,
space-padded to a multiple of 8), then the tensor bytes back to back. Tensors are laid out by
element size (largest first) like the reference implementation, so every tensor stays aligned.
The file is written to a temp file beside the target, fsynced and renamed into place.

torch and the stdlib only (the WebUI bridge reuses this module).
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from autombw_cli.atomic import atomic_path

DTYPE_TO_ST: Mapping[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
ST_TO_DTYPE: Mapping[str, torch.dtype] = {v: k for k, v in DTYPE_TO_ST.items()}


@dataclass(frozen=True)
class TensorEntry:
    """What the header needs to know about one tensor before its bytes exist."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


def layout_order(entries: Sequence[TensorEntry]) -> list[TensorEntry]:
    """The order tensors are stored in: largest element size first, then as given."""
    size = {dt: torch.empty((), dtype=dt).element_size() for dt in {e.dtype for e in entries}}
    return sorted(entries, key=lambda e: -size[e.dtype])  # sorted() is stable


def build_header(entries: Sequence[TensorEntry], metadata: Mapping[str, str] | None) -> bytes:
    """The length prefix and JSON header for ``entries`` stored in the given order."""
    header: dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata must map str to str; bad entries: {bad}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for e in entries:
        if e.key in header or e.key == "__metadata__":
            raise ValueError(f"duplicate tensor key {e.key!r}")
        if e.dtype not in DTYPE_TO_ST:
            raise TypeError(f"{e.key}: dtype {e.dtype} cannot be stored in safetensors")
        end = offset + e.nbytes
        header[e.key] = {
            "dtype": DTYPE_TO_ST[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class SafetensorsStreamWriter:
    """Writes tensors into an open binary file in ``order``; checks each against its entry.

    With ``write_behind`` the bytes of a tensor are written by a helper thread while the caller
    produces the next one (at most one write in flight; the file is still written in order).
    Call `finish` (or `close` on errors) before closing the file.
    """

    def __init__(
        self,
        fh: BinaryIO,
        entries: Sequence[TensorEntry],
        metadata: Mapping[str, str] | None,
        *,
        write_behind: bool = False,
    ) -> None:
        if sys.byteorder != "little":  # safetensors is little-endian
            raise RuntimeError("the safetensors writer needs a little-endian machine")
        self._fh = fh
        self.order = layout_order(entries)
        self._next = 0
        self.bytes_written = 0
        self._pool = ThreadPoolExecutor(1, "safetensors-write") if write_behind else None
        self._pending: Future[object] | None = None
        header = build_header(self.order, metadata)
        fh.write(header)
        self.bytes_written += len(header)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.order):
            raise ValueError(f"{key}: more tensors written than declared")
        entry = self.order[self._next]
        if key != entry.key:
            raise ValueError(f"expected tensor {entry.key!r} next, got {key!r}")
        if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
            raise ValueError(
                f"{key}: declared {entry.dtype} {list(entry.shape)}, "
                f"got {tensor.dtype} {list(tensor.shape)}"
            )
        if entry.nbytes:
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            self._wait()
            if self._pool is None:
                self._fh.write(memoryview(data.numpy()))
            else:  # `data` stays alive in the closure until written
                self._pending = self._pool.submit(self._fh.write, memoryview(data.numpy()))
        self.bytes_written += entry.nbytes
        self._next += 1

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def finish(self) -> None:
        """Wait for the last write and check every declared tensor was written."""
        try:
            self._wait()
        finally:
            self.close()
        if self._next != len(self.order):
            missing = self.order[self._next].key
            raise ValueError(f"only {self._next} of {len(self.order)} tensors written ({missing})")

    def close(self) -> None:
        """Stop the helper thread (waiting for a write in flight); safe to call twice."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def write_safetensors_stream(
    path: Path | str,
    entries: Sequence[TensorEntry],
    produce: Callable[[TensorEntry], torch.Tensor] | Iterable[torch.Tensor],
    *,
    metadata: Mapping[str, str] | None = None,
    write_behind: bool = False,
) -> int:
    """Write a safetensors file atomically, producing tensors one at a time.

    ``produce`` is called with each entry in storage order (see `layout_order`); an iterable is
    accepted too and must yield tensors in the order of ``entries`` as given (it is then
    buffered only where storage order differs, i.e. for mixed element sizes). Returns the file
    size. On any exception the target is untouched and the temp file removed. ``write_behind``
    overlaps writing one tensor with producing the next (see `SafetensorsStreamWriter`).
    """
    if not callable(produce):
        produce = _from_iterable(entries, produce)
    with atomic_path(path, suffix=".safetensors.tmp") as tmp, open(tmp, "wb") as fh:
        writer = SafetensorsStreamWriter(fh, entries, metadata, write_behind=write_behind)
        try:
            for entry in writer.order:
                writer.write(entry.key, produce(entry))
            writer.finish()
        finally:
            writer.close()
        fh.flush()
        return writer.bytes_written


def _from_iterable(
    entries: Sequence[TensorEntry], tensors: Iterable[torch.Tensor]
) -> Callable[[TensorEntry], torch.Tensor]:
    it = iter(tensors)
    pending: dict[str, torch.Tensor] = {}
    keys = iter(e.key for e in entries)

    def produce(entry: TensorEntry) -> torch.Tensor:
        while entry.key not in pending:
            pending[next(keys)] = next(it)
        return pending.pop(entry.key)

    return produce


def write_safetensors(
    path: Path | str,
    items: Iterable[tuple[str, torch.Tensor]],
    *,
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write in-memory ``(key, tensor)`` pairs as a safetensors file (atomically)."""
    pairs = list(items)
    entries = [TensorEntry(k, t.dtype, tuple(t.shape)) for k, t in pairs]
    by_key = dict(pairs)
    return write_safetensors_stream(path, entries, lambda e: by_key[e.key], metadata=metadata)
