"""The bridge's tensor cache: A's original, B's and (add difference) C's tensors per slot, on
one device; for a LoRA pair ``b`` holds the LoRA's float32 deltas instead of B's tensors.

A's tensors are copied from the live model when it holds A's originals (so a restore is bit
for bit), or read from A's file when it does not (``a_from_file``); B's and C's are always read
from their files, in the live model's dtype, under the same device rule (all three live on
`device`). Tensors are grouped by slot (the UNet block slots and
``BASE`` for the text encoder) and keyed by the live model's keys relative to the slot's module.
Checkpoints are read with `merging.checkpoint_io` (the one reader), mapped: the tensors cached
from a file are views of its pages, as with ``safetensors.safe_open``. torch and the stdlib only
(copied into the WebUI extension).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

from autombw_cli.blocks import BASE
from autombw_cli.merging.checkpoint_io import CheckpointReader, open_checkpoint
from autombw_cli.merging.lora import PlacedLora
from autombw_cli.webui.bridge.errors import Conflict, ServerError
from autombw_cli.webui.bridge.names import CheckpointRef
from autombw_cli.webui.bridge.state import Pair

Slot = dict[str, Tensor]  # live key (relative to the slot's module) -> tensor


class TensorCache:
    """A's, B's and C's tensors per slot on `device`, for one pair (a new A starts a new
    cache). `c` stays empty for a weighted sum."""

    def __init__(self, *, device: torch.device | None = None) -> None:
        self.a: dict[str, Slot] = {}
        self.b: dict[str, Slot] = {}
        self.c: dict[str, Slot] = {}
        self.device = device  # None until the first merge chooses one
        self.a_from_file = False  # A's originals come from A's file, not from the live model
        self.slot_keys: dict[str, list[str]] = {}  # slot -> its live keys (the slot module's)
        self.lora: PlacedLora | None = None  # a LoRA pair's placement: `b` holds its deltas
        self._readers: dict[Path, CheckpointReader] | None = None  # open during `reading`

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Within the block, each checkpoint `from_file` reads is opened (its header parsed)
        once, not once per slot."""
        self._readers = {}
        try:
            yield
        finally:
            readers, self._readers = self._readers, None
            for reader in readers.values():
                reader.close()

    def tensors(self) -> Iterator[Tensor]:
        for cache in (self.a, self.b, self.c):
            for slot in cache.values():
                yield from slot.values()

    def nbytes(self, *, device_type: str | None = None) -> int:
        return sum(
            t.numel() * t.element_size()
            for t in self.tensors()
            if device_type is None or t.device.type == device_type
        )

    def move_to(self, device: torch.device) -> None:
        """Keep (and move) every cached tensor on ``device`` from now on."""
        self.device = device
        for cache in (self.a, self.b, self.c):
            for slot, tensors in cache.items():
                if any(t.device != device for t in tensors.values()):
                    cache[slot] = {k: self.put(t) for k, t in tensors.items()}

    def clear(self) -> None:
        self.a.clear()
        self.b.clear()
        self.c.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def put(self, t: Tensor, *, copy: bool = False) -> Tensor:
        """``t`` on the cache's device (a copy when ``copy``: the live model's own tensors)."""
        device = self.device or torch.device("cpu")
        out = t.detach().to(device, copy=copy or t.device != device)
        if device.type == "cpu" and torch.cuda.is_available():
            with contextlib.suppress(RuntimeError):
                out = out.pin_memory()  # faster copies to the GPU when merging
        return out

    def fill(
        self,
        slot: str,
        pair: Pair,
        keys: list[tuple[str, str]],
        live: Mapping[str, Tensor],
        *,
        held: float,
        need_b: bool = True,
    ) -> None:
        """Cache ``slot``'s tensors of A and (with ``need_b``) of B, and of C when the pair has
        one, unless cached already.

        ``keys``: ``(file key, live key)``; ``live``: the live tensors by live key; ``held``:
        the weight the live slot holds. A's originals are copied from the live model while it
        holds them (``held == 0``: a restore is then bit for bit), read from A's file when the
        live model was found not to be A's (`a_from_file`), and otherwise are lost (a 500)."""
        if slot not in self.a:
            if self.a_from_file:
                self.a[slot] = self.from_file(pair.a, keys, live)
            elif held != 0.0:  # the live slot is not A's any more
                what = "text-encoder" if slot == BASE else slot
                raise ServerError(
                    f"A's original {what} tensors are gone from the cache",
                    hint="reload the checkpoint in the WebUI, then merge again",
                )
            else:
                self.a[slot] = {k: self.put(live[k], copy=True) for _, k in keys}
        if need_b and slot not in self.b:
            if pair.lora:
                self.b[slot] = self.lora_deltas(keys)
            else:
                self.b[slot] = self.from_file(pair.b, keys, live)
        if need_b and pair.c is not None and slot not in self.c:
            self.c[slot] = self.from_file(pair.c, keys, live)

    def lora_deltas(self, keys: list[tuple[str, str]]) -> Slot:
        """The LoRA's float32 deltas (strength 1) of the ``(file key, live key)`` keys it
        patches, by live key (computed on the CPU, then moved: the same bits as the bake)."""
        assert self.lora is not None
        placed = self.lora
        return {live: self.put(placed.delta(key)) for key, live in keys if key in placed.slots}

    def from_file(
        self, ref: CheckpointRef, keys: list[tuple[str, str]], live: Mapping[str, Tensor]
    ) -> Slot:
        """``(file key, live key)`` tensors of ``ref``'s file in the live dtype. A key the file
        lacks is left out (e.g. a text-encoder buffer B does not carry: A's value stays); a
        shape that differs from the live model's is a 409 naming the file's checkpoint."""
        out: Slot = {}
        with self._reader(ref.path) as reader:
            present = set(reader.keys())
            for file_key, live_key in keys:
                want = live[live_key]
                if file_key not in present:
                    continue
                t = reader.get(file_key)
                if tuple(t.shape) != tuple(want.shape):
                    raise Conflict(
                        f"{ref.name}: {file_key} has shape {list(t.shape)}, the loaded "
                        f"model has {list(want.shape)}",
                        kind="ModelMismatch",
                    )
                out[live_key] = self.put(t.to(want.dtype))
        return out

    @contextlib.contextmanager
    def _reader(self, path: Path) -> Iterator[CheckpointReader]:
        if self._readers is None:  # outside `reading`: open and close
            reader = open_checkpoint(path, mapped=True)
            try:
                yield reader
            finally:
                reader.close()
            return
        if path not in self._readers:
            self._readers[path] = open_checkpoint(path, mapped=True)
        yield self._readers[path]
