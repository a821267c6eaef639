"""The seam between the bridge and the program that holds the model: `BridgeHost`.

Two implementations: `a1111_host.A1111Host` (inside AUTOMATIC1111) and `sim.host.SimHost` (the
simulated WebUI). The engine (`core.BridgeCore`) uses nothing else of either. torch and the
stdlib only (copied into the WebUI extension).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch

from autombw_cli.webui.bridge.names import CheckpointRef


class BridgeHost(Protocol):
    """What the bridge needs from the program that holds the model (A1111 or the simulator)."""

    name: str

    @property
    def queue_lock(self) -> AbstractContextManager[Any]:
        """The lock that serializes generation, model loads and merges."""
        ...

    def live_model(self) -> torch.nn.Module | None:
        """The loaded model; its ``state_dict`` keys are checkpoint keys
        (``model.diffusion_model.*`` for the UNet)."""
        ...

    def loaded_checkpoint(self) -> CheckpointRef | None: ...

    def load_checkpoint(self, ref: CheckpointRef) -> None:
        """Load ``ref`` as the WebUI's checkpoint (the host's own loading path)."""
        ...

    def list_checkpoints(self) -> list[CheckpointRef]: ...

    def checkpoint_dir(self) -> Path: ...

    def lora_dir(self) -> Path | None:
        """The folder of LoRA files (A1111: ``--lora-dir``, ``models/Lora``); None: none."""
        ...

    def refresh_checkpoints(self) -> None: ...

    def webui_version(self) -> str | None:
        """The WebUI's own version (A1111: its ``git describe --tags``), None when unknown."""
        ...

    def invalidate_conditioning(self) -> None:
        """Forget cached prompt conditionings: the text encoder's weights changed. (A1111 caches
        them keyed on prompt, steps and checkpoint, not on weights.)"""
        ...
