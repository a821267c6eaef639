"""LoRA files: which checkpoint key each LoRA module patches, in which block slot, and by how much.

A LoRA (kohya-ss naming, what AUTOMATIC1111's built-in Lora extension loads) is read from a
``.safetensors`` file only (never a pickle) and placed on a checkpoint's keys the way A1111
1.10.1 places it (``extensions-builtin/Lora/networks.py``):

- module names ``lora_unet_<diffusers name>`` (SD1/SD2: ``down_blocks_0_attentions_0_proj_in``)
  are converted to the ldm names (``input_blocks_1_1_proj_in``) by A1111's table
  (`compvis_name`); names already in ldm form (SDXL: ``lora_unet_input_blocks_4_1_...``) are
  taken as they are. ``lora_te_`` is SD1/SD2's text encoder, ``lora_te1_``/``lora_te2_`` SDXL's
  (CLIP-L and OpenCLIP-G, whose ``q/k/v_proj`` patch thirds of the fused ``in_proj_weight``);
- a module's delta is ``up @ down`` (``lora_mid``: the Tucker/CP rebuild), reshaped to the
  patched weight (a 3x3 LoCon ``down`` with a 1x1 ``up`` included), times ``alpha / rank``
  (``scale`` when the file gives one, else 1 without ``alpha``); an inpainting checkpoint's
  9-channel ``conv_in`` gets the 4-channel delta zero-padded, as A1111 does;
- the slot is the patched key's slot in the merge policy (`merging.plan.slot_of`: the UNet
  block, or ``BASE`` for the text encoders).

Applying strengths is ``W + s[slot] * delta`` (`merging.kernels.add_delta_tensor`). Deltas are
computed on the CPU in float32, modules in sorted name order, so the offline bake and the
bridge get the same bits. LyCORIS LoHa, LoKr, IA3, (IA)^3, full-diff, norm, GLoRA, OFT and DoRA
modules are refused, naming the file and the key. Bundled embeddings (``bundle_emb.*``) are
skipped (a checkpoint cannot hold them). torch and the stdlib only (the bridge copies it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch
from torch import Tensor

from autombw_cli.blocks import UNET_PREFIX, Arch, Weights, detect_arch
from autombw_cli.errors import ConfigError, ModelMismatchError
from autombw_cli.merging.checkpoint_io import SafetensorsReader
from autombw_cli.merging.kernels import add_delta_tensor
from autombw_cli.merging.plan import slot_of, weight_of

LORA_HINT = "pass a kohya-ss LoRA/LoCon .safetensors file (what A1111's Lora extension loads)"
_LORA_PARTS = ("lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "scale")
_PEFT_PARTS = {"lora_B.weight": "lora_up.weight", "lora_A.weight": "lora_down.weight"}
_REFUSED = {  # a part name -> the LyCORIS kind it belongs to
    "hada_w1_a": "LoHa",
    "hada_w1_b": "LoHa",
    "lokr_w1": "LoKr",
    "lokr_w1_a": "LoKr",
    "lokr_w2": "LoKr",
    "lokr_w2_a": "LoKr",
    "on_input": "IA3",
    "weight": "IA3",
    "diff": "full diff",
    "diff_b": "full diff",
    "w_norm": "norm",
    "a1.weight": "GLoRA",
    "oft_blocks": "OFT",
    "oft_diag": "OFT",
    "dora_scale": "DoRA",
}
# A1111's checkpoint prefixes -> its network-name prefixes (``assign_network_names...``)
_NETWORK_PREFIXES = (
    (UNET_PREFIX, "diffusion_model_"),
    ("cond_stage_model.transformer.", "transformer_"),  # SD1 CLIP
    ("cond_stage_model.model.", "model_"),  # SD2 OpenCLIP
    ("conditioner.embedders.0.transformer.", "0_transformer_"),  # SDXL CLIP-L
    ("conditioner.embedders.1.model.", "1_model_"),  # SDXL OpenCLIP-G
)
_RESNET_SUFFIXES = {
    "conv1": "in_layers_2",
    "conv2": "out_layers_3",
    "norm1": "in_layers_0",
    "norm2": "out_layers_0",
    "time_emb_proj": "emb_layers_1",
    "conv_shortcut": "skip_connection",
}
_X_PROJ = re.compile(r"(.*)_([qkv])_proj$")


@dataclass(frozen=True)
class Target:
    """The checkpoint tensor a LoRA module patches: the whole ``key`` or, for a fused
    attention ``in_proj_weight``, the row block ``part`` (0, 1, 2: q, k, v)."""

    key: str
    part: int | None = None


@dataclass(frozen=True)
class Patch:
    """One LoRA module on its target: its tensors by part name and, for a third of a fused
    ``in_proj_weight``, which third."""

    module: str
    parts: Mapping[str, Tensor]
    part: int | None = None


@dataclass(frozen=True)
class PlacedLora:
    """A LoRA placed on one checkpoint: per patched key its slot and the modules that patch it
    (deltas are computed per key on demand, `delta`: all of them at once would take gigabytes
    for a LoCon)."""

    source: str  # the LoRA file's name, for messages and recipes
    arch: Arch
    shapes: Mapping[str, tuple[int, ...]]  # patched key -> its shape
    slots: Mapping[str, str]  # patched key -> slot (a UNet block or BASE)
    patches: Mapping[str, tuple[Patch, ...]]  # patched key -> its modules, by name
    modules: int  # LoRA modules applied

    @property
    def touched(self) -> frozenset[str]:
        """The slots the LoRA has modules in."""
        return frozenset(self.slots.values())

    def patched(
        self, key: str, a: Tensor, weights: Weights, dtype: torch.dtype | None = None
    ) -> Tensor:
        """``key``'s output: A's tensor ``a`` plus the delta at the strength the merge policy
        gives the key (`plan.weight_of`), in ``dtype`` (default A's); A's tensor itself for a
        key the LoRA does not patch or a strength of 0. The offline bake and the bridge's save
        both write this."""
        step = weight_of(key, weights) if key in self.slots else None
        if step is None or step[1] == 0.0 or not a.is_floating_point():
            return a if dtype is None or not a.is_floating_point() else a.to(dtype)
        return add_delta_tensor(a, self.delta(key), step[1], dtype)

    def delta(self, key: str) -> Tensor:
        """The float32 CPU delta of ``key`` at strength 1 (the sum of its modules', in name
        order; the same bits every call)."""
        shape = self.shapes[key]
        total: Tensor | None = None
        for patch in self.patches[key]:
            if patch.part is None:
                d = module_delta(patch.parts, shape, module=patch.module, source=self.source)
            else:
                rows = shape[0] // 3
                third = module_delta(
                    patch.parts, (rows, *shape[1:]), module=patch.module, source=self.source
                )
                d = torch.zeros(shape, dtype=torch.float32)
                d[patch.part * rows : (patch.part + 1) * rows] = third
            total = d if total is None else total.add_(d)
        assert total is not None
        return total


def compvis_name(name: str, *, sd2: bool = False) -> str:
    """A1111's ``convert_diffusers_name_to_compvis``: a kohya module name (without its
    ``.lora_up.weight`` part) as the network name of the ldm module; unknown forms unchanged."""
    m = re.match(r"lora_unet_conv_in(.*)", name)
    if m:
        return f"diffusion_model_input_blocks_0_0{m[1]}"
    m = re.match(r"lora_unet_conv_out(.*)", name)
    if m:
        return f"diffusion_model_out_2{m[1]}"
    m = re.match(r"lora_unet_time_embedding_linear_(\d+)(.*)", name)
    if m:
        return f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"
    m = re.match(r"lora_unet_(down|up)_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name)
    if m:
        block, idx, tail = int(m[2]), int(m[4]), _sub_suffix(m[3], m[5])
        if m[1] == "down":
            return f"diffusion_model_input_blocks_{1 + block * 3 + idx}_{tail}"
        return f"diffusion_model_output_blocks_{block * 3 + idx}_{tail}"
    m = re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", name)
    if m:
        kind, idx, rest = m[1], int(m[2]), m[3]
        suffix = _RESNET_SUFFIXES.get(rest, rest) if kind == "resnets" else rest
        return f"diffusion_model_middle_block_{1 if kind == 'attentions' else idx * 2}_{suffix}"
    m = re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", name)
    if m:
        return f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"
    m = re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", name)
    if m:
        block = int(m[1])
        return f"diffusion_model_output_blocks_{2 + block * 3}_{2 if block > 0 else 1}_conv"
    m = re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", name)
    if m:
        if sd2:
            return f"model_transformer_resblocks_{m[1]}_{_open_clip_part(m[2])}"
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    m = re.match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", name)
    if m:
        return f"1_model_transformer_resblocks_{m[1]}_{_open_clip_part(m[2])}"
    return name


def _sub_suffix(kind: str, rest: str) -> str:
    """``<sub>_<suffix>`` of a down/up block's attention (sub 1) or ResNet (sub 0) module."""
    if kind == "attentions":
        return f"1_{rest}"
    return f"0_{_RESNET_SUFFIXES.get(rest, rest)}"


