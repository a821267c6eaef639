"""The merge policy (merging/plan.py): which weight each key gets, and the four merges that use
it (the offline merge, the bridge's live merge, the bridge's save, the simulator's scorer)
giving the same tensors bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autombw_cli.blocks import BASE, UNET_PREFIX, Arch, Weights, is_text_encoder_key, layout
from autombw_cli.merging.offline import merge_checkpoints
from autombw_cli.merging.plan import plan_weights, slot_of, weight_of
from autombw_cli.recipe import Formula, Recipe
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from autombw_cli.sim.host import SimHost
from autombw_cli.sim.scorer import merge_state
from autombw_cli.webui.bridge.core import BridgeCore


def _weights(arch: Arch, te: float | None) -> Weights:
    slots = layout(arch).slots
    return Weights(
        arch, {s: round(0.05 + 0.9 * i / len(slots), 3) for i, s in enumerate(slots)}, te
    )


@pytest.mark.parametrize("arch", [Arch.SD1, Arch.SDXL])
def test_each_key_gets_its_slot_the_text_encoder_or_a(arch: Arch) -> None:
    keys = list(random_state_dict(arch, "tiny", 1))
    lay = layout(arch)
    for te in (None, 0.25):
        w = _weights(arch, te)
        plan = plan_weights(keys, w, copy={keys[0]})
        assert plan[keys[0]] is None
        for key in keys[1:]:
            if key.startswith(UNET_PREFIX):
                slot = lay.slot_of(key)
                assert slot is not None and plan[key] == (slot, w[slot]) == weight_of(key, w)
            elif is_text_encoder_key(key, arch):
                assert slot_of(key, arch) == BASE
                assert plan[key] == (None if te is None else (BASE, te))
            else:
                assert slot_of(key, arch) is None and plan[key] is None, key
    assert any(is_text_encoder_key(k, arch) for k in keys)
    assert any(slot_of(k, arch) is None for k in keys)  # VAE and buffers


LIVE_FORMULAS = [Formula.WEIGHTED_SUM, Formula.ADD_DIFFERENCE]  # the LoRA bake: test_lora.py


@pytest.mark.parametrize("formula", LIVE_FORMULAS, ids=[f.value for f in LIVE_FORMULAS])
@pytest.mark.parametrize("te", [None, 0.4], ids=["unet", "unet+te"])
def test_offline_live_save_and_scorer_merge_alike(
    tmp_path: Path, te: float | None, formula: Formula
) -> None:
    arch = Arch.SD1
    a = random_state_dict(arch, "tiny", 1)
    b = random_state_dict(arch, "tiny", 2)
    write_checkpoint(tmp_path / "A.safetensors", a)
    write_checkpoint(tmp_path / "B.safetensors", b)
    c = None
    if formula is Formula.ADD_DIFFERENCE:
        c = random_state_dict(arch, "tiny", 3)
        write_checkpoint(tmp_path / "C.safetensors", c)
    w = _weights(arch, te)
    model_c = "C" if c is not None else None

    scorer = merge_state(a, b, w, c)
    out = tmp_path / "out" / "offline.safetensors"
    out.parent.mkdir()
    merge_checkpoints(
        tmp_path / "A.safetensors",
        tmp_path / "B.safetensors",
        Recipe("A", "B", "o", w, model_c=model_c, formula=formula),
        out,
        model_c=None if c is None else tmp_path / "C.safetensors",
    )
    offline = load_file(out)

    host = SimHost(tmp_path)
    core = BridgeCore(host, version="test")
    how = {} if c is None else {"formula": formula.value, "model_c": "C"}
    core.merge("A", "B", dict(w.values), text_encoder_weight=te, cache_device="cpu", **how)
    model = host.live_model()
    assert model is not None
    live = {k: t.detach().clone() for k, t in model.state_dict().items()}
    saved = load_file(core.save("saved", dtype="keep").path)

    assert set(offline) == set(saved) == set(scorer) == set(live) == set(a)
    merged_keys = 0
    for key, ta in a.items():
        want = scorer[key]
        for name, got in (("offline", offline), ("live", live), ("save", saved)):
            assert got[key].dtype == ta.dtype and torch.equal(got[key], want), (name, key)
        merged_keys += not torch.equal(want, ta)
    te_keys = [k for k in a if is_text_encoder_key(k, arch) and a[k].is_floating_point()]
    assert all(torch.equal(scorer[k], a[k]) != (te is not None) for k in te_keys)
    assert merged_keys > len(te_keys)
    if c is not None:  # really A + (B - C) * w, not the weighted sum of A and B
        key = next(k for k in a if k.startswith(UNET_PREFIX) and a[k].is_floating_point())
        step = weight_of(key, w)
        assert step is not None
        expect = (a[key].float() + (b[key].float() - c[key].float()) * step[1]).to(a[key].dtype)
        assert torch.allclose(live[key].float(), expect.float(), atol=1e-3)
        assert not torch.equal(live[key], merge_state(a, b, w)[key])

    core.restore()  # A's own tensors come back bit for bit, whatever the formula
    assert all(torch.equal(t, a[k]) for k, t in model.state_dict().items())
