"""LoRA block weights (issue 15, item 3): placing kohya LoRA/LoCon modules on checkpoint keys (as
A1111 1.10.1's Lora extension does), the deltas (alpha, conv, Tucker, inpainting), refusals,
the LBW vectors and preset lines, the LoRA recipe, and the offline bake through `autombw merge
--lora`, checked tensor by tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from autombw_cli.blocks import BASE, UNET_PREFIX, Arch, Weights, layout
from autombw_cli.errors import ConfigError, ModelMismatchError, WeightsError
from autombw_cli.lbw import LBW_ORDERS, lbw_preset_line, lbw_vector, parse_lbw_line
from autombw_cli.merging.kernels import add_delta_tensor, add_difference_tensor
from autombw_cli.merging.lora import compvis_name, module_delta, network_names, place_lora
from autombw_cli.merging.offline import merge_checkpoints
from autombw_cli.recipe import Formula, Recipe
from autombw_cli.sim.checkpoints import key_shapes, write_random_checkpoint
from autombw_cli.sim.loras import lora_state_dict, write_random_lora
from autombw_cli.webui.bridge.errors import ValidationError
from conftest import cli_exit_code

TE1 = "cond_stage_model.transformer.text_model.encoder.layers."
XL_TE0 = "conditioner.embedders.0.transformer.text_model.encoder.layers."
XL_TE1 = "conditioner.embedders.1.model.transformer.resblocks."
U = UNET_PREFIX

# kohya-ss module names as sd-scripts writes them, and the tensor A1111 1.10.1 patches
SD1_NAMES = {
    "lora_unet_down_blocks_0_attentions_0_proj_in": (U + "input_blocks.1.1.proj_in.weight", None),
    "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q": (
        U + "input_blocks.2.1.transformer_blocks.0.attn1.to_q.weight",
        None,
    ),
    "lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_ff_net_0_proj": (
        U + "input_blocks.8.1.transformer_blocks.0.ff.net.0.proj.weight",
        None,
    ),
    "lora_unet_mid_block_attentions_0_proj_out": (U + "middle_block.1.proj_out.weight", None),
    "lora_unet_mid_block_resnets_1_conv2": (U + "middle_block.2.out_layers.3.weight", None),
    "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0": (
        U + "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0.weight",
        None,
    ),
    "lora_unet_up_blocks_1_attentions_0_proj_in": (U + "output_blocks.3.1.proj_in.weight", None),
    "lora_unet_down_blocks_1_resnets_0_conv1": (U + "input_blocks.4.0.in_layers.2.weight", None),
    "lora_unet_down_blocks_1_resnets_0_conv_shortcut": (
        U + "input_blocks.4.0.skip_connection.weight",
        None,
    ),
    "lora_unet_down_blocks_1_resnets_1_time_emb_proj": (
        U + "input_blocks.5.0.emb_layers.1.weight",
        None,
    ),
    "lora_unet_down_blocks_0_downsamplers_0_conv": (U + "input_blocks.3.0.op.weight", None),
    "lora_unet_up_blocks_0_upsamplers_0_conv": (U + "output_blocks.2.1.conv.weight", None),
    "lora_unet_up_blocks_1_upsamplers_0_conv": (U + "output_blocks.5.2.conv.weight", None),
    "lora_unet_conv_in": (U + "input_blocks.0.0.weight", None),
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (
        TE1 + "0.self_attn.q_proj.weight",
        None,
    ),
    "lora_te_text_model_encoder_layers_11_mlp_fc2": (TE1 + "11.mlp.fc2.weight", None),
}
SDXL_NAMES = {
    "lora_unet_input_blocks_4_1_proj_in": (U + "input_blocks.4.1.proj_in.weight", None),
    "lora_unet_input_blocks_7_1_transformer_blocks_9_attn1_to_k": (
        U + "input_blocks.7.1.transformer_blocks.9.attn1.to_k.weight",
        None,
    ),
    "lora_unet_middle_block_1_transformer_blocks_0_ff_net_2": (
        U + "middle_block.1.transformer_blocks.0.ff.net.2.weight",
        None,
    ),
    "lora_unet_output_blocks_5_1_proj_out": (U + "output_blocks.5.1.proj_out.weight", None),
    "lora_te1_text_model_encoder_layers_0_self_attn_k_proj": (
        XL_TE0 + "0.self_attn.k_proj.weight",
        None,
    ),
    "lora_te2_text_model_encoder_layers_3_self_attn_q_proj": (XL_TE1 + "3.attn.in_proj_weight", 0),
    "lora_te2_text_model_encoder_layers_3_self_attn_v_proj": (XL_TE1 + "3.attn.in_proj_weight", 2),
    "lora_te2_text_model_encoder_layers_3_self_attn_out_proj": (
        XL_TE1 + "3.attn.out_proj.weight",
        None,
    ),
    "lora_te2_text_model_encoder_layers_31_mlp_fc1": (XL_TE1 + "31.mlp.c_fc.weight", None),
}


def _place_one(name: str, arch: Arch) -> tuple[str, int | None]:
    index = network_names(key_shapes(arch, "tiny"))
    from autombw_cli.merging.lora import _place

    target = _place(name, index, sd2=arch is Arch.SD2)
    assert target is not None, name
    return target.key, target.part


@pytest.mark.parametrize(("name", "expected"), list(SD1_NAMES.items()))
def test_sd1_kohya_names_patch_the_key_a1111_patches(name: str, expected: tuple) -> None:  # type: ignore[type-arg]
    assert _place_one(name, Arch.SD1) == expected


@pytest.mark.parametrize(("name", "expected"), list(SDXL_NAMES.items()))
def test_sdxl_kohya_names_patch_the_key_a1111_patches(name: str, expected: tuple) -> None:  # type: ignore[type-arg]
    assert _place_one(name, Arch.SDXL) == expected


def test_sd2_text_encoder_names_reach_the_fused_attention() -> None:
    key, part = _place_one("lora_te_text_model_encoder_layers_5_self_attn_k_proj", Arch.SD2)
    assert (key, part) == ("cond_stage_model.model.transformer.resblocks.5.attn.in_proj_weight", 1)
    assert compvis_name("lora_te_text_model_encoder_layers_5_mlp_fc1", sd2=True) == (
        "model_transformer_resblocks_5_mlp_c_fc"
    )


@pytest.mark.parametrize(
    ("arch", "kind", "n"),
    [
        (Arch.SD1, "lora", 17),
        (Arch.SD1, "locon", 26),
        (Arch.SD2, "lora", 17),
        (Arch.SDXL, "lora", 12),
        (Arch.SDXL, "locon", 20),
    ],
)
def test_every_synthetic_module_lands_and_fills_the_lbw_vector(
    tmp_path: Path, arch: Arch, kind: str, n: int
) -> None:
    """A plain LoRA has modules in exactly the blocks of LBW's short vector, a LoCon in the
    full one's: the block vectors users know fall out of the mapping."""
    path = write_random_lora(tmp_path / "l.safetensors", arch, kind=kind)  # type: ignore[arg-type]
    placed = place_lora(path, key_shapes(arch, "tiny"))
    assert placed.touched == set(LBW_ORDERS[n])
    modules = {k.split(".", 1)[0] for k in lora_state_dict(arch, kind=kind)}  # type: ignore[arg-type]
    assert placed.modules == len(modules)
    assert sum(len(p) for p in placed.patches.values()) == len(modules)