def _open_clip_part(rest: str) -> str:
    if "mlp_fc1" in rest:
        return rest.replace("mlp_fc1", "mlp_c_fc")
    if "mlp_fc2" in rest:
        return rest.replace("mlp_fc2", "mlp_c_proj")
    return rest.replace("self_attn", "attn")


def network_names(shapes: Mapping[str, Sequence[int]]) -> dict[str, Target]:
    """Every patchable checkpoint weight under A1111's network name for its module
    (``model.diffusion_model.input_blocks.1.1.proj_in.weight`` is
    ``diffusion_model_input_blocks_1_1_proj_in``); a fused ``attn.in_proj_weight`` is under
    ``..._attn_q``/``_k``/``_v`` (A1111 reaches those through ``q_proj``/``k_proj``/...)."""
    out: dict[str, Target] = {}
    for key, shape in shapes.items():
        for prefix, net in _NETWORK_PREFIXES:
            if not key.startswith(prefix) or len(shape) < 2:
                continue
            rest = key[len(prefix) :]
            if rest.endswith(".in_proj_weight"):
                module = net + rest[: -len(".in_proj_weight")].replace(".", "_")
                for part, letter in enumerate("qkv"):
                    out[f"{module}_{letter}"] = Target(key, part)
            elif rest.endswith(".weight"):
                out[net + rest[: -len(".weight")].replace(".", "_")] = Target(key)
            break
    return out


