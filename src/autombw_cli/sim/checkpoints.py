"""Synthetic Stable Diffusion checkpoints with the real LDM key names and shapes.

Tests, the simulated WebUI and the benchmarks share these instead of downloading models. Shapes
are generated from the architectures' hyper-parameters (a table generator, not a stored list):

- ``sd1``: SD1.5 (UNet 859,520,964 params, CLIP ViT-L/14 text encoder, KL-f8 VAE, the DDPM
  schedule buffers of ``v1-5-pruned-emaonly``).
- ``sd2``: SD2.x (linear transformer projections, 1024-wide context, OpenCLIP ViT-H text
  encoder under ``cond_stage_model.model.``).
- ``sdxl``: SDXL base 1.0 (UNet with ``label_emb`` 2816 → 1280, CLIP ViT-L and OpenCLIP
  ViT-bigG text encoders under ``conditioner.embedders.{0,1}``, the same VAE).

``scale="tiny"`` keeps every key but shrinks channel widths and vocabularies, so a whole
checkpoint is a few hundred kilobytes to a few megabytes. Random tensors are seeded per key
(``seed`` and the key name), so any key can be produced alone, in any order, identically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from autombw_cli.blocks import Arch

Scale = Literal["full", "tiny"]
Shape = tuple[int, ...]

SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
INT_KEYS_SUFFIX = "embeddings.position_ids"  # int64 buffers (CLIP position ids)


@dataclass(frozen=True)
class UNetSpec:
    model_channels: int
    channel_mult: tuple[int, ...]
    attn_depth: tuple[int, ...]  # transformer depth per level; 0 = no attention at that level
    mid_depth: int
    context_dim: int
    linear_proj: bool  # SD2/SDXL: proj_in/proj_out are Linear, SD1: 1x1 conv
    num_res_blocks: int = 2
    in_channels: int = 4
    out_channels: int = 4
    adm_in_channels: int | None = None  # SDXL label_emb input width


@dataclass(frozen=True)
class ClipSpec:
    """A HF-style CLIP text model (``transformer.text_model.*``)."""

    width: int
    layers: int
    vocab: int
    positions: int = 77


@dataclass(frozen=True)
class OpenClipSpec:
    """An OpenCLIP text tower (``model.*``: resblocks with fused in_proj)."""

    width: int
    layers: int
    vocab: int
    positions: int = 77


@dataclass(frozen=True)
class VaeSpec:
    ch: int
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4


@dataclass(frozen=True)
class ArchSpec:
    unet: UNetSpec
    vae: VaeSpec
    clip: ClipSpec | None  # SD1 / SDXL embedder 0
    open_clip: OpenClipSpec | None  # SD2 / SDXL embedder 1
    schedule_len: int | None  # DDPM buffers (SD1/SD2 checkpoints carry them)


def arch_spec(arch: Arch | str, scale: Scale = "full") -> ArchSpec:
    """The hyper-parameters of one architecture at one scale."""
    arch = Arch(arch)
    if scale not in ("full", "tiny"):
        raise ValueError(f"scale must be 'full' or 'tiny', not {scale!r}")
    tiny = scale == "tiny"
    vae = VaeSpec(ch=4 if tiny else 128)
    if arch is Arch.SD1:
        te = ClipSpec(width=16, layers=12, vocab=64) if tiny else ClipSpec(768, 12, 49408)
        unet = UNetSpec(
            model_channels=8 if tiny else 320,
            channel_mult=(1, 2, 4, 4),
            attn_depth=(1, 1, 1, 0),
            mid_depth=1,
            context_dim=te.width,
            linear_proj=False,
        )
        return ArchSpec(unet, vae, te, None, 16 if tiny else 1000)
    if arch is Arch.SD2:
        ote = OpenClipSpec(width=16, layers=24, vocab=64) if tiny else OpenClipSpec(1024, 24, 49408)
        unet = UNetSpec(
            model_channels=8 if tiny else 320,
            channel_mult=(1, 2, 4, 4),
            attn_depth=(1, 1, 1, 0),
            mid_depth=1,
            context_dim=ote.width,
            linear_proj=True,
        )
        return ArchSpec(unet, vae, None, ote, 16 if tiny else 1000)
    te = ClipSpec(width=16, layers=12, vocab=64) if tiny else ClipSpec(768, 12, 49408)
    ote = OpenClipSpec(width=24, layers=32, vocab=64) if tiny else OpenClipSpec(1280, 32, 49408)
    size_embed = 8 if tiny else 256  # each of the 6 size/crop conditionings
    unet = UNetSpec(
        model_channels=8 if tiny else 320,
        channel_mult=(1, 2, 4),
        attn_depth=(0, 2, 10),
        mid_depth=10,
        context_dim=te.width + ote.width,
        linear_proj=True,
        adm_in_channels=ote.width + 6 * size_embed,
    )
    return ArchSpec(unet, vae, te, ote, None)


# --- shape tables --------------------------------------------------------------------------
class _Table:
    def __init__(self) -> None:
        self.shapes: dict[str, Shape] = {}

    def add(self, key: str, *shape: int) -> None:
        assert key not in self.shapes, key
        self.shapes[key] = tuple(shape)

    def linear(self, p: str, n_out: int, n_in: int, *, bias: bool = True) -> None:
        self.add(f"{p}.weight", n_out, n_in)
        if bias:
            self.add(f"{p}.bias", n_out)

    def conv(self, p: str, n_out: int, n_in: int, k: int) -> None:
        self.add(f"{p}.weight", n_out, n_in, k, k)
        self.add(f"{p}.bias", n_out)

    def norm(self, p: str, n: int) -> None:
        self.add(f"{p}.weight", n)
        self.add(f"{p}.bias", n)


def _unet(t: _Table, s: UNetSpec, prefix: str) -> None:
    mc = s.model_channels
    emb = 4 * mc

    def res(p: str, cin: int, cout: int) -> None:
        t.norm(f"{p}.in_layers.0", cin)
        t.conv(f"{p}.in_layers.2", cout, cin, 3)
        t.linear(f"{p}.emb_layers.1", cout, emb)
        t.norm(f"{p}.out_layers.0", cout)
        t.conv(f"{p}.out_layers.3", cout, cout, 3)
        if cin != cout:
            t.conv(f"{p}.skip_connection", cout, cin, 1)

    def transformer(p: str, ch: int, depth: int) -> None:
        t.norm(f"{p}.norm", ch)
        proj = t.linear if s.linear_proj else (lambda q, o, i: t.conv(q, o, i, 1))
        proj(f"{p}.proj_in", ch, ch)
        for d in range(depth):
            b = f"{p}.transformer_blocks.{d}"
            for attn, kv in (("attn1", ch), ("attn2", s.context_dim)):
                t.linear(f"{b}.{attn}.to_q", ch, ch, bias=False)
                t.linear(f"{b}.{attn}.to_k", ch, kv, bias=False)
                t.linear(f"{b}.{attn}.to_v", ch, kv, bias=False)
                t.linear(f"{b}.{attn}.to_out.0", ch, ch)
            t.linear(f"{b}.ff.net.0.proj", 8 * ch, ch)  # GEGLU: 2 x (4 * ch)
            t.linear(f"{b}.ff.net.2", ch, 4 * ch)
            for n in ("norm1", "norm2", "norm3"):
                t.norm(f"{b}.{n}", ch)
        proj(f"{p}.proj_out", ch, ch)

    t.linear(f"{prefix}time_embed.0", emb, mc)
    t.linear(f"{prefix}time_embed.2", emb, emb)
    if s.adm_in_channels is not None:
        t.linear(f"{prefix}label_emb.0.0", emb, s.adm_in_channels)
        t.linear(f"{prefix}label_emb.0.2", emb, emb)

    t.conv(f"{prefix}input_blocks.0.0", mc, s.in_channels, 3)
    chans = [mc]
    ch = mc
    idx = 1
    for level, mult in enumerate(s.channel_mult):
        for _ in range(s.num_res_blocks):
            p = f"{prefix}input_blocks.{idx}"
            res(f"{p}.0", ch, mult * mc)
            ch = mult * mc
            if s.attn_depth[level]:
                transformer(f"{p}.1", ch, s.attn_depth[level])
            chans.append(ch)
            idx += 1
        if level != len(s.channel_mult) - 1:
            t.conv(f"{prefix}input_blocks.{idx}.0.op", ch, ch, 3)
            chans.append(ch)
            idx += 1

    res(f"{prefix}middle_block.0", ch, ch)
    transformer(f"{prefix}middle_block.1", ch, s.mid_depth)
    res(f"{prefix}middle_block.2", ch, ch)

    idx = 0
    for level, mult in reversed(list(enumerate(s.channel_mult))):
        for i in range(s.num_res_blocks + 1):
            p = f"{prefix}output_blocks.{idx}"
            res(f"{p}.0", ch + chans.pop(), mult * mc)
            ch = mult * mc
            n = 1
            if s.attn_depth[level]:
                transformer(f"{p}.1", ch, s.attn_depth[level])
                n = 2
            if level and i == s.num_res_blocks:
                t.conv(f"{p}.{n}.conv", ch, ch, 3)
            idx += 1

    t.norm(f"{prefix}out.0", mc)
    t.conv(f"{prefix}out.2", s.out_channels, mc, 3)


def _clip(t: _Table, s: ClipSpec, prefix: str) -> None:
    w = s.width
    t.add(f"{prefix}embeddings.position_ids", 1, s.positions)
    t.add(f"{prefix}embeddings.token_embedding.weight", s.vocab, w)
    t.add(f"{prefix}embeddings.position_embedding.weight", s.positions, w)
    for i in range(s.layers):
        p = f"{prefix}encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            t.linear(f"{p}.self_attn.{proj}", w, w)
        t.norm(f"{p}.layer_norm1", w)
        t.linear(f"{p}.mlp.fc1", 4 * w, w)
        t.linear(f"{p}.mlp.fc2", w, 4 * w)
        t.norm(f"{p}.layer_norm2", w)
    t.norm(f"{prefix}final_layer_norm", w)


def _open_clip(t: _Table, s: OpenClipSpec, prefix: str) -> None:
    w = s.width
    t.add(f"{prefix}positional_embedding", s.positions, w)
    t.add(f"{prefix}text_projection", w, w)
    t.add(f"{prefix}logit_scale")
    t.add(f"{prefix}token_embedding.weight", s.vocab, w)
    t.norm(f"{prefix}ln_final", w)
    for i in range(s.layers):
        p = f"{prefix}transformer.resblocks.{i}"
        t.norm(f"{p}.ln_1", w)
        t.add(f"{p}.attn.in_proj_weight", 3 * w, w)
        t.add(f"{p}.attn.in_proj_bias", 3 * w)
        t.linear(f"{p}.attn.out_proj", w, w)
        t.norm(f"{p}.ln_2", w)
        t.linear(f"{p}.mlp.c_fc", 4 * w, w)
        t.linear(f"{p}.mlp.c_proj", w, 4 * w)


def _vae(t: _Table, s: VaeSpec, prefix: str) -> None:
    def res(p: str, cin: int, cout: int) -> None:
        t.norm(f"{p}.norm1", cin)
        t.conv(f"{p}.conv1", cout, cin, 3)
        t.norm(f"{p}.norm2", cout)
        t.conv(f"{p}.conv2", cout, cout, 3)
        if cin != cout:
            t.conv(f"{p}.nin_shortcut", cout, cin, 1)

    def mid(p: str, c: int) -> None:
        res(f"{p}.block_1", c, c)
        t.norm(f"{p}.attn_1.norm", c)
        for name in ("q", "k", "v", "proj_out"):
            t.conv(f"{p}.attn_1.{name}", c, c, 1)
        res(f"{p}.block_2", c, c)

    z, levels = s.z_channels, len(s.ch_mult)
    enc = f"{prefix}encoder"
    t.conv(f"{enc}.conv_in", s.ch, 3, 3)
    cin = s.ch
    for i, mult in enumerate(s.ch_mult):
        cout = s.ch * mult
        for j in range(s.num_res_blocks):
            res(f"{enc}.down.{i}.block.{j}", cin, cout)
            cin = cout
        if i != levels - 1:
            t.conv(f"{enc}.down.{i}.downsample.conv", cin, cin, 3)
    mid(f"{enc}.mid", cin)
    t.norm(f"{enc}.norm_out", cin)
    t.conv(f"{enc}.conv_out", 2 * z, cin, 3)

    dec = f"{prefix}decoder"
    cin = s.ch * s.ch_mult[-1]
    t.conv(f"{dec}.conv_in", cin, z, 3)
    mid(f"{dec}.mid", cin)
    for i in reversed(range(levels)):
        cout = s.ch * s.ch_mult[i]
        for j in range(s.num_res_blocks + 1):
            res(f"{dec}.up.{i}.block.{j}", cin, cout)
            cin = cout
        if i != 0:
            t.conv(f"{dec}.up.{i}.upsample.conv", cin, cin, 3)
    t.norm(f"{dec}.norm_out", cin)
    t.conv(f"{dec}.conv_out", 3, cin, 3)
    t.conv(f"{prefix}quant_conv", 2 * z, 2 * z, 1)
    t.conv(f"{prefix}post_quant_conv", z, z, 1)


def key_shapes(arch: Arch | str, scale: Scale = "full") -> dict[str, Shape]:
    """Every key of a synthetic checkpoint and its shape, in a stable order."""
    arch = Arch(arch)
    spec = arch_spec(arch, scale)
    t = _Table()
    if spec.schedule_len is not None:
        for name in SCHEDULE_BUFFERS:
            t.add(name, spec.schedule_len)
    _unet(t, spec.unet, "model.diffusion_model.")
    if arch is Arch.SDXL:
        assert spec.clip is not None and spec.open_clip is not None
        _clip(t, spec.clip, "conditioner.embedders.0.transformer.text_model.")
        _open_clip(t, spec.open_clip, "conditioner.embedders.1.model.")
    elif arch is Arch.SD2:
        assert spec.open_clip is not None
        _open_clip(t, spec.open_clip, "cond_stage_model.model.")
    else:
        assert spec.clip is not None
        _clip(t, spec.clip, "cond_stage_model.transformer.text_model.")
    _vae(t, spec.vae, "first_stage_model.")
    return t.shapes


def is_int_key(key: str) -> bool:
    """Keys stored as int64 (CLIP position ids); every other synthetic tensor is float."""
    return key.endswith(INT_KEYS_SUFFIX)


def _key_seed(seed: int, key: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def random_tensor(
    key: str, shape: Shape, seed: int, dtype: torch.dtype = torch.float16
) -> torch.Tensor:
    """The tensor ``key`` of the synthetic checkpoint with this seed (same in every process)."""
    if is_int_key(key):
        n = shape[-1] if shape else 1
        return torch.arange(n, dtype=torch.int64).reshape(shape)
    gen = torch.Generator().manual_seed(_key_seed(seed, key))
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * 0.05).to(dtype)


def iter_random_tensors(
    arch: Arch | str, scale: Scale = "tiny", seed: int = 0, dtype: torch.dtype = torch.float16
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, tensor)`` one at a time (for writing full-size checkpoints lazily)."""
    for key, shape in key_shapes(arch, scale).items():
        yield key, random_tensor(key, shape, seed, dtype)