def _parts(up: torch.Tensor, down: torch.Tensor, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"lora_up.weight": up, "lora_down.weight": down, **extra}


def test_alpha_scales_by_alpha_over_rank_and_scale_wins() -> None:
    up, down = torch.randn(6, 4), torch.randn(4, 5)
    plain = module_delta(_parts(up, down), (6, 5), module="m", source="f")
    torch.testing.assert_close(plain, up @ down)
    halved = module_delta(_parts(up, down, alpha=torch.tensor(2.0)), (6, 5), module="m", source="f")
    torch.testing.assert_close(halved, (up @ down) * 0.5)
    scaled = module_delta(
        _parts(up, down, alpha=torch.tensor(2.0), scale=torch.tensor(3.0)),
        (6, 5),
        module="m",
        source="f",
    )
    torch.testing.assert_close(scaled, (up @ down) * 3.0)


def test_locon_3x3_down_with_1x1_up_is_the_composed_convolution() -> None:
    """Applying the delta as one conv equals running ``down`` (3x3) then ``up`` (1x1)."""
    up, down = torch.randn(6, 3, 1, 1), torch.randn(3, 5, 3, 3)
    delta = module_delta(_parts(up, down), (6, 5, 3, 3), module="m", source="f")
    x = torch.randn(1, 5, 8, 8)
    composed = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down, padding=1), up)
    torch.testing.assert_close(torch.nn.functional.conv2d(x, delta, padding=1), composed)


