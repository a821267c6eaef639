"""Checkpoint files for the bridge: lazy tensor reading (the writers are in
`autombw_cli.merging`).

Only torch, safetensors and the standard library (this module is copied into the WebUI
extension). ``.safetensors`` files are read lazily (one tensor at a time through
``safe_open``); ``.ckpt``/``.pt`` files are loaded with ``weights_only=True`` (memory-mapped
where the file format allows).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import Tensor

from autombw_cli.merging.dtypes import ST_TO_DTYPE

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


class TensorFile:
    """A checkpoint opened for reading one tensor at a time (use as a context manager)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._st: Any = None
        self._sd: dict[str, Tensor] | None = None
        if self.path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            self._st = safe_open(str(self.path), framework="pt", device="cpu")
        else:
            self._sd = _load_torch_state_dict(self.path)

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        st, self._st, self._sd = self._st, None, None
        if st is not None and hasattr(st, "__exit__"):
            st.__exit__(None, None, None)

    def tensor_keys(self) -> list[str]:
        if self._st is not None:
            return list(self._st.keys())
        assert self._sd is not None
        return list(self._sd)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._st is not None:
            return tuple(int(d) for d in self._st.get_slice(key).get_shape())
        assert self._sd is not None
        return tuple(self._sd[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        if self._st is not None:
            name = self._st.get_slice(key).get_dtype()
            return ST_TO_DTYPE.get(name, torch.float32)
        assert self._sd is not None
        return self._sd[key].dtype

    def get(self, key: str) -> Tensor:
        if self._st is not None:
            return self._st.get_tensor(key)
        assert self._sd is not None
        return self._sd[key]

    def metadata(self) -> dict[str, str]:
        if self._st is not None:
            return dict(self._st.metadata() or {})
        return {}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: self.shape(k) for k in self.tensor_keys()}


def _load_torch_state_dict(path: Path) -> dict[str, Tensor]:
    """``torch.load(weights_only=True)`` (torch >= 2.1, as in A1111's Python 3.10): a pickle
    that needs anything beyond plain tensors is refused, never loaded fully (that could run
    code stored in the file)."""
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # old (non-zip) serialization cannot be memory-mapped
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line for line in lines if "global" in line.lower()), type(exc).__name__)
        raise ValueError(
            f"{path}: refused to load this pickle: it needs more than plain tensors "
            f"({why.rstrip('.')[:200]}); loading it fully could run code stored in the file. "
            "Use a .safetensors release of the model, or convert it with a tool you trust"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a checkpoint (expected a dict of tensors)")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def read_shapes(path: Path | str) -> dict[str, tuple[int, ...]]:
    """Key → shape of a checkpoint (reads only the header of a ``.safetensors``)."""
    with TensorFile(path) as tf:
        return tf.shapes()


def iter_keys_with_prefix(keys: Iterable[str], prefixes: tuple[str, ...]) -> Iterator[str]:
    return (k for k in keys if k.startswith(prefixes))
