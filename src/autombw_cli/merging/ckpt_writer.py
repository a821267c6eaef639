"""A streaming ``.ckpt`` writer: ``{"state_dict": {key: tensor}}`` in torch's zip format,
one tensor at a time, so peak memory stays about one tensor (``torch.save`` needs them all).

The file is what ``torch.save({"state_dict": sd}, f)`` writes and what AUTOMATIC1111 loads: a
zip archive (``torch._C.PyTorchFileWriter``, records 64-byte aligned) holding ``data.pkl``, the
markers ``.format_version``, ``.storage_alignment`` and ``byteorder``, then one record
``data/<n>`` per tensor. ``data.pkl`` needs only keys, dtypes and shapes, so it is pickled first
from placeholders: each tensor is ``torch._utils._rebuild_tensor_v2(<storage n>, 0, shape,
stride, False, OrderedDict())`` with the storage a persistent id ``("storage", torch.<X>Storage,
"n", "cpu", numel)``, the same globals ``torch.save`` uses, so ``torch.load(weights_only=True)``
and A1111's restricted unpickler accept it. Then each tensor's bytes are written as produced.

torch and the stdlib only (the WebUI bridge extension copies this module).
"""

from __future__ import annotations

import collections
import io
import pickle
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import torch

from autombw_cli.merging.dtypes import DTYPE_TO_CKPT_STORAGE
from autombw_cli.merging.safetensors_writer import (
    OrderedTensorWriter,
    SafetensorsStreamWriter,
    TensorEntry,
    write_stream,
)

CheckpointFormat = Literal["safetensors", "ckpt"]
FORMATS: tuple[CheckpointFormat, ...] = ("safetensors", "ckpt")
SUFFIXES: Mapping[CheckpointFormat, str] = {"safetensors": ".safetensors", "ckpt": ".ckpt"}


class _Storage:
    """Placeholder for tensor ``index``'s storage; pickled as a persistent id."""

    def __init__(self, index: int, entry: TensorEntry) -> None:
        self.index = index
        self.entry = entry


