"""The bridge's save never overwrites what it merges from (A, B, the loaded checkpoint, their
recipe files), whatever ``overwrite`` says; a recipe file follows its checkpoint's rule; output
names with bidirectional control characters are refused. BridgeCore over the simulator's host,
and the save route over real loopback HTTP."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autombw_cli.blocks import Arch, layout
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from autombw_cli.sim.host import SimHost
from autombw_cli.sim.server import SimulatorHandle
from autombw_cli.webui.bridge.core import BridgeCore
from autombw_cli.webui.bridge.errors import BridgeError
from autombw_cli.webui.bridge.names import NameError_, safe_output_path

SLOTS = layout(Arch.SD1).slots


def uniform(w: float) -> dict[str, float]:
    return dict.fromkeys(SLOTS, w)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def core(tmp_path: Path) -> Iterator[tuple[Path, BridgeCore]]:
    folder = tmp_path / "models"
    folder.mkdir()
    for name, seed in (("simA", 1), ("simB", 2)):
        write_checkpoint(folder / f"{name}.safetensors", random_state_dict(Arch.SD1, "tiny", seed))
    (folder / "simA.recipe.txt").write_text("A's own recipe\n")  # A is itself a merge
    host = SimHost(folder)
    engine = BridgeCore(host, version="test")
    host.on_model_loaded(engine.mark_lost)
    engine.merge("simA", "simB", uniform(0.5))
    yield folder, engine


@pytest.mark.parametrize(
    "name",
    ["simA", "simA.safetensors", "SIMA", "simB", "simb.safetensors", "simB.ckpt"],
)
@pytest.mark.parametrize("overwrite", [False, True])
def test_save_never_overwrites_the_pair_it_merges(
    core: tuple[Path, BridgeCore], name: str, overwrite: bool
) -> None:
    folder, engine = core
    before = snapshot(folder)
    fmt = "ckpt" if name.endswith(".ckpt") else "safetensors"
    with pytest.raises(BridgeError) as err:
        engine.save(name, uniform(0.3), overwrite=overwrite, fmt=fmt)
    assert err.value.status == 409 and err.value.kind == "OutputIsInput", err.value.message
    assert snapshot(folder) == before  # A, B and A's recipe untouched, nothing new


def test_save_refuses_a_hard_link_to_a(core: tuple[Path, BridgeCore]) -> None:
    folder, engine = core
    os.link(folder / "simA.safetensors", folder / "alias.safetensors")
    before = snapshot(folder)
    with pytest.raises(BridgeError) as err:
        engine.save("alias", uniform(0.3), overwrite=True)
    assert err.value.kind == "OutputIsInput"
    assert snapshot(folder) == before


def test_an_existing_recipe_file_is_kept_unless_overwrite(core: tuple[Path, BridgeCore]) -> None:
    folder, engine = core
    sidecar = folder / "mine.recipe.txt"
    sidecar.write_text("someone else's recipe\n")
    with pytest.raises(BridgeError) as err:
        engine.save("mine", uniform(0.3))
    assert (err.value.status, err.value.kind) == (409, "OutputExists")
    assert "mine.recipe.txt" in err.value.message
    assert sidecar.read_text() == "someone else's recipe\n"
    assert not (folder / "mine.safetensors").exists()
    saved = engine.save("mine", uniform(0.3), overwrite=True)
    assert Path(saved.path).is_file() and sidecar.read_text().startswith("modelA=simA")


@pytest.mark.parametrize("name", ["a\u202egnp", "x\u2066y", "left\u200fmark", "ok\u061c"])
def test_bidi_control_characters_are_refused(core: tuple[Path, BridgeCore], name: str) -> None:
    folder, engine = core
    with pytest.raises(NameError_):
        safe_output_path(name, folder)
    before = snapshot(folder)
    with pytest.raises(BridgeError) as err:
        engine.save(name, uniform(0.3))
    assert (err.value.status, err.value.kind) == (400, "BadName")
    assert snapshot(folder) == before


@pytest.fixture
def sim_options(tmp_path: Path) -> dict[str, object]:  # for conftest's `sim`
    return {"arch": "sd1", "model_dir": tmp_path / "models"}


def test_save_route_with_overwrite_keeps_a_and_b(sim: SimulatorHandle) -> None:
    folder = sim.sim.model_dir
    with httpx.Client(base_url=sim.url, timeout=30) as http:
        r = http.post(
            "/autombw/v1/merge",
            json={"model_a": "simA", "model_b": "simB", "weights": uniform(0.5)},
        )
        assert r.status_code == 200, r.text
        before = snapshot(folder)
        for name in ("simA", "simB.safetensors"):
            r = http.post(
                "/autombw/v1/save",
                json={"name": name, "weights": uniform(0.9), "overwrite": True},
            )
            assert r.status_code == 409, r.text
            assert r.json()["error"] == "OutputIsInput"
        assert snapshot(folder) == before
