"""Reading checkpoints lazily, and checking that two of them can be merged.

- ``.safetensors``: the JSON header is parsed by hand (key, dtype, shape, byte offsets). By
  default each tensor is read on request with one positional read into a fresh tensor, so
  reading a whole file tensor by tensor (the offline merge, the bridge's save) never holds more
  than one tensor in resident memory. ``mapped=True`` (the bridge's cache, which keeps B's
  tensors anyway) maps the file privately instead, as ``safetensors.safe_open`` does, and each
  tensor is a view of its bytes: pages come straight from the page cache, and the merge that
  reads them runs about 1.7x faster than over freshly read memory (BENCHMARKS.md). A mapped
  tensor keeps the mapping alive, so `close` never invalidates one handed out; writing to it
  changes only this process's copy, never the file. Windows is never mapped (a mapping would
  lock the file against replacement while the WebUI runs).
- ``.ckpt`` / ``.pt`` / ``.pth`` torch pickles: loaded with ``torch.load(weights_only=True)``
  (memory-mapped where the file is in the zip format), taking ``state_dict`` when present. A
  pickle that needs anything beyond plain tensors and containers is refused: loading it would
  run code from the file.

The format is recognised by content, not by the file name. This is the only checkpoint reader:
the offline merge, the WebUI bridge (merge and save) and the simulator all use it, so it keeps
to torch and the stdlib and runs on torch 2.1 and Python 3.10 (A1111's).
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import pickle
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import torch

from autombw_cli.blocks import Arch, detect_arch
from autombw_cli.errors import ConfigError, ModelMismatchError
from autombw_cli.merging.dtypes import ST_TO_DTYPE, element_size

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 100 * 1024 * 1024
ZIP_MAGIC = b"PK\x03\x04"
_HAS_PREADV = hasattr(os, "preadv")  # not on Windows
_MAP_FILES = os.name == "posix"
CHECKPOINT_HINT = "pass a Stable Diffusion checkpoint (.safetensors, or a .ckpt torch pickle)"


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]


class CheckpointReader(Protocol):
    """A checkpoint opened for reading one tensor at a time."""

    path: Path
    format: str  # "safetensors" or "torch"
    metadata: Mapping[str, str]

    def keys(self) -> list[str]: ...

    def shapes(self) -> dict[str, tuple[int, ...]]: ...

    def info(self, key: str) -> TensorInfo: ...

    def get(self, key: str) -> torch.Tensor: ...

    def close(self) -> None: ...


# --- safetensors -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _StEntry:
    info: TensorInfo
    start: int  # absolute file offset
    nbytes: int


def _not_safetensors(path: Path, why: str) -> ModelMismatchError:
    return ModelMismatchError(f"{path}: not a valid checkpoint ({why})", hint=CHECKPOINT_HINT)


def parse_safetensors_header(
    path: Path, fh: IO[bytes]
) -> tuple[dict[str, _StEntry], dict[str, str]]:
    """Parse and validate a safetensors header; raise ModelMismatchError if it is not one."""
    size = os.fstat(fh.fileno()).st_size
    fh.seek(0)
    prefix = fh.read(8)
    if len(prefix) < 8:
        raise _not_safetensors(path, f"only {size} bytes long")
    (n,) = struct.unpack("<Q", prefix)
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
        raise _not_safetensors(path, "no safetensors header at the start of the file")
    raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_safetensors(path, f"safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise _not_safetensors(path, "safetensors header is not a JSON object")
    data_start = 8 + n
    data_len = size - data_start
    metadata_raw = header.pop("__metadata__", None) or {}
    if not isinstance(metadata_raw, dict):
        raise _not_safetensors(path, "__metadata__ is not an object")
    metadata = {str(k): str(v) for k, v in metadata_raw.items()}
    entries: dict[str, _StEntry] = {}
    for key, spec in header.items():
        try:
            dtype = ST_TO_DTYPE[spec["dtype"]]
            shape = tuple(int(d) for d in spec["shape"])
            begin, end = (int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _not_safetensors(path, f"tensor {key!r} has a bad header entry ({exc})") from None
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * element_size(dtype)
        if any(d < 0 for d in shape) or end - begin != nbytes or not 0 <= begin <= end <= data_len:
            raise _not_safetensors(
                path, f"tensor {key!r}: offsets {begin}..{end} do not fit its shape or the file"
            )
        entries[key] = _StEntry(TensorInfo(dtype, shape), data_start + begin, nbytes)
    return entries, metadata


class SafetensorsReader:
    format = "safetensors"

    def __init__(self, path: Path, *, mapped: bool = False) -> None:
        self.path = path
        self._fh = open(path, "rb", buffering=0)  # noqa: SIM115  closed by close()
        self._seek_lock = threading.Lock()
        self._map: mmap.mmap | None = None
        try:
            self._entries, self.metadata = parse_safetensors_header(path, self._fh)
            if mapped and _MAP_FILES and self._entries:
                self._map = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_COPY)
        except BaseException:
            self._fh.close()
            raise

    @property
    def mapped(self) -> bool:
        """Whether tensors are views of a mapping of the file (until `close`)."""
        return self._map is not None

    def keys(self) -> list[str]:
        return list(self._entries)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: e.info.shape for k, e in self._entries.items()}

    def info(self, key: str) -> TensorInfo:
        return self._entries[key].info

    def get(self, key: str) -> torch.Tensor:
        e = self._entries[key]
        if self._map is not None and e.nbytes:
            # a view of the private mapping; it holds a reference to the mapping
            buf = torch.frombuffer(self._map, dtype=torch.uint8, count=e.nbytes, offset=e.start)
        else:
            buf = torch.empty(e.nbytes, dtype=torch.uint8)
            self._read_into(buf, e, key)
        return buf.view(e.info.dtype).reshape(e.info.shape)

    def _read_into(self, buf: torch.Tensor, e: _StEntry, key: str) -> None:
        view = memoryview(buf.numpy())
        got = 0
        while got < e.nbytes:
            n = self._read_at(view[got:], e.start + got)
            if n <= 0:
                raise ModelMismatchError(f"{self.path}: file ends inside tensor {key!r}")
            got += n

    def _read_at(self, view: memoryview, offset: int) -> int:
        if _HAS_PREADV:
            return os.preadv(self._fh.fileno(), [view], offset)
        with self._seek_lock:  # Windows (the WebUI bridge runs there): no positional reads
            self._fh.seek(offset)
            return self._fh.readinto(view) or 0

    def close(self) -> None:
        # The mapping is not closed here: tensors handed out are views of it and keep it
        # alive; it is unmapped when the last of them is freed (closing it now would leave
        # them pointing at unmapped memory).
        self._map = None
        self._fh.close()


# --- torch pickles ---------------------------------------------------------------------------
class TorchCheckpointReader:
    format = "torch"

    def __init__(self, path: Path, *, zip_format: bool) -> None:
        self.path = path
        self.metadata: Mapping[str, str] = {}
        obj = _torch_load_weights_only(path, mmap=zip_format)
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(sd, dict):
            raise ModelMismatchError(
                f"{path}: the pickle holds a {type(obj).__name__}, not a state dict",
                hint=CHECKPOINT_HINT,
            )
        skipped = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
        if skipped:
            log.debug("%s: ignoring %d non-tensor entries: %s", path, len(skipped), skipped[:5])
        self._tensors: dict[str, torch.Tensor] = {
            str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)
        }
        if not self._tensors:
            raise ModelMismatchError(f"{path}: the pickle holds no tensors", hint=CHECKPOINT_HINT)

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(t.shape) for k, t in self._tensors.items()}

    def info(self, key: str) -> TensorInfo:
        t = self._tensors[key]
        return TensorInfo(t.dtype, tuple(t.shape))

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def close(self) -> None:
        self._tensors = {}


def _torch_load_weights_only(path: Path, *, mmap: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next(
            (line for line in lines if "unsupported" in line.lower() or "global" in line.lower()),
            lines[-1] if lines else type(exc).__name__,
        )
        raise ModelMismatchError(
            f"{path}: refused to load this pickle: it needs more than plain tensors "
            f"(torch.load(weights_only=True) said: {reason.rstrip('.')[:300]}). Loading it fully "
            "could run arbitrary code stored in the file, so autombw never does",
            hint="if you trust the file, convert it to .safetensors with a tool you trust, "
            "or use a .safetensors release of the model",
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError) as exc:
        raise ModelMismatchError(
            f"{path}: cannot read as a torch checkpoint ({exc})".replace("\n", " "),
            hint=CHECKPOINT_HINT,
        ) from exc


# --- opening ---------------------------------------------------------------------------------
def open_checkpoint(path: Path | str, *, mapped: bool = False) -> CheckpointReader:
    """Open a checkpoint by content; the caller closes it (or use `checkpoint`). ``mapped``:
    a safetensors file's tensors are views of a private mapping (POSIX; see the module
    docstring), for a caller that keeps them."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: no such file", hint="check the checkpoint path")
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder, not a checkpoint file", hint=CHECKPOINT_HINT)
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read ({exc.strerror})") from None
    if head.startswith(ZIP_MAGIC):
        return TorchCheckpointReader(p, zip_format=True)
    if head[:1] == b"\x80":  # legacy (pre-zip) torch pickle: pickle protocol opcode
        return TorchCheckpointReader(p, zip_format=False)
    return SafetensorsReader(p, mapped=mapped)