def test_tucker_mid_is_down_mid_up_in_sequence() -> None:
    up, mid, down = torch.randn(6, 3, 1, 1), torch.randn(3, 3, 3, 3), torch.randn(3, 5, 1, 1)
    delta = module_delta(
        _parts(up, down, **{"lora_mid.weight": mid}), (6, 5, 3, 3), module="m", source="f"
    )
    x = torch.randn(1, 5, 8, 8)
    f = torch.nn.functional.conv2d
    composed = f(f(f(x, down), mid, padding=1), up)
    torch.testing.assert_close(f(x, delta, padding=1), composed, rtol=1e-4, atol=1e-4)


def test_inpainting_conv_in_gets_the_delta_zero_padded() -> None:
    up, down = torch.randn(8, 2, 1, 1), torch.randn(2, 4, 3, 3)
    delta = module_delta(_parts(up, down), (8, 9, 3, 3), module="m", source="f")
    assert delta.shape == (8, 9, 3, 3)
    assert torch.count_nonzero(delta[:, 4:]) == 0
    torch.testing.assert_close(
        delta[:, :4], module_delta(_parts(up, down), (8, 4, 3, 3), module="m", source="f")
    )


def test_add_delta_is_the_tail_of_add_difference() -> None:
    """The LoRA kernel rounds like add difference (B - C = delta): the same bits."""
    a = torch.randn(64, 32).half()
    delta = torch.randn(64, 32)
    zero = torch.zeros(64, 32)
    for w in (0.0, 0.3, 1.0, -0.7):
        assert torch.equal(add_delta_tensor(a, delta, w), add_difference_tensor(a, delta, zero, w))
    assert add_delta_tensor(a, delta, 0.0) is a
    assert add_delta_tensor(a, delta, 0.5, torch.float32).dtype == torch.float32


# --- refusals ---------------------------------------------------------------------------------
def _write(tmp_path: Path, tensors: dict[str, torch.Tensor], name: str = "l.safetensors") -> Path:
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def test_an_sd1_lora_on_an_sdxl_checkpoint_is_refused(tmp_path: Path) -> None:
    path = write_random_lora(tmp_path / "sd1.safetensors", Arch.SD1)
    with pytest.raises(ModelMismatchError, match=r"sd1\.safetensors: an SD1/SD2 LoRA .* SDXL"):
        place_lora(path, key_shapes(Arch.SDXL, "tiny"))
    xl = write_random_lora(tmp_path / "xl.safetensors", Arch.SDXL)
    with pytest.raises(ModelMismatchError, match="an SDXL LoRA cannot be applied to an SD1/SD2"):
        place_lora(xl, key_shapes(Arch.SD1, "tiny"))


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("lora_unet_mid_block_attentions_0_proj_in.hada_w1_a", "LoHa"),
        ("lora_unet_mid_block_attentions_0_proj_in.lokr_w1", "LoKr"),
        ("lora_unet_mid_block_attentions_0_proj_in.diff", "full diff"),
        ("lora_unet_mid_block_attentions_0_proj_in.dora_scale", "DoRA"),
    ],
)
def test_lycoris_kinds_are_refused_naming_file_and_key(tmp_path: Path, key: str, kind: str) -> None:
    path = _write(tmp_path, {key: torch.zeros(2, 2)})
    with pytest.raises(ConfigError, match=rf"l\.safetensors: {key} is a LyCORIS {kind} module"):
        place_lora(path, key_shapes(Arch.SD1, "tiny"))