class _Tensor:
    """Placeholder that pickles exactly as a contiguous CPU tensor of ``entry`` would."""

    def __init__(self, storage: _Storage) -> None:
        self.storage = storage

    def __reduce__(self) -> tuple[Any, ...]:
        shape = self.storage.entry.shape
        stride = []
        step = 1
        for d in reversed(shape):
            stride.append(step)
            step *= d
        args = (self.storage, 0, tuple(shape), tuple(reversed(stride)), False)
        return torch._utils._rebuild_tensor_v2, (*args, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        if not isinstance(obj, _Storage):
            return None
        entry = obj.entry
        numel = 1
        for d in entry.shape:
            numel *= d
        storage_type = getattr(torch, DTYPE_TO_CKPT_STORAGE[entry.dtype])
        return ("storage", storage_type, str(obj.index), "cpu", numel)


def build_pickle(entries: Sequence[TensorEntry]) -> bytes:
    """``data.pkl`` for ``{"state_dict": {key: tensor}}``; tensor n lives in record ``data/n``."""
    state_dict: dict[str, _Tensor] = {}
    for i, e in enumerate(entries):
        if e.dtype not in DTYPE_TO_CKPT_STORAGE:
            raise TypeError(f"{e.key}: dtype {e.dtype} cannot be stored in a .ckpt")
        if e.key in state_dict:
            raise ValueError(f"duplicate tensor key {e.key!r}")
        state_dict[e.key] = _Tensor(_Storage(i, e))
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({"state_dict": state_dict})
    return buf.getvalue()


class _Counting:
    """The file object PyTorchFileWriter writes through, counting bytes."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.count = 0

    def write(self, data: Any) -> int:
        n = self._fh.write(data)
        self.count += len(memoryview(data).cast("B"))
        return n

    def flush(self) -> None:
        self._fh.flush()


class CkptStreamWriter(OrderedTensorWriter):
    """Writes a ``.ckpt`` into an open binary file; tensors in the order given.

    `finish` or `close` must run while the file is open: they end the zip archive (a torch
    zip writer dropped unfinished after its file closed would abort the process)."""

    def __init__(
        self, fh: BinaryIO, entries: Sequence[TensorEntry], *, write_behind: bool = False
    ) -> None:
        super().__init__(entries, write_behind=write_behind)
        data = build_pickle(self.order)  # before the zip writer exists: it may raise
        self._out = _Counting(fh)
        self._zip: Any = torch._C.PyTorchFileWriter(self._out)
        try:
            self._zip.write_record("data.pkl", data, len(data))
            self._zip.write_record(".format_version", "1", 1)
            self._zip.write_record(".storage_alignment", "64", 2)
            self._zip.write_record("byteorder", sys.byteorder, len(sys.byteorder))
        except BaseException:
            self.close()
            raise

    def _write_data(self, index: int, entry: TensorEntry, data: torch.Tensor) -> None:
        name = f"data/{index}"
        if not entry.nbytes:
            self._zip.write_record(name, b"", 0)
            return
        if data.storage_offset() or data.untyped_storage().nbytes() != entry.nbytes:
            data = data.clone()  # a view into a larger storage: write only its own bytes
        try:
            self._zip.write_record(name, data.untyped_storage(), entry.nbytes)
        except TypeError:  # torch < 2.2 takes a data pointer only
            self._zip.write_record(name, data.data_ptr(), entry.nbytes)

    def finish(self) -> None:
        super().finish()  # closes, which ends the archive
        self.bytes_written = self._out.count

    def close(self) -> None:
        super().close()
        writer, self._zip = self._zip, None
        if writer is not None:
            writer.write_end_of_file()


def write_ckpt_stream(
    path: Path | str,
    entries: Sequence[TensorEntry],
    produce: Callable[[TensorEntry], torch.Tensor] | Iterable[torch.Tensor],
    *,
    write_behind: bool = False,
) -> int:
    """Write a ``.ckpt`` atomically, producing tensors one at a time in the order of
    ``entries``; returns the file size. On any exception the target is untouched."""

    def make_writer(fh: BinaryIO, entries: Sequence[TensorEntry]) -> OrderedTensorWriter:
        return CkptStreamWriter(fh, entries, write_behind=write_behind)

    return write_stream(path, entries, produce, make_writer, suffix=".ckpt.tmp")


def make_writer_factory(
    fmt: CheckpointFormat, metadata: Mapping[str, str] | None, *, write_behind: bool = False
) -> Callable[[BinaryIO, Sequence[TensorEntry]], OrderedTensorWriter]:
    """A function opening the writer of ``fmt`` on a file (a ``.ckpt`` carries no metadata:
    A1111 reads only its ``state_dict``; the recipe files beside it keep the recipe)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; one of {', '.join(FORMATS)}")

    def make(fh: BinaryIO, entries: Sequence[TensorEntry]) -> OrderedTensorWriter:
        if fmt == "ckpt":
            return CkptStreamWriter(fh, entries, write_behind=write_behind)
        return SafetensorsStreamWriter(fh, entries, metadata, write_behind=write_behind)

    return make


def write_checkpoint_stream(
    path: Path | str,
    entries: Sequence[TensorEntry],
    produce: Callable[[TensorEntry], torch.Tensor] | Iterable[torch.Tensor],
    *,
    fmt: CheckpointFormat,
    metadata: Mapping[str, str] | None = None,
    write_behind: bool = False,
    wrap_file: Callable[[BinaryIO], BinaryIO] | None = None,
) -> int:
    """`write_safetensors_stream` or `write_ckpt_stream`, by ``fmt`` (``wrap_file``: see
    `write_stream`)."""
    make = make_writer_factory(fmt, metadata, write_behind=write_behind)
    return write_stream(
        path, entries, produce, make, suffix=f"{SUFFIXES[fmt]}.tmp", wrap_file=wrap_file
    )