def lora_arch_hint(names: Sequence[str]) -> Arch | None:
    """The architecture a LoRA's module names say it was trained for (None: cannot tell)."""
    if any(n.startswith(("lora_te1_", "lora_te2_")) for n in names):
        return Arch.SDXL
    if any(
        n.startswith(("lora_te_", "lora_unet_down_blocks_", "lora_unet_up_blocks_")) for n in names
    ):
        return Arch.SD1
    return None


def read_lora(path: Path | str, *, source: str | None = None) -> dict[str, dict[str, Tensor]]:
    """A LoRA file's tensors grouped by module: ``{module name: {part: tensor}}`` (``part``:
    ``lora_up.weight``, ``lora_down.weight``, ``lora_mid.weight``, ``alpha``, ``scale``; PEFT's
    ``lora_A``/``lora_B`` renamed). Raises ConfigError for a missing file or a module of a kind
    autombw does not apply, ModelMismatchError for a file that is not safetensors. Messages
    name the file as ``source`` (default: its path)."""
    p = Path(path)
    name = source or str(p)
    if not p.is_file():
        raise ConfigError(f"{name}: no such LoRA file", hint=LORA_HINT)
    try:
        reader = SafetensorsReader(p)
    except ModelMismatchError as exc:
        why = exc.message.split("not a valid checkpoint (", 1)[-1].removesuffix(")")
        raise ModelMismatchError(f"{name}: not a readable LoRA ({why})", hint=LORA_HINT) from None
    try:
        modules: dict[str, dict[str, Tensor]] = {}
        keys = reader.keys()
        for key in keys:
            if key.startswith("bundle_emb."):
                continue
            module, part = _split_key(key)
            part = _PEFT_PARTS.get(part, part)
            if part not in _LORA_PARTS:
                kind = _REFUSED.get(part)
                what = f"a LyCORIS {kind} module" if kind else f"an unknown LoRA part {part!r}"
                raise ConfigError(
                    f"{name}: {key} is {what}; autombw applies LoRA/LoCon modules only "
                    "(lora_up/lora_down[/lora_mid], alpha)",
                    hint="bake it with a tool that supports it, or use a LoRA/LoCon file",
                )
            modules.setdefault(module, {})[part] = reader.get(key).clone()
    finally:
        reader.close()
    if not modules:
        raise ConfigError(
            f"{name}: no LoRA modules (lora_up/lora_down tensors) found", hint=LORA_HINT
        )
    return modules


