"""The live model as the bridge sees it: slot modules and their keys, spot checks against a
checkpoint file, and writing merged tensors into it (from the `cache.TensorCache`).

Each write tells the caller, through ``mark``, what the slot holds: `UNKNOWN` before the write
and the weight after it, so a write that fails midway (CUDA out of memory) leaves the bridge
knowing which slots to redo. The live model's ``state_dict`` keys are checkpoint keys (A1111
wraps its text encoders: ``cond_stage_model.wrapped.transformer...`` for
``cond_stage_model.transformer...``). Which slot a key belongs to is `merging.plan.slot_of`
(the one merge policy). torch and the stdlib only (copied into the WebUI extension).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from autombw_cli.blocks import BASE, UNET_PREFIX, Arch, layout
from autombw_cli.merging.checkpoint_io import checkpoint
from autombw_cli.merging.kernels import add_delta_tensor, merge_tensor
from autombw_cli.merging.plan import TEXT_ENCODER, slot_of
from autombw_cli.webui.bridge.cache import TensorCache
from autombw_cli.webui.bridge.errors import BadRequest, ServerError
from autombw_cli.webui.bridge.state import UNKNOWN, Pair

Mark = Callable[[str, float], None]  # (slot, weight it holds now; UNKNOWN while written)

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


def mix(pair: Pair, a: Tensor, b: Tensor, c: Tensor | None, w: float) -> Tensor:
    """One merged tensor: `merge_tensor` of A and B (and C), or for a LoRA pair A plus ``w``
    times the delta ``b`` (`add_delta_tensor`)."""
    return add_delta_tensor(a, b, w) if pair.lora else merge_tensor(a, b, c, w)


def write_unet_slots(
    unet: torch.nn.Module,
    pair: Pair,
    cache: TensorCache,
    targets: Mapping[str, float],
    applied: Mapping[str, float],
    mark: Mark,
) -> None:
    """Write ``lerp(A, B, w)`` (with C: ``A + (B - C) * w``) into each target slot, one slot
    module at a time (a ``load_state_dict`` on the small slot module, not on the whole model:
    far cheaper, and at most one slot's merged tensors exist at once). ``applied``: what each
    slot held before. A key B or C lacks keeps A's tensor."""
    for slot, w in targets.items():
        module = unet.get_submodule(slot_module(pair.arch, slot))
        live = module.state_dict()
        file_prefix = UNET_PREFIX + slot_module(pair.arch, slot) + "."
        keys = [(file_prefix + k, k) for k in cache.slot_keys[slot]]
        cache.fill(slot, pair, keys, live, held=applied.get(slot, 0.0))
        b_slot = cache.b[slot]
        c_slot = cache.c.get(slot) if pair.c is not None else None
        batch: dict[str, Tensor] = {}
        for key, a in cache.a[slot].items():
            dst = live[key]
            a_dev = a.to(dst.device, non_blocking=True)
            b = b_slot.get(key)
            c = None if c_slot is None else c_slot.get(key)
            if b is None or w == 0.0 or (c_slot is not None and c is None):
                batch[key] = a_dev
            else:
                c_dev = None if c is None else c.to(dst.device, non_blocking=True)
                batch[key] = mix(pair, a_dev, b.to(dst.device, non_blocking=True), c_dev, w)
        mark(slot, UNKNOWN)
        load_into(module, batch)
        mark(slot, w)


def write_text_encoder(
    model: torch.nn.Module,
    pair: Pair,
    cache: TensorCache,
    w: float,
    applied: Mapping[str, float],
    mark: Mark,
) -> None:
    """Write ``lerp(A, B, w)`` (with C: ``A + (B - C) * w``) into every text-encoder tensor
    (``w == 0``: A's originals)."""
    live = model.state_dict()
    pairs = text_encoder_keys(live, pair.arch)
    if not pairs:
        raise BadRequest(
            "the loaded model has no text-encoder keys this bridge recognises",
            kind="Unsupported",
            hint="leave text_encoder_weight unset",
        )
    cache.fill(BASE, pair, pairs, live, held=applied.get(BASE, 0.0), need_b=w != 0.0)
    b_te = cache.b.get(BASE, {})
    c_te = cache.c.get(BASE, {}) if pair.c is not None else None
    batch = {}
    for key, a in cache.a[BASE].items():
        a_dev = a.to(live[key].device)
        b = b_te.get(key)
        c = None if c_te is None else c_te.get(key)
        if b is None or (c_te is not None and c is None):
            batch[key] = a_dev
        else:
            c_dev = None if c is None else c.to(a_dev.device)
            batch[key] = mix(pair, a_dev, b.to(a_dev.device), c_dev, w)
    mark(BASE, UNKNOWN)
    load_into(model, batch)
    mark(BASE, w)
