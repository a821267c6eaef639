"""Synthetic checkpoints (sim/checkpoints.py): real key names, real SD shapes, tiny variants."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from autombw_cli.blocks import UNET_PREFIX, Arch, detect_arch, is_text_encoder_key, layout
from autombw_cli.sim.checkpoints import (
    key_shapes,
    random_state_dict,
    random_tensor,
    write_checkpoint,
    write_random_checkpoint,
)


def _params(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    return sum(math.prod(s) for k, s in shapes.items() if k.startswith(prefix))


def test_sd15_full_shapes_match_the_published_parameter_counts() -> None:
    shapes = key_shapes(Arch.SD1, "full")
    assert _params(shapes, UNET_PREFIX) == 859_520_964
    te = "cond_stage_model.transformer.text_model."
    assert _params(shapes, te) - 77 == 123_060_480  # minus the int64 position ids
    assert _params(shapes, "first_stage_model.") == 83_653_863
    assert shapes[UNET_PREFIX + "input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert shapes[UNET_PREFIX + "output_blocks.2.1.conv.weight"] == (1280, 1280, 3, 3)
    assert shapes[UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (
        320,
        768,
    )
    assert shapes[UNET_PREFIX + "input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)
    assert shapes[te + "embeddings.token_embedding.weight"] == (49408, 768)


def test_sd2_and_sdxl_full_shapes() -> None:
    sd2 = key_shapes(Arch.SD2, "full")
    assert _params(sd2, UNET_PREFIX) == 865_910_724
    assert sd2[UNET_PREFIX + "input_blocks.1.1.proj_in.weight"] == (320, 320)  # linear
    assert sd2["cond_stage_model.model.ln_final.weight"] == (1024,)
    xl = key_shapes(Arch.SDXL, "full")
    assert _params(xl, UNET_PREFIX) == 2_567_463_684
    assert len(xl) == 2515  # keys in sd_xl_base_1.0.safetensors
    assert xl[UNET_PREFIX + "label_emb.0.0.weight"] == (1280, 2816)
    assert xl[UNET_PREFIX + "output_blocks.2.2.conv.weight"] == (1280, 1280, 3, 3)
    assert xl["conditioner.embedders.1.model.ln_final.weight"] == (1280,)
    assert _params(xl, "conditioner.embedders.1.model.") == 694_659_841


@pytest.mark.parametrize("arch", list(Arch))
def test_tiny_keeps_every_key_and_is_small(arch: Arch) -> None:
    full, tiny = key_shapes(arch, "full"), key_shapes(arch, "tiny")
    assert list(tiny) == list(full)
    assert all(len(tiny[k]) == len(full[k]) for k in full)
    assert sum(math.prod(s) for s in tiny.values()) * 2 < 8_000_000  # a few MB in fp16


@pytest.mark.parametrize("arch", list(Arch))
def test_keys_are_detected_and_every_unet_key_has_one_slot(arch: Arch) -> None:
    shapes = key_shapes(arch, "tiny")
    assert detect_arch(shapes) is arch
    lay = layout(arch)
    unet = [k for k in shapes if k.startswith(UNET_PREFIX)]
    slots = {lay.slot_of(k) for k in unet}
    assert None not in slots
    assert slots == set(lay.slots)  # every slot has keys
    assert any(is_text_encoder_key(k, arch) for k in shapes)
    assert any(k.startswith("first_stage_model.") for k in shapes)


def test_random_tensors_are_seeded_per_key() -> None:
    key = UNET_PREFIX + "out.2.weight"
    shape = key_shapes(Arch.SD1, "tiny")[key]
    assert torch.equal(random_tensor(key, shape, 3), random_tensor(key, shape, 3))
    assert not torch.equal(random_tensor(key, shape, 3), random_tensor(key, shape, 4))
    sd = random_state_dict(Arch.SD1, "tiny", seed=3, dtype=torch.float32)
    assert torch.equal(sd[key], random_tensor(key, shape, 3, torch.float32))
    pos = sd["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    assert pos.dtype == torch.int64 and pos.tolist() == [list(range(77))]


def test_written_checkpoints_read_back_with_the_safetensors_library(tmp_path) -> None:
    sd = random_state_dict(Arch.SDXL, "tiny", seed=5, dtype=torch.bfloat16)
    write_random_checkpoint(tmp_path / "lazy.safetensors", Arch.SDXL, "tiny", 5, torch.bfloat16)
    write_checkpoint(tmp_path / "dict.safetensors", sd, metadata={"note": "x"})
    for name in ("lazy.safetensors", "dict.safetensors"):
        loaded = load_file(tmp_path / name)
        assert list(loaded) != [] and set(loaded) == set(sd)
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_write_checkpoint_ckpt_is_an_ldm_style_pickle(tmp_path) -> None:
    sd = random_state_dict(Arch.SD1, "tiny", seed=1)
    path = write_checkpoint(tmp_path / "m.ckpt", sd)
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"state_dict"}
    assert all(torch.equal(obj["state_dict"][k], sd[k]) for k in sd)
