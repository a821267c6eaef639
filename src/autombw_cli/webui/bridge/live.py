"""The live model as the bridge sees it: slot modules, their keys, writing tensors into them,
and spot checks against a checkpoint file.

The live model's ``state_dict`` keys are checkpoint keys (A1111 wraps its text encoders:
``cond_stage_model.wrapped.transformer...`` for ``cond_stage_model.transformer...``). Which
slot a key belongs to is `merging.plan.slot_of` (the one merge policy). torch and the stdlib
only (copied into the WebUI extension).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from autombw_cli.blocks import UNET_PREFIX, Arch, layout
from autombw_cli.merging.checkpoint_io import checkpoint
from autombw_cli.merging.plan import TEXT_ENCODER, slot_of
from autombw_cli.webui.bridge.errors import ServerError

UNET_MODULE = "model.diffusion_model"


def slot_module(arch: Arch, slot: str) -> str:
    """The UNet submodule of a slot, e.g. ``input_blocks.4`` or ``out``."""
    return layout(arch).slot_prefix(slot)[len(UNET_PREFIX) : -1]


def slot_keys(unet_state: Mapping[str, Tensor], arch: Arch) -> dict[str, list[str]]:
    """Slot -> float state keys of that slot, relative to the slot's submodule."""
    keys: dict[str, list[str]] = {s: [] for s in layout(arch).slots}
    for key, t in unet_state.items():
        slot = slot_of(UNET_PREFIX + key, arch)
        if slot is not None and slot != TEXT_ENCODER and t.is_floating_point():
            keys[slot].append(key[len(slot_module(arch, slot)) + 1 :])
    return {s: ks for s, ks in keys.items() if ks}


def checkpoint_key(live_key: str, arch: Arch) -> str | None:
    """The checkpoint key of a live text-encoder key, or None for other keys (A1111's
    ``wrapped.`` dropped)."""
    ckpt = live_key.replace(".wrapped.", ".")
    return ckpt if slot_of(ckpt, arch) == TEXT_ENCODER else None


def text_encoder_keys(state: Mapping[str, Tensor], arch: Arch) -> list[tuple[str, str]]:
    """``(checkpoint key, live key)`` of every text-encoder tensor of the live model."""
    return [(ckpt, k) for k in state if (ckpt := checkpoint_key(k, arch))]


def probes_match(path: Path, probes: list[tuple[str, Tensor]]) -> bool:
    """Whether each live tensor equals the file's tensor of that key (cast to its dtype)."""
    if not probes:
        return True
    with checkpoint(path) as reader:
        present = set(reader.keys())
        for key, live in probes:
            if key not in present:
                continue
            want = reader.get(key).to(device=live.device, dtype=live.dtype)
            if want.shape != live.shape or not torch.equal(want, live):
                return False
    return True


def unet_matches_file(
    path: Path, model: torch.nn.Module, arch: Arch, keys: Mapping[str, list[str]]
) -> bool:
    """Two tensors per slot (the smallest and a middle-sized one) equal the file's."""
    live = model.get_submodule(UNET_MODULE).state_dict()
    probes = []
    for slot, slot_keys_ in keys.items():
        module = slot_module(arch, slot)
        by_size = sorted(slot_keys_, key=lambda k, m=module: live[f"{m}.{k}"].numel())
        for key in {by_size[0], by_size[len(by_size) // 2]}:
            probes.append((UNET_PREFIX + f"{module}.{key}", live[f"{module}.{key}"]))
    return probes_match(path, probes)


def text_encoder_matches_file(path: Path, model: torch.nn.Module, arch: Arch) -> bool:
    state = model.state_dict()
    probes = [
        (ckpt, state[k])
        for ckpt, k in text_encoder_keys(state, arch)
        if state[k].is_floating_point()
    ][:2]
    return probes_match(path, probes)


def load_into(module: torch.nn.Module, tensors: dict[str, Tensor]) -> None:
    result = module.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise ServerError(
            f"the loaded model has no key {result.unexpected_keys[0]}", kind="ModelMismatch"
        )


def module_device(module: torch.nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