def test_a_module_that_patches_nothing_is_named(tmp_path: Path) -> None:
    tensors = {
        "lora_unet_nowhere_proj.lora_up.weight": torch.zeros(4, 2),
        "lora_unet_nowhere_proj.lora_down.weight": torch.zeros(2, 4),
    }
    with pytest.raises(ModelMismatchError, match="lora_unet_nowhere_proj patches no key"):
        place_lora(_write(tmp_path, tensors), key_shapes(Arch.SD1, "tiny"))


def test_a_delta_that_does_not_fit_its_weight_is_named(tmp_path: Path) -> None:
    name = "lora_unet_mid_block_attentions_0_proj_in"
    tensors = {
        f"{name}.lora_up.weight": torch.zeros(5, 2),
        f"{name}.lora_down.weight": torch.zeros(2, 7),
    }
    with pytest.raises(ModelMismatchError, match=rf"{name} gives a \[5, 7\] delta"):
        place_lora(_write(tmp_path, tensors), key_shapes(Arch.SD1, "tiny"))


def test_a_pickle_is_never_loaded_and_a_truncated_lora_is_named(tmp_path: Path) -> None:
    pt = tmp_path / "l.pt"
    torch.save({"lora_unet_x.alpha": torch.tensor(1.0)}, pt)
    with pytest.raises(ModelMismatchError, match=r"l\.pt: not a readable LoRA"):
        place_lora(pt, key_shapes(Arch.SD1, "tiny"))
    good = write_random_lora(tmp_path / "cut.safetensors", Arch.SD1)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) - 100])  # cut inside the last tensor
    with pytest.raises(ModelMismatchError, match=r"cut\.safetensors: not a readable LoRA"):
        place_lora(good, key_shapes(Arch.SD1, "tiny"))


# --- LBW vectors ------------------------------------------------------------------------------
def test_lbw_17_line_gives_omitted_blocks_0_and_unplaced_slots_1() -> None:
    values = [0.5] + [round(0.1 * i, 1) for i in range(1, 17)]
    name, w = parse_lbw_line("MINE:" + ",".join(map(str, values)), Arch.SD1)
    assert name == "MINE"
    assert w.text_encoder == 0.5
    assert [w[s] for s in LBW_ORDERS[17][1:]] == values[1:]
    for slot in ("IN00", "IN03", "IN06", "IN09", "IN10", "IN11", "OUT00", "OUT01", "OUT02"):
        assert w[slot] == 0.0
    assert w["OUT"] == 1.0 and w["TIME_EMBED"] == 1.0


def test_lbw_vector_is_short_unless_the_lora_has_modules_in_the_omitted_blocks() -> None:
    w = Weights.from_mapping(Arch.SD1, {s: 0.5 for s in layout(Arch.SD1).slots}, text_encoder=1)
    w = w.replace({"OUT": 1.0, "TIME_EMBED": 1.0})
    assert len(lbw_vector(w, LBW_ORDERS[17])) == 17  # a plain LoRA
    assert len(lbw_vector(w, LBW_ORDERS[26])) == 26  # a LoCon, IN00 at 0.5
    assert lbw_preset_line("best run", w, LBW_ORDERS[17]) == "best_run:1" + ",0.5" * 16
    xl = Weights.uniform(Arch.SDXL, 1.0, text_encoder=0.0)
    assert lbw_preset_line("X", xl, LBW_ORDERS[12]) == "X:0" + ",1" * 11
    assert len(lbw_vector(xl, LBW_ORDERS[20])) == 20


