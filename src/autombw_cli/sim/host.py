"""The simulated WebUI's model host: a folder of checkpoints and one loaded torch module.

`SimHost` implements the bridge's `BridgeHost`, so the simulator runs the very same
`BridgeCore` as the A1111 extension. Loading a checkpoint builds a fresh module whose
``state_dict`` keys are the checkpoint keys, and tells every ``on_model_loaded`` listener (the
bridge marks its merge lost), as A1111's ``script_callbacks.on_model_loaded`` does.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import torch

from autombw_cli import __version__
from autombw_cli.merging.checkpoint_io import checkpoint
from autombw_cli.webui.bridge.names import CHECKPOINT_SUFFIXES, CheckpointRef, find_checkpoint

LORA_FOLDER = "Lora"  # the simulator's LoRA files: <model_dir>/Lora (not checkpoints)
HASH_LIMIT_BYTES = 256 << 20  # hash files up to this size at refresh (A1111 hashes lazily)


def module_from_state_dict(state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """A module tree whose ``state_dict()`` has exactly these keys (float tensors become
    parameters, others buffers)."""
    root = torch.nn.Module()
    for key, tensor in state.items():
        *path, leaf = key.split(".")
        mod = root
        for part in path:
            child = mod._modules.get(part)
            if child is None:
                child = torch.nn.Module()
                mod.add_module(part, child)
            mod = child
        if tensor.is_floating_point():
            mod.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))
        else:
            mod.register_buffer(leaf, tensor)
    return root


SIM_WEBUI_VERSION = f"autombw-sim {__version__}"  # also in every render's info["version"]


class SimHost:
    """Checkpoints in ``model_dir``; one of them loaded as a torch module."""

    name = "sim"

    def __init__(
        self,
        model_dir: Path,
        *,
        lock: threading.Lock | None = None,
        lora_dir: Path | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self._lora_dir = Path(lora_dir) if lora_dir is not None else self.model_dir / LORA_FOLDER
        self._lock = lock or threading.Lock()
        self._refs: list[CheckpointRef] = []
        self._model: torch.nn.Module | None = None
        self._loaded: CheckpointRef | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._load_count = 0
        # A1111's StableDiffusionProcessing.cached_c / cached_uc: [the parameters, the
        # conditioning] of the last prompt encoded, keyed on prompt, steps and checkpoint,
        # not on weights (modules/processing.py get_conds_with_caching)
        self.cached_c: list[Any] = [None, None]
        self.cached_uc: list[Any] = [None, None]
        self.refresh_checkpoints()

    # --- BridgeHost ---------------------------------------------------------------------
    @property
    def queue_lock(self) -> threading.Lock:
        return self._lock

    def live_model(self) -> torch.nn.Module | None:
        return self._model

    def loaded_checkpoint(self) -> CheckpointRef | None:
        return self._loaded

    def load_checkpoint(self, ref: CheckpointRef) -> None:
        with checkpoint(ref.path) as reader:
            state = {k: reader.get(k).clone() for k in reader.keys()}  # noqa: SIM118
        self._model = module_from_state_dict(state)
        self._loaded = ref
        self._load_count += 1
        for listener in list(self._listeners):
            listener(f"the WebUI loaded {ref.title}")

    def list_checkpoints(self) -> list[CheckpointRef]:
        return list(self._refs)

    def checkpoint_dir(self) -> Path:
        return self.model_dir

    def lora_dir(self) -> Path:
        return self._lora_dir

    def webui_version(self) -> str:
        return SIM_WEBUI_VERSION

    def invalidate_conditioning(self) -> None:
        """Like the A1111 host: the cached conditionings back to ``[None, None]``."""
        self.cached_c = [None, None]
        self.cached_uc = [None, None]

    def refresh_checkpoints(self) -> None:
        refs = []
        for path in sorted(self.model_dir.rglob("*")):
            if path.suffix.lower() not in CHECKPOINT_SUFFIXES or not path.is_file():
                continue
            if any(part.startswith(".") for part in path.relative_to(self.model_dir).parts):
                continue  # temp files of atomic writes
            if path.is_relative_to(self._lora_dir):
                continue  # LoRAs are not checkpoints
            rel = path.relative_to(self.model_dir).as_posix()
            sha = _sha256(path) if path.stat().st_size <= HASH_LIMIT_BYTES else None
            short = sha[:10] if sha else None
            title = f"{rel} [{short}]" if short else rel
            model_name = rel.rsplit(".", 1)[0].replace("/", "_")
            refs.append(CheckpointRef(title=title, name=model_name, path=path, sha256=sha))
        self._refs = refs

    # --- simulator extras ---------------------------------------------------------------
    def cached_conditioning(self, which: str, params: Hashable, compute: Callable[[], Any]) -> Any:
        """A1111's get_conds_with_caching: the cached conditioning when ``params`` (prompt,
        steps, checkpoint...) equal the last ones, else ``compute()`` (which then is cached).
        ``which``: "c" (prompt) or "uc" (negative prompt)."""
        cache = self.cached_c if which == "c" else self.cached_uc
        if cache[0] is not None and cache[0] == params:
            return cache[1]
        cache[1] = compute()
        cache[0] = params
        return cache[1]

    def on_model_loaded(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def find(self, name: str) -> CheckpointRef | None:
        return find_checkpoint(name, self._refs)

    def unload(self) -> None:
        """Forget the loaded model (a WebUI restart); listeners are told."""
        self._model = None
        self._loaded = None
        self.invalidate_conditioning()  # a new process starts with empty caches
        for listener in list(self._listeners):
            listener("the WebUI restarted")

    @property
    def load_count(self) -> int:
        return self._load_count


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
