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

from autombw_cli.atomic import atomic_path, clean_stale_temps
from autombw_cli.merging.dtypes import DTYPE_TO_ST, element_size


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
        return n * element_size(self.dtype)


def layout_order(entries: Sequence[TensorEntry]) -> list[TensorEntry]:
    """The order tensors are stored in: largest element size first, then as given."""
    size = {dt: element_size(dt) for dt in {e.dtype for e in entries}}
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


class OrderedTensorWriter:
    """What every streaming format writer shares: tensors arrive in ``order`` and each is
    checked against its declared entry before its bytes go to `_write_data`.

    With ``write_behind`` the bytes of a tensor are written by a helper thread while the caller
    produces the next one (at most one write in flight; the file is still written in order).
    Call `finish` (or `close` on errors) before closing the file.
    """

    def __init__(self, order: Sequence[TensorEntry], *, write_behind: bool = False) -> None:
        if sys.byteorder != "little":  # safetensors and our .ckpt records are little-endian
            raise RuntimeError("the checkpoint writers need a little-endian machine")
        self.order = list(order)
        self._next = 0
        self.bytes_written = 0
        self._pool = ThreadPoolExecutor(1, "checkpoint-write") if write_behind else None
        self._pending: Future[object] | None = None

    def _write_data(self, index: int, entry: TensorEntry, data: torch.Tensor) -> None:
        """Write one tensor's bytes (``data``: flat uint8 on the CPU, possibly empty)."""
        raise NotImplementedError

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
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        self._wait()
        if self._pool is None:
            self._write_data(self._next, entry, data)
        else:  # `data` stays alive in the submitted call until written
            self._pending = self._pool.submit(self._write_data, self._next, entry, data)
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


class SafetensorsStreamWriter(OrderedTensorWriter):
    """Writes a safetensors file into an open binary file; tensors in `layout_order`."""

    def __init__(
        self,
        fh: BinaryIO,
        entries: Sequence[TensorEntry],
        metadata: Mapping[str, str] | None,
        *,
        write_behind: bool = False,
    ) -> None:
        super().__init__(layout_order(entries), write_behind=write_behind)
        self._fh = fh
        header = build_header(self.order, metadata)
        fh.write(header)
        self.bytes_written += len(header)

    def _write_data(self, index: int, entry: TensorEntry, data: torch.Tensor) -> None:
        if entry.nbytes:
            self._fh.write(memoryview(data.numpy()))


WriterFactory = Callable[[BinaryIO, Sequence[TensorEntry]], OrderedTensorWriter]


def write_stream(
    path: Path | str,
    entries: Sequence[TensorEntry],
    produce: Callable[[TensorEntry], torch.Tensor] | Iterable[torch.Tensor],
    make_writer: WriterFactory,
    *,
    suffix: str,
    wrap_file: Callable[[BinaryIO], BinaryIO] | None = None,
) -> int:
    """Write a checkpoint file atomically with ``make_writer(fh, entries)``, producing tensors
    one at a time in the writer's order; returns the file size (see `write_safetensors_stream`).
    ``wrap_file`` may wrap the open file (e.g. to hash what is written)."""
    if not callable(produce):
        produce = _from_iterable(entries, produce)
    clean_stale_temps(Path(path).parent)  # what killed writers left beside earlier outputs
    with atomic_path(path, suffix=suffix) as tmp, open(tmp, "wb") as raw:
        fh = raw if wrap_file is None else wrap_file(raw)
        writer = make_writer(fh, entries)
        try:
            for entry in writer.order:
                writer.write(entry.key, produce(entry))
            writer.finish()
        finally:
            writer.close()
        raw.flush()
        return writer.bytes_written


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
    overlaps writing one tensor with producing the next (see `OrderedTensorWriter`).
    """

    def make_writer(fh: BinaryIO, entries: Sequence[TensorEntry]) -> OrderedTensorWriter:
        return SafetensorsStreamWriter(fh, entries, metadata, write_behind=write_behind)

    return write_stream(path, entries, produce, make_writer, suffix=".safetensors.tmp")


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