def test_lbw_lines_round_trip() -> None:
    for arch, n in ((Arch.SD1, 17), (Arch.SD1, 26), (Arch.SDXL, 12), (Arch.SDXL, 20)):
        values = [round(0.05 * i, 2) for i in range(n)]
        _, w = parse_lbw_line(",".join(map(str, values)), arch)
        assert lbw_vector(w, LBW_ORDERS[n]) == values


def test_lbw_refuses_what_it_cannot_say() -> None:
    with pytest.raises(WeightsError, match="17 or 26 values, not 18"):
        parse_lbw_line(",".join(["1"] * 18), Arch.SD1)
    w = Weights.uniform(Arch.SD1, 0.5)
    with pytest.raises(WeightsError, match="no place for OUT"):
        lbw_vector(w, {"OUT", "IN01"})


# --- recipe, bridge -----------------------------------------------------------------------------
def test_lora_recipe_round_trips_and_hashes_apart() -> None:
    w = Weights.uniform(Arch.SD1, 0.5, text_encoder=1.0)
    recipe = Recipe("a.safetensors", "style.safetensors", "out", w, formula=Formula.LORA)
    assert "merge_mode=LoRA" in recipe.to_text()
    assert Recipe.from_text(recipe.to_text()) == recipe
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_safetensors_metadata(recipe.safetensors_metadata()) == recipe
    ws = Recipe("a.safetensors", "style.safetensors", "out", w)
    assert recipe.content_hash() != ws.content_hash()


# --- the offline bake ---------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    a = write_random_checkpoint(tmp_path / "a.safetensors", Arch.SD1, "tiny", seed=1)
    lora = write_random_lora(tmp_path / "style.safetensors", Arch.SD1, kind="locon", seed=2)
    return a, lora, tmp_path


def test_bake_is_a_plus_strength_times_delta_tensor_by_tensor(files) -> None:  # type: ignore[no-untyped-def]
    a_path, lora, tmp = files
    slots = layout(Arch.SD1).slots
    w = Weights(Arch.SD1, {s: round(i / 30, 3) for i, s in enumerate(slots)}, 0.75)
    recipe = Recipe(a_path.name, lora.name, "out", w, formula=Formula.LORA)
    report = merge_checkpoints(a_path, lora, recipe, tmp / "out.safetensors")
    out, a = load_file(str(report.output)), load_file(str(a_path))
    placed = place_lora(lora, {k: tuple(v.shape) for k, v in a.items()})
    assert set(out) == set(a)
    for key, tensor in out.items():
        if key not in placed.slots:
            assert torch.equal(tensor, a[key]), key
            continue
        slot = placed.slots[key]
        strength = w.text_encoder if slot == BASE else w[slot]
        assert strength is not None
        expected = (placed.delta(key) * strength + a[key].float()).to(a[key].dtype)
        assert torch.equal(tensor, expected), key
    assert report.keys_per_slot[BASE] == sum(1 for s in placed.slots.values() if s == BASE)
    line = (tmp / "out.lbw.txt").read_text().strip()
    assert line.startswith("out:0.75,0,0.033,") and len(line.split(",")) == 26


def test_bake_at_strength_zero_is_a_bit_for_bit(files) -> None:  # type: ignore[no-untyped-def]
    a_path, lora, tmp = files
    recipe = Recipe(
        a_path.name, lora.name, "z", Weights.uniform(Arch.SD1, 0.0), formula=Formula.LORA
    )
    merge_checkpoints(a_path, lora, recipe, tmp / "z.safetensors")
    out, a = load_file(str(tmp / "z.safetensors")), load_file(str(a_path))
    assert all(torch.equal(out[k], a[k]) for k in a)


