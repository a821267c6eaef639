"""The merge policy: which weight each checkpoint key gets.

One rule for every merge autombw does (the offline merge, the bridge's live merge and save, the
simulator's scorer):

- a UNet key (``model.diffusion_model.*``) takes its block slot's weight;
- a text-encoder key takes the text-encoder weight (``BASE``) when the weights have one, else
  it is A's;
- everything else (VAE, other buffers) is A's tensor.

Keys are checkpoint keys. torch-free (the WebUI bridge extension copies this module).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from autombw_cli.blocks import BASE, Arch, Weights, is_text_encoder_key, layout

TEXT_ENCODER = BASE  # the slot name text-encoder keys are reported under

Step = tuple[str, float]  # (slot or BASE, weight): interpolate A and B with this weight


def slot_of(key: str, arch: Arch) -> str | None:
    """The slot whose weight ``key`` takes: a block slot, `TEXT_ENCODER` for a text-encoder
    key, None for a key that is always A's."""
    slot = layout(arch).slot_of(key)
    if slot is not None:
        return slot
    return TEXT_ENCODER if is_text_encoder_key(key, arch) else None


def weight_of(key: str, weights: Weights) -> Step | None:
    """``(slot, weight)`` to interpolate ``key`` with, or None to take A's tensor."""
    slot = slot_of(key, weights.arch)
    if slot is None:
        return None
    if slot == TEXT_ENCODER:
        return None if weights.text_encoder is None else (slot, weights.text_encoder)
    return slot, weights[slot]


def plan_weights(
    keys: Sequence[str], weights: Weights, *, copy: Collection[str] = ()
) -> dict[str, Step | None]:
    """`weight_of` for each key; keys in ``copy`` (e.g. integer buffers such as CLIP position
    ids) always take A's tensor."""
    return {key: None if key in copy else weight_of(key, weights) for key in keys}
