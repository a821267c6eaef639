"""Synthetic LoRA files over the synthetic checkpoints (`sim.checkpoints`), with kohya-ss names.

The names are what kohya-ss sd-scripts writes: SD1/SD2 UNet modules under their diffusers names
(``lora_unet_down_blocks_0_attentions_0_proj_in``), SDXL's under the ldm ones
(``lora_unet_input_blocks_4_1_proj_in``), text encoders as ``lora_te_`` (SD1/SD2) or
``lora_te1_``/``lora_te2_`` (SDXL, HF CLIP names for both towers). The names are made here from
the ldm keys by the *inverse* of A1111's table, written separately from
`merging.lora.compvis_name`, so placing a synthetic LoRA is a real check of that mapping.

Kinds: ``lora`` (the transformer blocks' linear layers and 1x1 projections, text encoders),
``locon`` (also every ResNet conv, the down/upsamplers and ``conv_in``: 3x3 ``lora_down`` with
a 1x1 ``lora_up``, a few with a Tucker ``lora_mid``). Tensors are seeded per key, like the
checkpoints.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from autombw_cli.blocks import UNET_PREFIX, Arch
from autombw_cli.sim.checkpoints import Scale, key_shapes

LoraKind = Literal["lora", "locon"]
_RESNET_NAMES = {
    "in_layers.2": "conv1",
    "out_layers.3": "conv2",
    "emb_layers.1": "time_emb_proj",
    "skip_connection": "conv_shortcut",
}


def kohya_name(key: str, arch: Arch) -> str | None:
    """The kohya module name of a checkpoint weight key (None: kohya never trains it)."""
    if not key.endswith(".weight") and not key.endswith(".in_proj_weight"):
        return None
    if key.startswith(UNET_PREFIX):
        return _unet_name(key[len(UNET_PREFIX) : -len(".weight")], arch)
    te = _te_name(key, arch)
    return te


def _unet_name(rest: str, arch: Arch) -> str | None:
    if arch is Arch.SDXL:  # kohya writes SDXL's UNet in ldm names
        return "lora_unet_" + rest.replace(".", "_")
    if rest == "input_blocks.0.0":
        return "lora_unet_conv_in"
    m = re.fullmatch(r"(input_blocks|output_blocks|middle_block)\.?(\d*)\.(\d+)\.(.+)", rest)
    if m is None:
        return None
    where, n, sub, tail = m[1], int(m[2] or 0), int(m[3]), m[4]
    if where == "input_blocks":
        block, idx = (n - 1) // 3, (n - 1) % 3
        if idx == 2:
            return f"lora_unet_down_blocks_{block}_downsamplers_0_conv"
        return _part(f"down_blocks_{block}", sub == 1, idx, tail)
    if where == "middle_block":
        n = sub
        if n == 1:
            return _part("mid_block", True, 0, tail)
        return _part("mid_block", False, n // 2, tail)
    block, idx = n // 3, n % 3
    if tail == "conv":  # output_blocks.2.1.conv / 5.2.conv / 8.2.conv
        return f"lora_unet_up_blocks_{block}_upsamplers_0_conv"
    return _part(f"up_blocks_{block}", sub == 1, idx, tail)


def _part(block: str, attention: bool, idx: int, tail: str) -> str:
    if attention:
        return f"lora_unet_{block}_attentions_{idx}_{tail.replace('.', '_')}"
    return f"lora_unet_{block}_resnets_{idx}_{_RESNET_NAMES.get(tail, tail).replace('.', '_')}"


def _te_name(key: str, arch: Arch) -> str | None:
    m = re.match(
        r"(?:cond_stage_model|conditioner\.embedders\.0)\.transformer\.(text_model\..+)\.weight$",
        key,
    )
    if m and arch is not Arch.SD2:
        prefix = "lora_te1_" if arch is Arch.SDXL else "lora_te_"
        return prefix + m[1].replace(".", "_")
    m = re.match(
        r"(?:cond_stage_model|conditioner\.embedders\.1)\.model\.transformer\.resblocks\.(\d+)\.(.+)$",
        key,
    )
    if m:  # OpenCLIP: kohya writes the HF CLIP names
        prefix = "lora_te2_" if arch is Arch.SDXL else "lora_te_"
        layer, tail = m[1], m[2]
        names = {
            "attn.in_proj_weight": ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj"),
            "attn.out_proj.weight": ("self_attn_out_proj",),
            "mlp.c_fc.weight": ("mlp_fc1",),
            "mlp.c_proj.weight": ("mlp_fc2",),
        }.get(tail)
        if names is None:
            return None
        return ",".join(f"{prefix}text_model_encoder_layers_{layer}_{n}" for n in names)
    return None


def _trained(key: str, kind: LoraKind) -> bool:
    """Whether a LoRA of ``kind`` has a module for this checkpoint key."""
    if not key.startswith(UNET_PREFIX):
        return bool(re.search(r"(self_attn|mlp\.fc|attn\.in_proj|attn\.out_proj|mlp\.c_)", key))
    if ".transformer_blocks." in key or re.search(r"\.proj_(in|out)\.weight$", key):
        return not key.endswith(("norm1.weight", "norm2.weight", "norm3.weight"))
    if kind == "lora":
        return False
    return bool(
        re.search(
            r"(in_layers\.2|out_layers\.3|emb_layers\.1|skip_connection|op|conv)\.weight$", key
        )
        or key == UNET_PREFIX + "input_blocks.0.0.weight"
    )


def _seeded(seed: int, name: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
    digest = hashlib.blake2b(f"lora:{seed}:{name}".encode(), digest_size=8).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randn(shape, generator=gen, dtype=torch.float32) * std


def lora_state_dict(
    arch: Arch | str, scale: Scale = "tiny", **options: Any
) -> dict[str, torch.Tensor]:
    """A kohya-named LoRA over the synthetic checkpoint of ``arch``/``scale`` (``options``:
    `lora_for_shapes`'s)."""
    return lora_for_shapes(key_shapes(Arch(arch), scale), Arch(arch), **options)


def lora_for_shapes(
    shapes: Mapping[str, tuple[int, ...]],
    arch: Arch,
    *,
    seed: int = 0,
    rank: int = 4,
    alpha: float = 2.0,
    kind: LoraKind = "lora",
    dtype: torch.dtype = torch.float16,
) -> dict[str, torch.Tensor]:
    """A kohya-named LoRA over any checkpoint with these key shapes (e.g. a real one's)."""
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if len(shape) < 2 or not _trained(key, kind):
            continue
        names = kohya_name(key, arch)
        if names is None:
            continue
        split = names.split(",")
        rows = shape[0] // len(split)
        for i, name in enumerate(split):
            n_in = shape[1]
            r = min(rank, rows, n_in)
            conv3 = len(shape) == 4 and shape[2] > 1
            tucker = conv3 and kind == "locon" and i == 0 and hash_bit(seed, name)
            if tucker:
                down = _seeded(seed, name + ".down", (r, n_in, 1, 1), 0.1)
                mid = _seeded(seed, name + ".mid", (r, r, *shape[2:]), 0.1)
                out[f"{name}.lora_mid.weight"] = mid.to(dtype)
            elif len(shape) == 4:
                down = _seeded(seed, name + ".down", (r, n_in, *shape[2:]), 0.1)
            else:
                down = _seeded(seed, name + ".down", (r, n_in), 0.1)
            up_shape = (rows, r, 1, 1) if len(shape) == 4 else (rows, r)
            out[f"{name}.lora_down.weight"] = down.to(dtype)
            out[f"{name}.lora_up.weight"] = _seeded(seed, name + ".up", up_shape, 0.1).to(dtype)
            out[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


def hash_bit(seed: int, name: str) -> bool:
    """A stable coin flip per module (which 3x3 LoCon modules get a Tucker ``lora_mid``)."""
    return hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=1).digest()[0] % 2 == 0


def write_random_lora(
    path: Path | str,
    arch: Arch | str,
    scale: Scale = "tiny",
    *,
    seed: int = 0,
    kind: LoraKind = "lora",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write `lora_state_dict` as a ``.safetensors`` LoRA."""
    from autombw_cli.merging.safetensors_writer import write_safetensors

    p = Path(path)
    write_safetensors(
        p, lora_state_dict(arch, scale, seed=seed, kind=kind).items(), metadata=metadata
    )
    return p
