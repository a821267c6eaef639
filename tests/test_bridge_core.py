"""BridgeCore in-process over the simulator's host (tiny SD1 and SDXL checkpoints with the real
LDM key names): bit-exact restore, changed-blocks-only writes, pair switches, lost merges, flat
cache accounting, and saving into the checkpoint folder only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from autombw_cli.blocks import BASE, UNET_PREFIX, Arch, is_text_encoder_key, layout
from autombw_cli.merging.kernels import lerp_tensor
from autombw_cli.recipe import Recipe, read_recipe_file
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from autombw_cli.sim.host import SimHost
from autombw_cli.webui.bridge.core import BridgeCore
from autombw_cli.webui.bridge.errors import BridgeError

SEEDS = {"simA": 1, "simB": 2, "simC": 3}


def make_world(folder: Path, arch: Arch) -> tuple[SimHost, BridgeCore]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, seed in SEEDS.items():
        write_checkpoint(folder / f"{name}.safetensors", random_state_dict(arch, "tiny", seed))
    host = SimHost(folder)
    core = BridgeCore(host, version="test")
    host.on_model_loaded(core.mark_lost)
    return host, core


def uniform(arch: Arch, w: float) -> dict[str, float]:
    return {s: w for s in layout(arch).slots}


def live_state(host: SimHost) -> dict[str, torch.Tensor]:
    model = host.live_model()
    assert model is not None
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def expected_merge(arch: Arch, weights: dict[str, float]) -> dict[str, torch.Tensor]:
    a = random_state_dict(arch, "tiny", SEEDS["simA"])
    b = random_state_dict(arch, "tiny", SEEDS["simB"])
    lay = layout(arch)
    out = {}
    for k, t in a.items():
        slot = lay.slot_of(k)
        out[k] = lerp_tensor(t, b[k], weights[slot]) if slot else t
    return out


@pytest.fixture(scope="module")
def refusing_core(tmp_path_factory: pytest.TempPathFactory) -> BridgeCore:
    """One world for the tests whose requests are all refused (nothing in it changes)."""
    _, core = make_world(tmp_path_factory.mktemp("refusals"), Arch.SD1)
    core.merge("simA", "simB", uniform(Arch.SD1, 0.5))
    return core


@pytest.fixture(params=[Arch.SD1, Arch.SDXL], ids=["sd1", "sdxl"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[SimHost, BridgeCore, Arch]:
    host, core = make_world(tmp_path, request.param)
    return host, core, request.param


def test_merge_status_restore_is_bit_exact(world: tuple[SimHost, BridgeCore, Arch]) -> None:
    host, core, arch = world
    original = random_state_dict(arch, "tiny", SEEDS["simA"])
    weights = {s: round(0.1 + 0.8 * i / 30, 3) for i, s in enumerate(layout(arch).slots)}

    out = core.merge("simA", "simB", weights)
    assert out.arch == arch.value
    assert out.changed_blocks == list(layout(arch).slots)
    live = live_state(host)
    expected = expected_merge(arch, weights)
    for key, t in expected.items():
        assert torch.equal(live[key], t), key
    status = core.status()
    assert status["merge_id"] == out.merge_id and status["merge_live"] is True
    assert status["weights"] == weights
    assert status["model_a"]["file"] == "simA.safetensors"
    assert status["cache_bytes"] > 0

    core.restore()
    live = live_state(host)
    for key, t in original.items():
        assert torch.equal(live[key], t), key
    assert core.status()["merge_id"] is None


def test_only_changed_blocks_are_written(
    world: tuple[SimHost, BridgeCore, Arch], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, core, arch = world
    slots = layout(arch).slots
    core.merge("simA", "simB", uniform(arch, 0.5))
    before = live_state(host)

    written: list[str] = []
    unet = host.live_model().get_submodule("model.diffusion_model")
    names = {id(m): n for n, m in unet.named_modules()}
    real = torch.nn.Module.load_state_dict

    def spy(module, state, strict=True, assign=False):  # records what is written, writes it
        prefix = names[id(module)]
        written.extend(f"{prefix}.{k}" if prefix else k for k in state)
        return real(module, state, strict=strict, assign=assign)

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", spy)
    changed = {slots[1]: 0.25, "M00": 0.9}
    out = core.merge("simA", "simB", {**uniform(arch, 0.5), **changed})
    assert sorted(out.changed_blocks) == sorted(changed)
    lay = layout(arch)
    assert written and {lay.slot_of(UNET_PREFIX + k) for k in written} == set(changed)
    after = live_state(host)
    for key, t in before.items():
        if lay.slot_of(key) in changed:
            continue
        assert torch.equal(after[key], t), key
    assert not torch.equal(
        after[UNET_PREFIX + "middle_block.0.in_layers.2.weight"],
        before[UNET_PREFIX + "middle_block.0.in_layers.2.weight"],
    )

    written.clear()
    again = core.merge("simA", "simB", {**uniform(arch, 0.5), **changed})
    assert again.changed_blocks == [] and written == []
    assert again.merge_id != out.merge_id


def test_changing_b_keeps_a_and_rewrites_non_zero_slots(tmp_path: Path) -> None:
    host, core = make_world(tmp_path, Arch.SD1)
    weights = {**uniform(Arch.SD1, 0.0), "IN01": 0.5, "OUT": 1.0}
    core.merge("simA", "simB", weights)
    out = core.merge("simA", "simC", weights)
    assert sorted(out.changed_blocks) == ["IN01", "OUT"]
    c = random_state_dict(Arch.SD1, "tiny", SEEDS["simC"])
    a = random_state_dict(Arch.SD1, "tiny", SEEDS["simA"])
    live = live_state(host)
    key = UNET_PREFIX + "out.2.weight"
    assert torch.equal(live[key], c[key])
    key = UNET_PREFIX + "input_blocks.1.0.in_layers.2.weight"
    assert torch.equal(live[key], lerp_tensor(a[key], c[key], 0.5))
    assert core.status()["model_b"]["file"] == "simC.safetensors"


def test_switching_a_loads_it_as_the_webui_checkpoint(tmp_path: Path) -> None:
    host, core = make_world(tmp_path, Arch.SD1)
    core.merge("simA", "simB", uniform(Arch.SD1, 0.3))
    loads = host.load_count
    core.merge("simC", "simB", uniform(Arch.SD1, 0.3))
    assert host.load_count == loads + 1
    assert host.loaded_checkpoint().name == "simC"
    assert core.status()["merge_live"] is True  # our own load does not count as lost


def test_text_encoder_weight_merges_text_encoder_only_when_given(tmp_path: Path) -> None:
    host, core = make_world(tmp_path, Arch.SD1)
    a = random_state_dict(Arch.SD1, "tiny", SEEDS["simA"])
    b = random_state_dict(Arch.SD1, "tiny", SEEDS["simB"])
    te_key = next(k for k in a if is_text_encoder_key(k, Arch.SD1) and k.endswith("fc1.weight"))
    core.merge("simA", "simB", uniform(Arch.SD1, 0.5))
    assert torch.equal(live_state(host)[te_key], a[te_key])
    out = core.merge("simA", "simB", uniform(Arch.SD1, 0.5), text_encoder_weight=0.5)
    assert out.changed_blocks == [BASE]
    assert torch.equal(live_state(host)[te_key], lerp_tensor(a[te_key], b[te_key], 0.5))
    core.restore()
    assert torch.equal(live_state(host)[te_key], a[te_key])


def test_reload_by_the_host_marks_the_merge_lost(tmp_path: Path) -> None:
    host, core = make_world(tmp_path, Arch.SD1)
    out = core.merge("simA", "simB", uniform(Arch.SD1, 0.7))
    host.load_checkpoint(host.find("simA"))  # the WebUI reloads A for its own reasons
    status = core.status()
    assert status["merge_id"] == out.merge_id
    assert status["merge_live"] is False and "simA" in status["lost_reason"]
    # The next merge starts from the reloaded (original) weights and rewrites every block.
    again = core.merge("simA", "simB", uniform(Arch.SD1, 0.7))
    assert again.changed_blocks == list(layout(Arch.SD1).slots)
    expected = expected_merge(Arch.SD1, uniform(Arch.SD1, 0.7))
    live = live_state(host)
    assert all(torch.equal(live[k], t) for k, t in expected.items())
    assert core.status()["merge_live"] is True


def test_repeated_merges_keep_cache_accounting_flat(tmp_path: Path) -> None:
    _, core = make_world(tmp_path, Arch.SD1)
    slots = layout(Arch.SD1).slots
    core.merge("simA", "simB", uniform(Arch.SD1, 0.5))
    first = core.cache_bytes()
    sizes = set()
    for i in range(200):  # like a search: a couple of blocks move per evaluation
        w = {**uniform(Arch.SD1, 0.5), slots[i % 27]: (i % 10) / 10, slots[(i * 5) % 27]: 1.0}
        assert core.merge("simA", "simB", w).changed_blocks
        sizes.add(core.cache_bytes())
    assert sizes == {first}
    assert core.restore(free_caches=True)["freed_bytes"] == first
    assert core.cache_bytes() == 0


@pytest.mark.parametrize(
    ("a", "b", "weights", "status", "kind"),
    [
        ("simA", "simA", None, 400, "SameModel"),
        ("simA", "simA.safetensors", None, 400, "SameModel"),
        ("simZ", "simB", None, 404, "UnknownModel"),
        ("simA", "simB", {"IN00": 0.5}, 422, "ValidationError"),
        ("simA", "simB", {"NOPE": 0.5}, 422, "ValidationError"),
        ("simA", "simB", "half", 422, "ValidationError"),
    ],
)
def test_refusals(tmp_path: Path, a: str, b: str, weights: object, status: int, kind: str) -> None:
    _, core = make_world(tmp_path, Arch.SD1)
    with pytest.raises(BridgeError) as err:
        core.merge(a, b, uniform(Arch.SD1, 0.5) if weights is None else weights)  # type: ignore[arg-type]
    assert (err.value.status, err.value.kind) == (status, kind)


def test_unknown_model_lists_close_names(refusing_core: BridgeCore) -> None:
    core = refusing_core
    with pytest.raises(BridgeError) as err:
        core.merge("simAA", "simB", uniform(Arch.SD1, 0.5))
    assert "simA" in err.value.hint


@pytest.mark.parametrize("value", [-0.1, 1.01, float("nan")])
def test_out_of_range_weights_refused_unless_extrapolating(tmp_path: Path, value: float) -> None:
    _, core = make_world(tmp_path, Arch.SD1)
    with pytest.raises(BridgeError) as err:
        core.merge("simA", "simB", {**uniform(Arch.SD1, 0.5), "OUT05": value})
    assert err.value.status == 422 and "OUT05" in err.value.message
    if value == value:  # not NaN: allowed within -1..2 with extrapolation
        core.merge("simA", "simB", {**uniform(Arch.SD1, 0.5), "OUT05": value}, extrapolation=True)


def test_mismatched_architectures_refused(tmp_path: Path) -> None:
    host, core = make_world(tmp_path, Arch.SD1)
    write_checkpoint(tmp_path / "xl.safetensors", random_state_dict(Arch.SDXL, "tiny", 5))
    host.refresh_checkpoints()
    with pytest.raises(BridgeError) as err:
        core.merge("simA", "xl", uniform(Arch.SD1, 0.5))
    assert err.value.status == 409 and "sdxl" in err.value.message


def test_mismatched_unet_shapes_name_the_key(tmp_path: Path) -> None:
    host, core = make_world(tmp_path, Arch.SD1)
    sd = random_state_dict(Arch.SD1, "tiny", 6)
    key = UNET_PREFIX + "input_blocks.0.0.weight"
    sd[key] = torch.zeros((sd[key].shape[0], 9, *sd[key].shape[2:]), dtype=sd[key].dtype)
    write_checkpoint(tmp_path / "inpaint.safetensors", sd)
    host.refresh_checkpoints()
    with pytest.raises(BridgeError) as err:
        core.merge("simA", "inpaint", uniform(Arch.SD1, 0.5))
    assert err.value.status == 409 and key in err.value.message


def test_save_writes_merge_recipe_and_refreshes(tmp_path: Path) -> None:
    host, core = make_world(tmp_path, Arch.SD1)
    weights = {s: 0.25 if s.startswith("IN") else 0.75 for s in layout(Arch.SD1).slots}
    core.merge("simA", "simB", weights)
    out = core.save("my-merge", dtype="fp32")
    path = Path(out.path)
    assert path == (tmp_path / "my-merge.safetensors").resolve()
    assert host.find("my-merge") is not None  # the checkpoint list was refreshed
    a = random_state_dict(Arch.SD1, "tiny", SEEDS["simA"])
    b = random_state_dict(Arch.SD1, "tiny", SEEDS["simB"])
    lay = layout(Arch.SD1)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(a)
        meta = f.metadata()
        for key in (
            UNET_PREFIX + "input_blocks.4.0.emb_layers.1.weight",
            UNET_PREFIX + "out.2.bias",
        ):
            w = weights[lay.slot_of(key)]
            want = torch.lerp(a[key].float(), b[key].float(), w)
            assert torch.equal(f.get_tensor(key), want)
        vae = "first_stage_model.decoder.conv_out.weight"
        assert torch.equal(f.get_tensor(vae), a[vae].float())
    recipe = Recipe.from_safetensors_metadata(meta)
    assert recipe.model_a == "simA.safetensors" and dict(recipe.weights.values) == weights
    assert json.loads(meta["sd_mbwrt_recipe"])["modelO"] == "my-merge"
    text_recipe = read_recipe_file(out.recipe_path)
    assert dict(text_recipe.weights.values) == weights
    assert len(out.sha256) == 64 and out.bytes == path.stat().st_size


BAD_NAMES = [
    "../escape",
    "sub/dir",
    "..\\escape",
    "/etc/passwd",
    "C:\\Windows\\x",
    "CON",
    "nul.safetensors",
    "com1.txt",
    "LPT9",
    ".hidden",
    "",
    "bad|name",
    "trailing.",
    "other.ckpt",
    "x" * 250,
]


def test_save_refuses_names_outside_a_plain_file(tmp_path: Path) -> None:
    _, core = make_world(tmp_path / "models", Arch.SD1)
    core.merge("simA", "simB", uniform(Arch.SD1, 0.5))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for name in BAD_NAMES:
        with pytest.raises(BridgeError) as err:
            core.save(name)
        assert (err.value.status, err.value.kind) == (400, "BadName"), name
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_save_refuses_overwrite_without_flag(tmp_path: Path) -> None:
    _, core = make_world(tmp_path, Arch.SD1)
    core.merge("simA", "simB", uniform(Arch.SD1, 0.5))
    first = core.save("keep")
    with pytest.raises(BridgeError) as err:
        core.save("keep.safetensors", uniform(Arch.SD1, 1.0))
    assert err.value.status == 409
    assert core.save("keep", uniform(Arch.SD1, 1.0), overwrite=True).sha256 != first.sha256


def test_save_needs_a_merge_pair(tmp_path: Path) -> None:
    _, core = make_world(tmp_path, Arch.SD1)
    with pytest.raises(BridgeError) as err:
        core.save("x", uniform(Arch.SD1, 0.5))
    assert err.value.status == 409


def test_failure_midway_still_restores_bit_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails halfway (CUDA OOM in a real WebUI; simulated here by making
    torch's load_state_dict raise on its third call) leaves the bridge knowing which blocks
    hold what, so restore and the next merge still give exact results."""
    host, core = make_world(tmp_path, Arch.SD1)
    core.merge("simA", "simB", uniform(Arch.SD1, 0.5))
    real = torch.nn.Module.load_state_dict
    calls = {"n": 0}

    def flaky(module, state, strict=True, assign=False):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(module, state, strict=strict, assign=assign)

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", flaky)
    with pytest.raises(RuntimeError, match="out of memory"):
        core.merge("simA", "simB", uniform(Arch.SD1, 0.8))
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", real)
    assert core.status()["merge_id"] is None and core.status()["merge_live"] is False

    core.restore()
    original = random_state_dict(Arch.SD1, "tiny", SEEDS["simA"])
    live = live_state(host)
    assert all(torch.equal(live[k], t) for k, t in original.items())
    core.merge("simA", "simB", uniform(Arch.SD1, 0.8))
    expected = expected_merge(Arch.SD1, uniform(Arch.SD1, 0.8))
    live = live_state(host)
    assert all(torch.equal(live[k], t) for k, t in expected.items())