def random_state_dict(
    arch: Arch | str, scale: Scale = "tiny", seed: int = 0, dtype: torch.dtype = torch.float16
) -> dict[str, torch.Tensor]:
    """A whole synthetic checkpoint in memory (``full`` SD1 at fp16 is about 2.1 GB)."""
    return dict(iter_random_tensors(arch, scale, seed, dtype))


def write_checkpoint(
    path: Path | str,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a state dict atomically: ``.safetensors`` (streamed) or ``.ckpt``/``.pt`` (torch
    pickle as ``{"state_dict": ...}``, like LDM training checkpoints)."""
    from autombw_cli.atomic import atomic_path
    from autombw_cli.merging.safetensors_writer import write_safetensors

    p = Path(path)
    if p.suffix in (".ckpt", ".pt", ".pth"):
        with atomic_path(p) as tmp:
            torch.save({"state_dict": dict(state_dict)}, tmp)
        return p
    write_safetensors(p, state_dict.items(), metadata=metadata)
    return p


def write_random_checkpoint(
    path: Path | str,
    arch: Arch | str,
    scale: Scale = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a synthetic ``.safetensors`` checkpoint one tensor at a time (peak ~one tensor)."""
    from autombw_cli.merging.safetensors_writer import TensorEntry, write_safetensors_stream

    shapes = key_shapes(arch, scale)
    entries = [
        TensorEntry(k, torch.int64 if is_int_key(k) else dtype, shape)
        for k, shape in shapes.items()
    ]
    write_safetensors_stream(
        Path(path),
        entries,
        lambda e: random_tensor(e.key, e.shape, seed, dtype),
        metadata=metadata,
    )
    return Path(path)