def test_merge_cli_bakes_an_lbw_line_and_refuses_a_lora_without_the_flag(files, capsys) -> None:  # type: ignore[no-untyped-def]
    a_path, lora, tmp = files
    line = "MINE:1," + ",".join(["0.5"] * 25)
    args = ["merge", str(a_path), str(lora), "-w", line, "-o", str(tmp / "m"), "--lora"]
    assert cli_exit_code(args) == 0
    out = capsys.readouterr().out
    assert "LBW preset: m:1,0.5," in out
    recipe = json.loads((tmp / "m.recipe.json").read_text())
    assert recipe["formula"] == "lora" and recipe["model_b"] == "style.safetensors"
    assert recipe["weights"]["IN00"] == 0.5 and recipe["weights"]["OUT"] == 1.0
    # baked again from its recipe, the same file
    assert (
        cli_exit_code(
            [
                "merge",
                str(a_path),
                str(lora),
                "--recipe",
                str(tmp / "m.recipe.txt"),
                "-o",
                str(tmp / "n"),
            ]
        )
        == 0
    )
    first, again = load_file(str(tmp / "m.safetensors")), load_file(str(tmp / "n.safetensors"))
    assert all(torch.equal(first[k], again[k]) for k in first)
    capsys.readouterr()
    assert cli_exit_code(["merge", str(a_path), str(lora), "-w", "0.5", "-o", str(tmp / "x")]) == 2
    assert "style.safetensors is a LoRA file, not a checkpoint" in capsys.readouterr().err


# --- the bridge -------------------------------------------------------------------------------
@pytest.mark.parametrize("te", [None, 0.4], ids=["unet", "unet+te"])
def test_bridge_live_merge_and_save_equal_the_offline_bake(
    tmp_path: Path, te: float | None
) -> None:
    from autombw_cli.sim.host import SimHost
    from autombw_cli.webui.bridge.core import BridgeCore

    models = tmp_path / "models"
    (models / "Lora").mkdir(parents=True)
    a_path = write_random_checkpoint(models / "A.safetensors", Arch.SD1, "tiny", seed=1)
    lora = write_random_lora(models / "Lora" / "style.safetensors", Arch.SD1, kind="locon")
    slots = layout(Arch.SD1).slots
    w = Weights(
        Arch.SD1, {s: round(0.05 + 0.9 * i / len(slots), 3) for i, s in enumerate(slots)}, te
    )
    out = tmp_path / "baked" / "offline.safetensors"
    out.parent.mkdir()
    merge_checkpoints(a_path, lora, Recipe("A", "style", "o", w, formula=Formula.LORA), out)
    offline, a = load_file(str(out)), load_file(str(a_path))

    host = SimHost(models)
    assert [r.name for r in host.list_checkpoints()] == ["A"]  # the Lora folder is not listed
    core = BridgeCore(host, version="test")
    outcome = core.merge(
        "A", "style", dict(w.values), text_encoder_weight=te, cache_device="cpu", formula="lora"
    )
    assert outcome.formula == "lora" and outcome.model_b == "style"
    assert core.status()["formula"] == "lora"
    model = host.live_model()
    assert model is not None
    live = {k: t.detach().clone() for k, t in model.state_dict().items()}
    saved = load_file(core.save("saved", dtype="keep").path)
    assert set(live) == set(saved) == set(offline)
    for key, want in offline.items():
        assert torch.equal(live[key], want), key
        assert torch.equal(saved[key], want), key
    patched = [k for k in a if not torch.equal(offline[k], a[k])]
    assert any(k.startswith(UNET_PREFIX) for k in patched)
    assert any(not k.startswith(UNET_PREFIX) for k in patched) == (te is not None)
    with safe_open(str(models / "saved.safetensors"), "pt") as f:
        saved_recipe = Recipe.from_safetensors_metadata(f.metadata())
    assert saved_recipe.formula is Formula.LORA and saved_recipe.model_b == "style.safetensors"

    # a second strength vector rewrites only what changed; restore gives A back bit for bit
    again = core.merge(
        "A",
        "style",
        dict(w.replace({"IN04": 0.0}).values),
        text_encoder_weight=te,
        cache_device="cpu",
        formula="lora",
    )
    assert again.changed_blocks == ["IN04"]
    core.restore()
    assert all(torch.equal(t, a[k]) for k, t in model.state_dict().items())