@contextlib.contextmanager
def checkpoint(path: Path | str) -> Iterator[CheckpointReader]:
    """``with checkpoint(path) as reader:`` opens and closes a `CheckpointReader`."""
    reader = open_checkpoint(path)
    try:
        yield reader
    finally:
        reader.close()


def read_key_shapes(path: Path | str) -> dict[str, tuple[int, ...]]:
    """Every tensor key of a checkpoint and its shape (safetensors: reads only the header)."""
    with checkpoint(path) as reader:
        return reader.shapes()


# --- validation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mismatch:
    key: str
    problem: str  # "missing in B", "missing in A", "shape"


def find_mismatches(
    shapes_a: Mapping[str, Sequence[int]], shapes_b: Mapping[str, Sequence[int]]
) -> Iterator[Mismatch]:
    """Every key where A and B differ, in sorted key order."""
    for key in sorted(set(shapes_a) | set(shapes_b)):
        if key not in shapes_b:
            yield Mismatch(key, "missing in B")
        elif key not in shapes_a:
            yield Mismatch(key, "missing in A")
        elif tuple(shapes_a[key]) != tuple(shapes_b[key]):
            yield Mismatch(key, "shape")


def check_same_keys_and_shapes(
    shapes_a: Mapping[str, Sequence[int]],
    shapes_b: Mapping[str, Sequence[int]],
    *,
    name_a: str = "model A",
    name_b: str = "model B",
) -> None:
    """Raise ModelMismatchError naming the first key (sorted order) where A and B differ."""
    mismatches = list(find_mismatches(shapes_a, shapes_b))
    if not mismatches:
        return
    first = mismatches[0]
    if first.problem == "missing in B":
        what = f"key {first.key!r} is in {name_a} but not in {name_b}"
    elif first.problem == "missing in A":
        what = f"key {first.key!r} is in {name_b} but not in {name_a}"
    else:
        what = (
            f"key {first.key!r} has shape {list(shapes_a[first.key])} in {name_a} "
            f"but {list(shapes_b[first.key])} in {name_b}"
        )
    more = f" (and {len(mismatches) - 1} more mismatching keys)" if len(mismatches) > 1 else ""
    raise ModelMismatchError(
        f"checkpoints cannot be merged: {what}{more}",
        hint="A and B must be the same architecture and variant "
        "(e.g. both SD1.5; not one inpainting and one normal model)",
    )