def test_new_bridge_over_a_model_still_holding_a_merge(tmp_path: Path) -> None:
    """The WebUI's "Reload UI" restarts the extension (a new BridgeCore) while the model still
    holds the old bridge's merge: the new bridge must not take those weights for A's."""
    host, old = make_world(tmp_path, Arch.SD1)
    old.merge("simA", "simB", uniform(Arch.SD1, 0.9), text_encoder_weight=0.9)
    new = BridgeCore(host, version="test")
    host.on_model_loaded(new.mark_lost)

    weights = {**uniform(Arch.SD1, 0.0), "IN02": 0.3}
    out = new.merge("simA", "simB", weights)
    assert set(out.changed_blocks) == {*layout(Arch.SD1).slots, BASE}
    live = live_state(host)
    expected = expected_merge(Arch.SD1, weights)
    assert all(torch.equal(live[k], t) for k, t in expected.items())
    new.restore()
    original = random_state_dict(Arch.SD1, "tiny", SEEDS["simA"])
    live = live_state(host)
    assert all(torch.equal(live[k], t) for k, t in original.items())


def test_text_encoder_shape_mismatch_names_the_checkpoint(tmp_path: Path) -> None:
    """Only UNet keys are checked up front; a text-encoder tensor of B in another shape is
    refused when the text encoder is merged, naming B's checkpoint (the message once read
    ``None: ...``: the file's name was shadowed by the live tensor), and nothing is half
    written: A's text encoder stays."""
    host, core = make_world(tmp_path, Arch.SD1)
    sd = random_state_dict(Arch.SD1, "tiny", 7)
    key = next(k for k in sd if is_text_encoder_key(k, Arch.SD1) and k.endswith("fc1.weight"))
    sd[key] = torch.zeros((sd[key].shape[0] + 1, *sd[key].shape[1:]), dtype=sd[key].dtype)
    write_checkpoint(tmp_path / "wideTE.safetensors", sd)
    host.refresh_checkpoints()
    core.merge("simA", "wideTE", uniform(Arch.SD1, 0.5))  # the UNets fit: a UNet merge works
    with pytest.raises(BridgeError) as err:
        core.merge("simA", "wideTE", uniform(Arch.SD1, 0.5), text_encoder_weight=0.5)
    assert (err.value.status, err.value.kind) == (409, "ModelMismatch")
    assert err.value.message.startswith(f"wideTE: {key} has shape [")
    a = random_state_dict(Arch.SD1, "tiny", SEEDS["simA"])
    assert torch.equal(live_state(host)[key], a[key])