def _split_key(key: str) -> tuple[str, str]:
    """``lora_unet_x.lora_up.weight`` -> (``lora_unet_x``, ``lora_up.weight``)."""
    module, _, part = key.partition(".")
    return module, part


def place_lora(
    path: Path | str, shapes: Mapping[str, Sequence[int]], *, source: str | None = None
) -> PlacedLora:
    """Place the LoRA at ``path`` on a checkpoint with these key shapes (see the module
    docstring); every module's delta shape is checked here, before any is computed. Raises
    ModelMismatchError for a LoRA of another architecture, a module it cannot place or a delta
    that does not fit its weight."""
    p = Path(path)
    name = source or p.name
    return place_modules(read_lora(p, source=name), shapes, source=name)


def place_modules(
    modules: Mapping[str, Mapping[str, Tensor]],
    shapes: Mapping[str, Sequence[int]],
    *,
    source: str,
) -> PlacedLora:
    """`place_lora` for modules already read (`read_lora`'s form; the simulator makes its
    LoRA in memory)."""
    name = source
    arch = detect_arch(shapes, source="model A")
    hinted = lora_arch_hint(list(modules))
    if hinted is not None and (hinted is Arch.SDXL) != (arch is Arch.SDXL):
        raise ModelMismatchError(
            f"{name}: an {_arch_label(hinted)} LoRA cannot be applied to an "
            f"{_arch_label(arch)} checkpoint",
            hint="use a LoRA trained for model A's architecture",
        )
    index = network_names(shapes)
    patches: dict[str, list[Patch]] = {}
    slots: dict[str, str] = {}
    for module in sorted(modules):
        parts = modules[module]
        target = _place(module, index, sd2=arch is Arch.SD2)
        if target is None:
            raise ModelMismatchError(
                f"{name}: LoRA module {module} patches no key of model A",
                hint="is the LoRA for model A's architecture? (SD1 LoRAs do not fit SDXL)",
            )
        for needed in ("lora_up.weight", "lora_down.weight"):
            if needed not in parts:
                raise ModelMismatchError(f"{name}: LoRA module {module} has no {needed}")
        slot = slot_of(target.key, arch)
        if slot is None:
            raise ModelMismatchError(
                f"{name}: LoRA module {module} patches {target.key}, which is in no block slot"
            )
        shape = tuple(shapes[target.key])
        want = shape if target.part is None else (shape[0] // 3, *shape[1:])
        _check_fits(parts, want, module=module, source=name)
        patches.setdefault(target.key, []).append(Patch(module, dict(parts), target.part))
        slots[target.key] = slot
    return PlacedLora(
        source=name,
        arch=arch,
        shapes=MappingProxyType({k: tuple(shapes[k]) for k in patches}),
        slots=MappingProxyType(slots),
        patches=MappingProxyType({k: tuple(v) for k, v in patches.items()}),
        modules=len(modules),
    )


def _arch_label(arch: Arch) -> str:
    return "SDXL" if arch is Arch.SDXL else "SD1/SD2"


def _place(module: str, index: Mapping[str, Target], *, sd2: bool) -> Target | None:
    """The checkpoint tensor A1111 patches for ``module`` (its fallbacks, in its order)."""
    name = compvis_name(module, sd2=sd2)
    candidates = [name]
    m = _X_PROJ.match(name)
    if m:  # an OpenCLIP q/k/v_proj: a third of the fused in_proj_weight
        candidates.append(f"{m[1]}_{m[2]}")
    if module.startswith("lora_unet_"):
        candidates.append("diffusion_model_" + module[len("lora_unet_") :])
    if module.startswith("lora_te1_text_model"):
        rest = module[len("lora_te1_text_model") :]
        candidates += ["0_transformer_text_model" + rest, "transformer_text_model" + rest]
    for c in candidates:
        if c in index:
            return index[c]
    return None


def _product_shape(parts: Mapping[str, Tensor]) -> tuple[int, ...]:
    """The shape ``up @ down`` (or the ``lora_mid`` rebuild) has, from the parts' shapes."""
    up, down = parts["lora_up.weight"], parts["lora_down.weight"]
    mid = parts.get("lora_mid.weight")
    if mid is not None:
        return (up.shape[0], down.reshape(down.shape[0], -1).shape[1], *mid.shape[2:])
    return (up.shape[0], down.reshape(down.shape[0], -1).shape[1])


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _is_inpainting_pad(product: Sequence[int], shape: Sequence[int]) -> bool:
    """A 4-channel conv_in delta for a 9-channel (inpainting) conv_in: zero-padded, as A1111."""
    return len(shape) == 4 and shape[1] == 9 and _numel(product) * 9 == _numel(shape) * 4


def _check_fits(
    parts: Mapping[str, Tensor], shape: Sequence[int], *, module: str, source: str
) -> None:
    up, down = parts["lora_up.weight"], parts["lora_down.weight"]
    if up.dim() < 2 or down.dim() < 2 or _numel(up.shape[1:]) != down.shape[0]:
        raise ModelMismatchError(
            f"{source}: LoRA module {module}: lora_up {list(up.shape)} and lora_down "
            f"{list(down.shape)} do not multiply (rank mismatch)"
        )
    product = _product_shape(parts)
    if _numel(product) != _numel(shape) and not _is_inpainting_pad(product, shape):
        raise ModelMismatchError(
            f"{source}: LoRA module {module} gives a {list(product)} delta "
            f"({_numel(product)} values) for a weight of shape {list(shape)}",
            hint="is the LoRA for model A's architecture?",
        )


def module_delta(
    parts: Mapping[str, Tensor], shape: Sequence[int], *, module: str, source: str
) -> Tensor:
    """One module's delta at strength 1, float32, in ``shape``: ``up @ down`` (or the
    ``lora_mid`` rebuild) times ``scale``, else ``alpha / rank``, else 1."""
    _check_fits(parts, shape, module=module, source=source)
    up = parts["lora_up.weight"].float()
    down = parts["lora_down.weight"].float()
    mid = parts.get("lora_mid.weight")
    rank = down.shape[0]
    up2, down2 = up.reshape(up.shape[0], -1), down.reshape(rank, -1)
    if mid is not None:
        delta = torch.einsum("n m k l, i n, m j -> i j k l", mid.float(), up2, down2)
    else:
        delta = up2 @ down2
    if _is_inpainting_pad(delta.shape, shape):
        delta = delta.reshape(shape[0], 4, *shape[2:])
        delta = torch.nn.functional.pad(delta, (0, 0, 0, 0, 0, 5))
    delta = delta.reshape(tuple(shape)).contiguous()
    if "scale" in parts:
        factor = float(parts["scale"].item())
    elif "alpha" in parts:
        factor = float(parts["alpha"].item()) / rank
    else:
        factor = 1.0
    return delta.mul_(factor) if factor != 1.0 else delta


def is_lora_file(path: Path | str) -> bool:
    """Whether a file looks like a LoRA (a safetensors header with ``lora_`` module keys)."""
    try:
        reader = SafetensorsReader(Path(path))
    except (OSError, ModelMismatchError):
        return False
    try:
        keys = reader.keys()
        return any(k.startswith(("lora_unet_", "lora_te")) for k in keys)
    finally:
        reader.close()