def check_mergeable(
    shapes_a: Mapping[str, Sequence[int]],
    shapes_b: Mapping[str, Sequence[int]],
    *,
    name_a: str = "model A",
    name_b: str = "model B",
    prefix: str = "",
) -> Arch:
    """The architecture of A and B; ModelMismatchError when either is no SD checkpoint, they
    are different architectures, or their keys starting with ``prefix`` differ in name or
    shape (the first mismatch, in sorted order, is named)."""
    arch_a = detect_arch(shapes_a, source=name_a)
    arch_b = detect_arch(shapes_b, source=name_b)
    if arch_a is not arch_b:
        first = next(find_mismatches(shapes_a, shapes_b), None)
        raise ModelMismatchError(
            f"checkpoints cannot be merged: {name_a} is {arch_a.value} "
            f"but {name_b} is {arch_b.value}"
            + (f"; first mismatching key: {first.key!r} ({first.problem})" if first else ""),
            hint="merge two models of the same architecture",
        )
    if prefix:
        shapes_a = {k: v for k, v in shapes_a.items() if k.startswith(prefix)}
        shapes_b = {k: v for k, v in shapes_b.items() if k.startswith(prefix)}
    check_same_keys_and_shapes(shapes_a, shapes_b, name_a=name_a, name_b=name_b)
    return arch_a
