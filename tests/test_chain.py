"""Chained merges (config ``chain:``): the config and its errors, the chain recipe, the bridge
and the offline replay giving the same tensors, and a whole chain against simulated WebUIs
(the simulator loads a saved merge as the next step's A)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autombw_cli.app.chain import ChainRun, step_config
from autombw_cli.blocks import Arch, Weights, layout
from autombw_cli.chain_recipe import ChainRecipe, is_chain_file, read_chain_recipe
from autombw_cli.config import load_config
from autombw_cli.errors import ConfigError, JournalError, WebUIError
from autombw_cli.merging.chain import merge_chain
from autombw_cli.recipe import Formula, Recipe
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from autombw_cli.sim.host import SimHost
from autombw_cli.sim.server import write_builtin_models
from autombw_cli.webui.bridge.core import BridgeCore
from search_helpers import write_search_config

CHAIN = "chain: [{b: simC.safetensors, search: {max_evaluations: 4}}]"


def _weights(offset: float, te: float | None = None) -> Weights:
    slots = layout(Arch.SD1).slots
    values = {s: round((offset + 0.37 * i) % 1.0, 3) for i, s in enumerate(slots)}
    return Weights(Arch.SD1, values, te)


# --- config -------------------------------------------------------------------------------
def test_a_step_inherits_the_top_level_and_overrides_its_budget(tmp_path: Path) -> None:
    cfg = load_config(write_search_config(tmp_path, evaluations=7, extra_search=CHAIN))
    assert cfg.chain is not None and cfg.chain[0].b == "simC.safetensors"
    first = step_config(cfg, 1, model_a=cfg.models.a, output="run-step1")
    assert (first.models.a, first.models.b, first.models.output) == (
        "simA.safetensors",
        "simB.safetensors",
        "run-step1",
    )
    assert first.search.max_evaluations == 7 and not first.outputs.final_merge
    assert first.search.initial is None and first.chain is None
    second = step_config(cfg, 2, model_a="run-step1", output=cfg.models.output)
    assert (second.models.a, second.models.b) == ("run-step1", "simC.safetensors")
    assert second.search.max_evaluations == 4 and second.outputs.final_merge
    assert second.search.frozen == cfg.search.frozen  # the space is the top level's
    start = second.initial_weights()
    assert start is not None and set(start.values.values()) == {0.0}  # AB unchanged first
    # a config without a chain dumps (run folders) as it always did
    plain = load_config(write_search_config(tmp_path))
    assert "chain" not in plain.redacted_dump()


@pytest.mark.parametrize(
    ("chain", "field", "message"),
    [
        ("[{a: simA.safetensors, b: simC.safetensors}]", "chain[0].a", "previous step's result"),
        ("[{b: simC.safetensors, formula: add_difference}]", "chain[0].c", "needs model C"),
        ("[{b: simC.safetensors, c: simA.safetensors}]", "chain[0].c", "add_difference"),
        ("[{b: simC.safetensors, search: {blocks: [IN00]}}]", "chain[0].search", "'blocks'"),
        ("[{b: test-merge}]", "chain[0].b", "final merge would overwrite it"),
        ("[]", "chain", "at least 1"),
    ],
)
def test_chain_errors_name_file_line_and_field(
    tmp_path: Path, chain: str, field: str, message: str
) -> None:
    path = write_search_config(tmp_path, extra_search=f"chain: {chain}")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    text = exc.value.message
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "chain:" in t)
    assert f"{path}:{line}: {field}" in text and message in text, text


def test_an_offline_chain_needs_every_steps_b_file(tmp_path: Path) -> None:
    (tmp_path / "A.safetensors").write_bytes(b"x")
    (tmp_path / "B.safetensors").write_bytes(b"x")
    models = (
        "{a: simA.safetensors, b: simB.safetensors, output: test-merge, arch: sd1, "
        "a_file: A.safetensors, b_file: B.safetensors}"
    )
    outputs = "{run_dir: runs, final_merge: true, merge_via: offline}"
    path = write_search_config(tmp_path, models=models, outputs=outputs, extra_search=CHAIN)
    with pytest.raises(ConfigError, match=r"chain\[0\]\.b_file: an offline final merge"):
        load_config(path)


# --- the chain recipe -----------------------------------------------------------------------
def test_the_chain_recipe_round_trips_and_links_its_steps(tmp_path: Path) -> None:
    one = Recipe("A.safetensors", "B.safetensors", "AB", _weights(0.1))
    two = Recipe(
        "AB",
        "D.safetensors",
        "ABD",
        _weights(0.2, 0.5),
        model_c="C",
        formula=Formula.ADD_DIFFERENCE,
    )
    chain = ChainRecipe((one, two), intermediate_dtype="bf16")
    path = tmp_path / "c.json"
    path.write_text(chain.to_json())
    assert is_chain_file(path) and read_chain_recipe(path) == chain
    assert not is_chain_file(tmp_path / "missing.json")
    broken = json.loads(chain.to_json())
    broken["steps"][1]["model_a"] = "other"
    with pytest.raises(JournalError, match="step 2's model A is 'other', but step 1 saved"):
        ChainRecipe.from_dict(broken, source="c.json")
    with pytest.raises(JournalError, match="not a chain recipe"):
        ChainRecipe.from_dict(json.loads(one.to_json()))


# --- bridge == offline ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_the_bridge_and_the_offline_replay_give_the_same_tensors(
    tmp_path: Path, dtype: str
) -> None:
    """Step 1 A + B saved by the bridge (``dtype``), step 2 (AB) + (D - C)*w with a
    text-encoder weight, saved by the bridge; the offline replay of the chain recipe gives
    the same final checkpoint bit for bit (inputs in fp32, so the intermediate rounding
    matters)."""
    webui = tmp_path / "webui"
    webui.mkdir()
    for name, seed in (("A", 1), ("B", 2), ("C", 3), ("D", 4)):
        write_checkpoint(
            webui / f"{name}.safetensors", random_state_dict("sd1", "tiny", seed, torch.float32)
        )
    w1, w2 = _weights(0.1), _weights(0.6, 0.3)
    core = BridgeCore(SimHost(webui), version="test")
    core.merge("A", "B", dict(w1.values), cache_device="cpu")
    core.save("AB", dtype=dtype)
    how = {"formula": "add_difference", "model_c": "C"}
    core.merge("AB", "D", dict(w2.values), text_encoder_weight=0.3, cache_device="cpu", **how)
    bridge = load_file(core.save("ABD", dtype="fp32").path)

    chain = ChainRecipe(
        (
            Recipe("A.safetensors", "B.safetensors", "AB", w1),
            Recipe(
                "AB",
                "D.safetensors",
                "ABD",
                w2,
                model_c="C.safetensors",
                formula=Formula.ADD_DIFFERENCE,
            ),
        ),
        intermediate_dtype=dtype,
    )
    out = tmp_path / "out" / "final.safetensors"
    report = merge_chain(
        webui / "A.safetensors",
        [webui / "B.safetensors", webui / "D.safetensors"],
        [webui / "C.safetensors"],
        chain,
        out,
        dtype="fp32",
    )
    offline = load_file(out)
    assert set(offline) == set(bridge)
    for key, t in bridge.items():
        assert offline[key].dtype == t.dtype and torch.equal(offline[key], t), key
    assert read_chain_recipe(out.with_name("final.chain.json")) == chain
    assert report.output == out and {p.name for p in out.parent.iterdir()} == {
        "final.safetensors",
        "final.recipe.txt",
        "final.recipe.json",
        "final.chain.json",
    }  # the intermediate's temp folder is gone
    # the other intermediate dtype gives other tensors: the recipe's dtype is what counts
    other = ChainRecipe(chain.steps, intermediate_dtype="fp32")
    merge_chain(
        webui / "A.safetensors",
        [webui / "B.safetensors", webui / "D.safetensors"],
        [webui / "C.safetensors"],
        other,
        tmp_path / "other.safetensors",
        dtype="fp32",
    )
    differs = load_file(tmp_path / "other.safetensors")
    assert any(not torch.equal(differs[k], t) for k, t in bridge.items())


def test_the_offline_replay_wants_one_b_per_step(tmp_path: Path) -> None:
    chain = ChainRecipe(
        (
            Recipe("A", "B", "AB", _weights(0.1)),
            Recipe("AB", "D", "ABD", _weights(0.2), model_c="C", formula=Formula.ADD_DIFFERENCE),
        )
    )
    a = tmp_path / "A.safetensors"
    with pytest.raises(ConfigError, match="2 steps but 1 model B"):
        merge_chain(a, [a], [a], chain, tmp_path / "o.safetensors")
    with pytest.raises(ConfigError, match=r"1 add-difference step.* but 0 model C"):
        merge_chain(a, [a, a], [], chain, tmp_path / "o.safetensors")


# --- a whole chain against simulated WebUIs ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_chain_runs_on_simulators_and_replays_offline_to_the_same_checkpoint(
    tmp_path: Path,
) -> None:
    path = write_search_config(tmp_path, evaluations=5, extra_search=CHAIN)
    chain_run = ChainRun.create(load_config(path))
    result = asyncio.run(chain_run.execute(lambda e: None, handle_signals=False))
    d = result.run_dir
    assert result.exit_code == 0 and result.done == 9
    state = json.loads((d / "chain-state.json").read_text())
    step1 = f"{d.name}-step1"
    assert state["steps"][0] == {"step": 1, "saved_as": step1, "saved": True}
    chain = read_chain_recipe(d / "chain.recipe.json")
    assert [s.model_a for s in chain.steps] == ["simA.safetensors", step1]
    assert chain.steps[1].model_b == "simC.safetensors"
    history = (d / "step-2" / "history.csv").read_text().splitlines()
    assert len(history) == 5  # header + 4: the step's own budget
    config2 = load_config(d / "step-2" / "config.yaml", check_paths=False)
    assert config2.models.a == step1  # the simulator loaded the saved merge as A
    first = config2.initial_weights()
    assert first is not None and set(first.values.values()) == {0.0}
    bridge = load_file(d / "step-2" / "test-merge.safetensors")  # the final merge, bridge-saved

    models = tmp_path / "models"
    write_builtin_models(models, "sd1", base_model=True)  # the simulator's, same seeds
    out = tmp_path / "replayed.safetensors"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "autombw_cli",
            "merge",
            str(models / "simA.safetensors"),
            str(models / "simB.safetensors"),
            str(models / "simC.safetensors"),
            "--recipe",
            str(d / "chain.recipe.json"),
            "-o",
            str(out),
            "--dtype",
            "fp16",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    offline = load_file(out)
    assert set(offline) == set(bridge)
    assert all(torch.equal(offline[k], t) for k, t in bridge.items())
    assert (tmp_path / "replayed.chain.json").is_file()


def test_a_later_steps_missing_model_fails_before_step_1_and_leaves_no_folder(
    tmp_path: Path,
) -> None:
    chain = "chain: [{b: simC.safetensors}, {b: simD.safetensors}]"
    path = write_search_config(tmp_path, evaluations=2, extra_search=chain)
    chain_run = ChainRun.create(load_config(path))
    with pytest.raises(WebUIError) as exc:
        asyncio.run(chain_run.execute(lambda e: None, handle_signals=False))
    message = exc.value.message
    assert "sim1: model B of chain step 3 (simD.safetensors)" in message
    assert "sim2: model B of chain step 3" in message and "step 2" not in message
    assert not chain_run.run_dir.exists()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_chain_leaves_its_step_results_and_model_a_loaded_in_the_webui(
    tmp_path: Path, start_sim
) -> None:  # type: ignore[no-untyped-def]
    handle = start_sim(arch="sd1", base_model=True)
    instances = f"[{{url: '{handle.url}', label: gpu0}}]"
    chain = "chain: [{b: simC.safetensors, search: {max_evaluations: 2}}]"
    path = write_search_config(tmp_path, instances=instances, evaluations=2, extra_search=chain)
    chain_run = ChainRun.create(load_config(path))
    result = asyncio.run(chain_run.execute(lambda e: None, handle_signals=False))
    assert result.exit_code == 0
    folder = handle.sim.model_dir
    step1 = folder / f"{result.run_dir.name}-step1.safetensors"
    assert step1.is_file() and (folder / "test-merge.safetensors").is_file()
    assert (folder / f"{result.run_dir.name}-step1.recipe.txt").is_file()
    loaded = handle.sim.host.loaded_checkpoint()
    assert loaded is not None and loaded.name == "simA"  # not the intermediate, step 2's A


def test_every_step_field_reaches_the_steps_config(tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text(json.dumps({"prompt": "a red car", "steps": 4}))
    chain = (
        "chain: [{b: simD.safetensors, formula: add_difference, c: simC.safetensors, "
        "payloads: [other.json], search: {passes: [{optimizer: tpe}], seed: 9, max_time: 90m, "
        "initial: {weights: '0.5'}}}]"
    )
    cfg = load_config(write_search_config(tmp_path, extra_search=chain))
    step = step_config(cfg, 2, model_a="run-step1", output="final")
    assert step.models.formula is Formula.ADD_DIFFERENCE and step.models.c == "simC.safetensors"
    assert [p.name for p in step.payloads.files] == ["other.json"]
    assert [p.optimizer for p in step.search.passes] == ["tpe"]
    assert (step.search.seed, step.search.max_time) == (9, 5400.0)
    start = step.initial_weights()
    assert start is not None and set(start.values.values()) == {0.5}
    assert step.search.max_evaluations == cfg.search.max_evaluations  # not overridden
    assert [p.name for p in cfg.payloads.files] == ["apple.json"]  # the top level keeps its own


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_an_offline_final_merge_replays_the_chain_into_the_chain_folder(tmp_path: Path) -> None:
    from safetensors import safe_open

    models = tmp_path / "models"
    write_builtin_models(models, "sd1", base_model=True)
    config_models = (
        f"{{a: simA.safetensors, b: simB.safetensors, output: test-merge, arch: sd1, "
        f"a_file: {models / 'simA.safetensors'}, b_file: {models / 'simB.safetensors'}}}"
    )
    chain = (
        f"chain: [{{b: simC.safetensors, b_file: {models / 'simC.safetensors'}, "
        "search: {max_evaluations: 2}}]"
    )
    outputs = "{run_dir: runs, save_images: none, final_merge: true, merge_via: offline}"
    path = write_search_config(
        tmp_path, evaluations=2, models=config_models, outputs=outputs, extra_search=chain
    )
    result = asyncio.run(
        ChainRun.create(load_config(path)).execute(lambda e: None, handle_signals=False)
    )
    d = result.run_dir
    final = d / "test-merge.safetensors"
    assert result.exit_code == 0 and result.outputs["checkpoint"] == str(final)
    assert not (d / "step-2" / "test-merge.safetensors").exists()  # the step made none
    with safe_open(str(final), "pt") as f:
        recipe = Recipe.from_safetensors_metadata(f.metadata())
    assert recipe.model_a == f"{d.name}-step1" and recipe.model_b == "simC.safetensors"
    assert read_chain_recipe(d / "test-merge.chain.json") == read_chain_recipe(
        d / "chain.recipe.json"
    )
    before = final.stat().st_mtime_ns
    again = asyncio.run(ChainRun.resume(d).execute(lambda e: None, handle_signals=False))
    assert again.exit_code == 0 and final.stat().st_mtime_ns == before  # kept, not redone