def test_bridge_refuses_a_lora_it_cannot_find_or_place(tmp_path: Path) -> None:
    from autombw_cli.sim.host import SimHost
    from autombw_cli.webui.bridge.core import BridgeCore
    from autombw_cli.webui.bridge.errors import Conflict, UnknownModel

    write_random_checkpoint(tmp_path / "A.safetensors", Arch.SD1, "tiny", seed=1)
    (tmp_path / "Lora").mkdir()
    write_random_lora(tmp_path / "Lora" / "xl.safetensors", Arch.SDXL)
    core = BridgeCore(SimHost(tmp_path), version="test")
    w = dict(Weights.uniform(Arch.SD1, 0.5).values)
    with pytest.raises(UnknownModel, match="model_b: unknown LoRA 'nothere'"):
        core.merge("A", "nothere", w, formula="lora")
    with pytest.raises(Conflict, match="xl: an SDXL LoRA cannot be applied to an SD1/SD2"):
        core.merge("A", "xl", w, formula="lora")
    with pytest.raises(ValidationError, match="model_c is given but the formula is lora"):
        core.merge("A", "xl", w, formula="lora", model_c="A")


def test_weights_lbw_prints_a_recipes_preset_line(files, capsys) -> None:  # type: ignore[no-untyped-def]
    _, _, tmp = files
    w = Weights.uniform(Arch.SD1, 0.5, text_encoder=1.0).replace({"OUT": 1.0, "TIME_EMBED": 1.0})
    w = w.replace({s: 0.0 for s in ("IN00", "IN03", "IN06", "IN09", "IN10", "IN11")})
    w = w.replace({s: 0.0 for s in ("OUT00", "OUT01", "OUT02")})
    recipe = Recipe("a.safetensors", "style.safetensors", "mix", w, formula=Formula.LORA)
    (tmp / "mix.recipe.txt").write_text(recipe.to_text())
    assert cli_exit_code(["weights", "lbw", str(tmp / "mix.recipe.txt")]) == 0
    assert capsys.readouterr().out.strip() == "mix:1" + ",0.5" * 16
    assert cli_exit_code(["weights", "lbw", str(tmp / "mix.recipe.txt"), "--name", "MINE"]) == 0
    assert capsys.readouterr().out.startswith("MINE:1,0.5,")
    bad = recipe.to_text().replace(",1.0,1.0\n", ",0.5,1.0\n")  # OUT at 0.5
    (tmp / "bad.recipe.txt").write_text(bad)
    assert cli_exit_code(["weights", "lbw", str(tmp / "bad.recipe.txt")]) == 2
    assert "no place for OUT" in capsys.readouterr().err


def test_recover_keeps_a_lora_recipe_and_bakes_it(files, capsys) -> None:  # type: ignore[no-untyped-def]
    a_path, lora, tmp = files
    w = Weights.uniform(Arch.SD1, 0.5)
    recipe = Recipe(a_path.name, lora.name, "mix", w, formula=Formula.LORA)
    (tmp / "run.recipe.txt").write_text(recipe.to_text())
    out = tmp / "rec"
    argv = ["recover", str(tmp / "run.recipe.txt"), "--out", str(out), "--merge", str(a_path)]
    assert cli_exit_code([*argv, str(lora), "-o", str(tmp / "rec.safetensors")]) == 0
    assert "merge_mode=LoRA" in (tmp / "rec.recipe.txt").read_text().splitlines()
    baked = load_file(str(tmp / "rec.safetensors"))
    merge_checkpoints(a_path, lora, recipe, tmp / "direct.safetensors")
    direct = load_file(str(tmp / "direct.safetensors"))
    assert all(torch.equal(baked[k], direct[k]) for k in direct)
