"""A LoRA block-weight search (issue 15, item 3) end to end against simulated WebUIs: the config
(LBW's blocks searched by default, the rest held as LBW holds them), the run's recipe, LBW
preset line and final merge (equal to the offline bake, tensor by tensor), and faults: a LoRA
file the WebUI cannot read, a WebUI that loses the merge mid-search, a bridge too old."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from autombw_cli.app.run import Run
from autombw_cli.blocks import Arch, Weights, layout
from autombw_cli.config import load_config
from autombw_cli.errors import ConfigError, WebUIError
from autombw_cli.lbw import LBW_ORDERS, parse_lbw_line
from autombw_cli.merging.offline import merge_checkpoints
from autombw_cli.recipe import Formula, Recipe
from autombw_cli.sim.faults import FaultPlan
from autombw_cli.sim.server import write_builtin_models
from autombw_cli.webui.bridge import arguments
from autombw_cli.webui.client import WebUIClient
from autombw_cli.webui.errors import BridgeTooOld
from search_helpers import write_search_config

LORA_MODELS = "{a: simA.safetensors, b: simLora, formula: lora, output: baked, arch: sd1}"
LBW16 = [s for s in LBW_ORDERS[17] if s != "BASE"]


def _config(tmp_path: Path, **kwargs) -> Path:  # type: ignore[no-untyped-def]
    kwargs.setdefault("frozen", "{}")
    path = write_search_config(tmp_path, models=LORA_MODELS, **kwargs)
    text = path.read_text().replace(
        "scorer: {name: sim,", "scorer: {name: sim, options: {formula: lora},"
    )
    path.write_text(text)
    return path


def _execute(run: Run):  # type: ignore[no-untyped-def]
    return asyncio.run(run.execute(lambda e: None, handle_signals=False))


def test_a_lora_search_searches_lbw_blocks_and_holds_the_rest_as_lbw(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    assert cfg.models.formula is Formula.LORA
    assert cfg.search.blocks == LBW16
    frozen = cfg.search.frozen
    assert frozen["IN00"] == frozen["OUT02"] == 0.0
    assert frozen["OUT"] == frozen["TIME_EMBED"] == 1.0
    assert set(frozen) | set(LBW16) == set(layout(Arch.SD1).slots)
    # a frozen block stays the user's; an explicit block list is taken as it is
    cfg = load_config(_config(tmp_path, frozen="{OUT: 0.0, IN04: 0.5}"))
    assert cfg.search.frozen["OUT"] == 0.0 and cfg.search.frozen["IN04"] == 0.5
    assert "IN04" not in cfg.search.blocks


def test_a_lora_config_refuses_a_model_c(tmp_path: Path) -> None:
    path = write_search_config(tmp_path, models=LORA_MODELS.replace("arch", "c: simC, arch"))
    with pytest.raises(ConfigError, match=r"models\.c is only used by formula add_difference"):
        load_config(path)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_lora_search_runs_and_its_merge_is_the_offline_bake(tmp_path: Path) -> None:
    result = _execute(Run.create(load_config(_config(tmp_path, evaluations=6))))
    assert result.exit_code == 0 and result.done == 6
    d = result.run_dir
    recipe = Recipe.from_text((d / "baked.recipe.txt").read_text())
    assert recipe.formula is Formula.LORA and recipe.model_b == "simLora"
    assert json.loads((d / "summary.json").read_text())["models"]["formula"] == "lora"
    name, strengths = parse_lbw_line((d / "baked.lbw.txt").read_text(), Arch.SD1)
    assert name == "baked"
    assert all(strengths[s] == recipe.weights[s] for s in LBW16)
    history = (d / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    for row in history[1:]:
        values = dict(zip(header, row.split(","), strict=False))
        assert values["IN00"] == "0.0" and values["OUT"] == "1.0"
    with safe_open(str(d / "baked.safetensors"), "pt") as f:  # saved by the bridge
        assert Recipe.from_safetensors_metadata(f.metadata()).formula is Formula.LORA

    # the same simA and simLora (seeded), baked offline with the run's recipe: the same tensors
    models = tmp_path / "models"
    write_builtin_models(models, Arch.SD1, lora=True)
    out = tmp_path / "offline.safetensors"
    merge_checkpoints(
        models / "simA.safetensors", models / "Lora" / "simLora.safetensors", recipe, out
    )
    saved, offline = load_file(str(d / "baked.safetensors")), load_file(str(out))
    assert set(saved) == set(offline)
    assert all(torch.equal(saved[k], offline[k]) for k in offline)
    assert any(
        not torch.equal(offline[k], t)
        for k, t in load_file(str(models / "simA.safetensors")).items()
    )


def test_preflight_names_a_lora_the_webui_cannot_read(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    """Fault: the LoRA file on the WebUI's disk is truncated (a broken download)."""
    folder = tmp_path / "models"
    write_builtin_models(folder, Arch.SD1, lora=True)
    lora = folder / "Lora" / "simLora.safetensors"
    data = lora.read_bytes()
    lora.write_bytes(data[: len(data) // 2])
    handle = start_sim(arch="sd1", model_dir=folder)
    instances = f"[{{url: '{handle.url}', label: gpu7}}]"
    with pytest.raises(WebUIError) as exc:
        _execute(Run.create(load_config(_config(tmp_path, instances=instances))))
    message = exc.value.message
    assert "gpu7" in message and "model A and the LoRA B cannot be merged here" in message
    assert "simLora: not a readable LoRA" in message


def test_preflight_names_a_lora_the_webui_does_not_have(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    handle = start_sim(arch="sd1")  # no Lora folder
    instances = f"[{{url: '{handle.url}', label: gpu7}}]"
    with pytest.raises(WebUIError) as exc:
        _execute(Run.create(load_config(_config(tmp_path, instances=instances))))
    assert "unknown LoRA 'simLora'" in exc.value.message


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_lora_search_survives_the_webui_restarting(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    """Fault: the WebUI restarts mid-search (model, merge and the bridge's LoRA cache gone):
    the candidate is merged again, the run finishes with every evaluation."""
    folder = tmp_path / "models"
    write_builtin_models(folder, Arch.SD1, lora=True)
    handle = start_sim(arch="sd1", model_dir=folder, faults=FaultPlan(restart_every=3))
    instances = f"[{{url: '{handle.url}', label: gpu7}}]"
    result = _execute(
        Run.create(load_config(_config(tmp_path, instances=instances, evaluations=5)))
    )
    assert result.exit_code == 0 and result.done == 5


def test_a_bridge_too_old_for_loras_refuses_clearly(sim, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What a bridge_api 2 extension answers to formula lora (its formula check), mapped to
    BridgeTooOld by the client: never a silent weighted sum."""

    async def go() -> None:
        async with WebUIClient(sim.url, label="old") as client:
            monkeypatch.setattr(arguments, "FORMULAS", ["weighted_sum", "add_difference"])
            await client.bridge_merge(
                "simA", "simLora", Weights.uniform(Arch.SD1, 0.5), formula="lora"
            )

    with pytest.raises(BridgeTooOld, match="too old for LoRA block weights"):
        asyncio.run(go())


@pytest.mark.parametrize(
    ("models", "chain"),
    [
        (LORA_MODELS, "chain: [{b: simC.safetensors}]"),
        (None, "chain: [{b: simLora, formula: lora}]"),
    ],
)
def test_a_lora_is_not_chained_yet(tmp_path: Path, models: str | None, chain: str) -> None:
    extra = {} if models is None else {"models": models}
    path = write_search_config(tmp_path, extra_search=chain, **extra)
    with pytest.raises(ConfigError, match=r"formula lora .* is not chained yet"):
        load_config(path)
