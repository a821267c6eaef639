"""Add-difference merges, A + (B - C) * w (issue 15, item 1): the kernel, the recipe forms, the
config, the bridge over loopback HTTP (including a bridge too old for it and a bad model C), a
whole search against simulated WebUIs, and the offline merge through `autombw merge` and
`autombw recover`. That the four merges agree bit for bit is `test_merging_plan.py`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from autombw_cli.app.run import Run
from autombw_cli.blocks import UNET_PREFIX, Arch, Weights, layout
from autombw_cli.config import load_config
from autombw_cli.errors import ConfigError, JournalError, ModelMismatchError, WebUIError
from autombw_cli.merging.kernels import ChunkedLerp, add_difference_tensor, lerp_tensor
from autombw_cli.merging.offline import merge_checkpoints
from autombw_cli.recipe import MBWRT_METADATA_KEY, METADATA_KEY, Formula, Recipe
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from autombw_cli.sim.scorer import merge_state
from autombw_cli.sim.server import SimulatorHandle
from autombw_cli.webui.bridge import routes
from autombw_cli.webui.client import WebUIClient
from autombw_cli.webui.errors import BridgeTooOld
from conftest import cli_exit_code
from search_helpers import write_search_config

SLOTS = layout(Arch.SD1).slots
ADD_DIFF_MODELS = (
    "{a: simA.safetensors, b: simB.safetensors, c: simC.safetensors, "
    "formula: add_difference, output: test-merge, arch: sd1}"
)


def _weights(arch: Arch = Arch.SD1, te: float | None = None) -> Weights:
    slots = layout(arch).slots
    return Weights(arch, {s: round(i / (len(slots) - 1), 3) for i, s in enumerate(slots)}, te)


def _add_diff_recipe(arch: Arch = Arch.SD1, te: float | None = None) -> Recipe:
    return Recipe(
        "a.safetensors",
        "b.safetensors",
        "out",
        _weights(arch, te),
        model_c="sd15.safetensors",
        formula=Formula.ADD_DIFFERENCE,
    )


def _bad_c(path: Path) -> Path:
    """An SD1 checkpoint like simA whose first UNet input-block tensor has another shape."""
    state = random_state_dict(Arch.SD1, "tiny", 3, torch.float16)
    key = next(k for k in state if k.startswith(UNET_PREFIX + "input_blocks.1."))
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:], dtype=torch.float16)
    return write_checkpoint(path, state)


# --- the kernel ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_add_difference_kernel_and_its_chunked_twin_agree(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(5, 77, generator=gen).to(dtype) for _ in range(3))
    for w in (0.0, 0.3, 1.0, -0.7, 1.6):
        whole = add_difference_tensor(a, b, c, w)
        assert whole.dtype == dtype
        # chunks of 7 elements split vector lanes and tails differently from the whole tensor
        assert torch.equal(ChunkedLerp(chunk=7)(a, b, w, dtype, c=c), whole), w
        # another output dtype: the float32 result rounded once, to that dtype
        wide = ChunkedLerp(chunk=7)(a, b, w, torch.float32, c=c)
        assert torch.equal(wide, add_difference_tensor(a.float(), b, c, w)), w
    assert add_difference_tensor(a, b, c, 0.0) is a  # w = 0: A itself, bit for bit
    want = (a.float() + (b.float() - c.float()) * 0.3).to(dtype)
    assert torch.allclose(add_difference_tensor(a, b, c, 0.3).float(), want.float(), atol=1e-2)
    # w = 1 is A + B - C, not B (the weighted sum's shortcut must not apply)
    assert not torch.equal(add_difference_tensor(a, b, c, 1.0), lerp_tensor(a, b, 1.0))
    ints = torch.arange(6)
    assert add_difference_tensor(ints, ints + 1, ints + 2, 0.5) is ints


# --- the recipe ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "recipe",
    [_add_diff_recipe(), _add_diff_recipe(Arch.SDXL, 0.25), _add_diff_recipe(Arch.SD2)],
    ids=["sd1", "sdxl-te", "sd2"],
)
def test_add_difference_recipe_round_trips_in_every_form(recipe: Recipe) -> None:
    text = recipe.to_text()
    assert "modelC=sd15.safetensors" in text.splitlines()
    assert "merge_mode=Add difference" in text.splitlines()
    assert Recipe.from_text(text) == recipe
    assert Recipe.from_json(recipe.to_json()) == recipe
    data = recipe.to_dict()
    assert data["formula"] == "add_difference" and data["model_c"] == "sd15.safetensors"
    assert data["format"] == "autombw-recipe/2"
    meta = recipe.safetensors_metadata()
    # auto-MBW-rt's entry would read back as a weighted sum of A and B: not written
    assert set(meta) == {METADATA_KEY}
    assert Recipe.from_safetensors_metadata(meta) == recipe
    plain = Recipe("a.safetensors", "b.safetensors", "out", recipe.weights)
    assert recipe.content_hash() != plain.content_hash()


def test_a_weighted_sum_recipe_is_written_as_before() -> None:
    plain = Recipe("a.safetensors", "b.ckpt", "out", _weights())
    assert "formula" not in plain.to_dict() and plain.to_dict()["format"] == "autombw-recipe/1"
    assert not any(line.startswith(("modelC", "merge_mode")) for line in plain.to_text().split())
    assert set(plain.safetensors_metadata()) == {METADATA_KEY, MBWRT_METADATA_KEY}
    # the hashes main computed before add difference existed
    assert plain.content_hash() == "5b4831810fd6"
    assert Recipe("a.safetensors", "b.ckpt", "out", _weights(te=0.25)).content_hash() == (
        "98fcdad72bf7"
    )


def test_supermerger_mode_names_are_read() -> None:
    text = (
        _add_diff_recipe()
        .to_text()
        .replace("merge_mode=Add difference", "merge_mode=Add difference:A+(B-C)*alpha")
    )
    assert Recipe.from_text(text).formula is Formula.ADD_DIFFERENCE
    assert Formula.parse("Weight sum:A*(1-alpha)+B*alpha") is Formula.WEIGHTED_SUM
    assert Formula.parse("ADD_DIFFERENCE") is Formula.ADD_DIFFERENCE


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("modelC=sd15.safetensors\n", ""), "missing modelC= line"),
        (lambda t: t.replace("merge_mode=Add difference\n", ""), "modelC= is given but"),
        (lambda t: t.replace("Add difference", "Triple sum"), "unknown merge formula"),
    ],
    ids=["no-c", "c-without-mode", "unknown-mode"],
)
def test_bad_add_difference_recipe_text_is_refused(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(JournalError, match=message):
        Recipe.from_text(edit(_add_diff_recipe().to_text()), source="x.recipe.txt")


def test_recipe_json_needs_model_c_for_add_difference() -> None:
    data = _add_diff_recipe().to_dict()
    del data["model_c"]
    with pytest.raises(JournalError, match="model_c"):
        Recipe.from_dict(data)
    data = _add_diff_recipe().to_dict()
    data["formula"] = "weighted_sum"
    with pytest.raises(JournalError, match="model_c is given but the formula is weighted_sum"):
        Recipe.from_dict(data)


# --- the config ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("models", "message"),
    [
        (
            "{a: simA, b: simB, formula: add_difference}",
            "models.c: formula add_difference (A + (B - C)*w) needs model C",
        ),
        ("{a: simA, b: simB, c: simC}", "models.c: models.c is only used by formula add_diff"),
        ("{a: simA, b: simB, c: simB, formula: add_difference}", "model C is model B"),
        ("{a: simA, b: simB, c: simC, formula: add_difference, output: simC}", "names model C"),
        ("{a: simA, b: simB, c: simC, formula: add_sum}", "models.formula"),
    ],
    ids=["no-c", "c-for-weighted-sum", "c-is-b", "output-is-c", "unknown-formula"],
)
def test_config_refuses_a_bad_model_c(tmp_path: Path, models: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write_search_config(tmp_path, models=models))
    assert message in str(exc.value)


def test_config_offline_final_merge_needs_c_file(tmp_path: Path) -> None:
    a = write_checkpoint(tmp_path / "A.safetensors", random_state_dict(Arch.SD1, "tiny", 1))
    models = f"{{a: simA, b: simB, c: simC, formula: add_difference, a_file: '{a}', b_file: '{a}'}}"
    outputs = "{run_dir: runs, final_merge: true, merge_via: offline}"
    with pytest.raises(ConfigError, match=r"needs models\.c_file too"):
        load_config(write_search_config(tmp_path, models=models, outputs=outputs))


def test_a_weighted_sum_config_dumps_as_before(tmp_path: Path) -> None:
    cfg = load_config(write_search_config(tmp_path))
    assert list(cfg.redacted_dump()["models"]) == ["a", "b", "output", "arch", "a_file", "b_file"]
    cfg = load_config(write_search_config(tmp_path, models=ADD_DIFF_MODELS))
    models = cfg.redacted_dump()["models"]
    assert models["formula"] == "add_difference" and models["c"] == "simC.safetensors"


# --- the bridge over HTTP --------------------------------------------------------------------
@pytest.fixture
def sim_options(tmp_path: Path) -> dict[str, object]:  # for conftest's `sim` and `http`
    folder = tmp_path / "models"
    folder.mkdir()
    _bad_c(folder / "badC.safetensors")
    return {"arch": "sd1", "model_dir": folder, "base_model": True}


def _merge(http: httpx.Client, **extra: object) -> httpx.Response:
    body = {"model_a": "simA", "model_b": "simB", "weights": dict.fromkeys(SLOTS, 0.5)}
    return http.post("/autombw/v1/merge", json={**body, **extra})


def test_bridge_merges_add_difference_and_reports_it(
    sim: SimulatorHandle, http: httpx.Client
) -> None:
    r = _merge(http, formula="add_difference", model_c="simC", cache_device="cpu")
    assert r.status_code == 200, r.text
    assert r.json()["formula"] == "add_difference" and r.json()["model_c"].startswith("simC")
    status = http.get("/autombw/v1/status").json()
    assert status["bridge_api"] == 3 and status["formula"] == "add_difference"
    assert status["model_c"]["file"] == "simC.safetensors"
    # C is cached like A and B: three UNet copies
    unet = sum(
        t.numel() * t.element_size()
        for k, t in random_state_dict(Arch.SD1, "tiny", 1, torch.float16).items()
        if k.startswith(UNET_PREFIX) and t.is_floating_point()
    )
    assert status["cache_bytes"] == 3 * unet
    # the same request as a weighted sum: another merge, C's cache dropped
    r = _merge(http, cache_device="cpu")
    assert r.status_code == 200 and r.json()["formula"] == "weighted_sum"
    assert r.json()["changed_blocks"] == list(SLOTS)
    status = http.get("/autombw/v1/status").json()
    assert status["formula"] == "weighted_sum" and status["model_c"] is None
    assert status["cache_bytes"] == 2 * unet


@pytest.mark.parametrize(
    ("extra", "status", "words"),
    [
        ({"formula": "add_difference"}, 422, "formula add_difference needs model_c"),
        ({"model_c": "simC"}, 422, "model_c is given but the formula is weighted_sum"),
        ({"formula": "add_sum", "model_c": "simC"}, 422, "formula must be one of"),
        ({"formula": "add_difference", "model_c": "nope"}, 404, "model_c: unknown checkpoint"),
        ({"formula": "add_difference", "model_c": "simB"}, 400, "B - C is zero"),
        ({"formula": "add_difference", "model_c": "badC"}, 409, "in model C (badC"),
    ],
    ids=["no-c", "c-without-formula", "unknown-formula", "unknown-c", "c-is-b", "c-shapes"],
)
def test_bridge_refuses_a_bad_add_difference_request(
    sim: SimulatorHandle, http: httpx.Client, extra: dict, status: int, words: str
) -> None:
    before = {k: t.clone() for k, t in sim.sim.host.live_model().state_dict().items()}  # type: ignore[union-attr]
    r = _merge(http, **extra)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    after = sim.sim.host.live_model().state_dict()  # type: ignore[union-attr]
    assert all(torch.equal(after[k], t) for k, t in before.items())  # nothing was merged


def test_a_bridge_too_old_for_add_difference_refuses_clearly(
    sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what a bridge_api 1 extension checks: these fields and no others
    old_fields = routes.MERGE_FIELDS - {"formula", "model_c"}
    monkeypatch.setattr(routes, "MERGE_FIELDS", old_fields)

    async def go() -> None:
        async with WebUIClient(sim.url, label="old-gpu") as client:
            with pytest.raises(BridgeTooOld) as exc:
                await client.bridge_merge(
                    "simA", "simB", Weights.uniform(Arch.SD1, 0.5), model_c="simC"
                )
            assert exc.value.message.startswith("old-gpu: its autombw bridge is too old")
            assert exc.value.needs_attention and "install-extension" in (exc.value.hint or "")
            status = await client.bridge_status()
            assert status.merge_id is None  # it merged nothing, least of all a weighted sum

    asyncio.run(go())


# --- a whole search, and the faults a search meets -------------------------------------------
def _execute(run: Run):  # type: ignore[no-untyped-def]
    return asyncio.run(run.execute(lambda e: None, handle_signals=False))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_an_add_difference_search_runs_and_writes_its_recipe(tmp_path: Path) -> None:
    path = write_search_config(tmp_path, evaluations=6, models=ADD_DIFF_MODELS)
    text = path.read_text().replace(
        "scorer: {name: sim,", "scorer: {name: sim, options: {formula: add_difference},"
    )
    path.write_text(text)
    result = _execute(Run.create(load_config(path)))
    assert result.exit_code == 0 and result.done == 6
    d = result.run_dir
    lines = (d / "test-merge.recipe.txt").read_text().splitlines()
    assert "modelC=simC.safetensors" in lines and "merge_mode=Add difference" in lines
    summary = json.loads((d / "summary.json").read_text())
    assert summary["models"]["c"] == "simC.safetensors"
    assert summary["models"]["formula"] == "add_difference"
    with safe_open(str(d / "test-merge.safetensors"), "pt") as f:  # saved by the bridge
        saved = Recipe.from_safetensors_metadata(f.metadata())
    assert saved.formula is Formula.ADD_DIFFERENCE and saved.model_c == "simC.safetensors"


def test_preflight_names_the_instance_missing_model_c(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    handle = start_sim(arch="sd1")  # no simC there
    instances = f"[{{url: '{handle.url}', label: gpu7}}]"
    cfg = load_config(write_search_config(tmp_path, instances=instances, models=ADD_DIFF_MODELS))
    with pytest.raises(WebUIError) as exc:
        _execute(Run.create(cfg))
    assert "gpu7" in exc.value.message
    assert "model C 'simC.safetensors' is not in this WebUI's checkpoint list" in exc.value.message


def test_preflight_names_the_instance_and_model_c_of_the_wrong_shape(
    tmp_path: Path, start_sim
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "models"
    folder.mkdir()
    _bad_c(folder / "badC.safetensors")
    handle = start_sim(arch="sd1", model_dir=folder)
    instances = f"[{{url: '{handle.url}', label: gpu7}}]"
    models = ADD_DIFF_MODELS.replace("c: simC.safetensors", "c: badC.safetensors")
    cfg = load_config(write_search_config(tmp_path, instances=instances, models=models))
    with pytest.raises(WebUIError) as exc:
        _execute(Run.create(cfg))
    message = exc.value.message
    assert "gpu7" in message and "models A, B and C cannot be merged here" in message
    assert "in model C (badC" in message


# --- the offline merge -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, Path]:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("models")
    return tuple(  # type: ignore[return-value]
        write_checkpoint(d / f"{n}.safetensors", random_state_dict(Arch.SD1, "tiny", seed))
        for n, seed in (("A", 1), ("B", 2), ("C", 3))
    )


def test_merge_cli_with_model_c_writes_the_add_difference(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    a, b, c = files
    out = tmp_path / "mix.safetensors"
    assert (
        cli_exit_code(["merge", str(a), str(b), "--model-c", str(c), "-w", "0.5", "-o", str(out)])
        == 0
    )
    said = "".join(capsys.readouterr().out.split())  # rich wraps long paths
    assert "A.safetensors+(" in said and "C.safetensors)" in said
    states = [load_file(p) for p in files]
    want = merge_state(states[0], states[1], Weights.uniform(Arch.SD1, 0.5), states[2])
    got = load_file(out)
    assert all(torch.equal(got[k], t) for k, t in want.items())
    recipe_txt = tmp_path / "mix.recipe.txt"
    assert "modelC=C.safetensors" in recipe_txt.read_text().splitlines()

    # the recipe replays the merge offline, given C; without C it is refused
    again = tmp_path / "again.safetensors"
    argv = ["merge", str(a), str(b), "--recipe", str(recipe_txt), "-o", str(again)]
    assert cli_exit_code(argv) == 2
    assert "is an add-difference recipe" in capsys.readouterr().err
    assert cli_exit_code([*argv, "--model-c", str(c)]) == 0
    assert all(torch.equal(load_file(again)[k], t) for k, t in want.items())


def test_merge_cli_refuses_model_c_with_a_weighted_sum_recipe(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    a, b, c = files
    plain = tmp_path / "plain.recipe.txt"
    plain.write_text(Recipe("A.safetensors", "B.safetensors", "o", _weights()).to_text())
    argv = ["merge", str(a), str(b), "--recipe", str(plain), "--model-c", str(c)]
    assert cli_exit_code([*argv, "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "weighted-sum recipe of A and B, but --model-c was given" in capsys.readouterr().err


def test_offline_merge_names_model_c_of_the_wrong_shape(files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b, _ = files
    bad = _bad_c(tmp_path / "badC.safetensors")
    recipe = Recipe("A", "B", "o", _weights(), model_c="badC", formula=Formula.ADD_DIFFERENCE)
    with pytest.raises(ModelMismatchError, match=r"in model C \(badC.safetensors\)"):
        merge_checkpoints(a, b, recipe, tmp_path / "o.safetensors", model_c=bad)
    assert not (tmp_path / "o.safetensors").exists()
    with pytest.raises(ConfigError, match="no model C file was given"):
        merge_checkpoints(a, b, recipe, tmp_path / "o.safetensors")


def test_recover_keeps_the_formula_and_merges_with_model_c(files, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    a, b, c = files
    source = tmp_path / "best.recipe.txt"
    source.write_text(
        Recipe(
            "A.safetensors",
            "B.safetensors",
            "o",
            _weights(),
            model_c="C.safetensors",
            formula=Formula.ADD_DIFFERENCE,
        ).to_text()
    )
    out = tmp_path / "rec.safetensors"
    argv = ["recover", str(source), "--merge", str(a), str(b), "-o", str(out)]
    assert cli_exit_code(argv) == 2
    assert "--merge A B needs model C's file too" in capsys.readouterr().err
    assert cli_exit_code([*argv, "--model-c", str(c), "--out", str(tmp_path / "again")]) == 0
    recovered = Recipe.from_text((tmp_path / "again.recipe.txt").read_text())
    assert recovered.formula is Formula.ADD_DIFFERENCE and recovered.model_c == "C.safetensors"
    states = [load_file(p) for p in files]
    want = merge_state(states[0], states[1], _weights(), states[2])
    assert all(torch.equal(load_file(out)[k], t) for k, t in want.items())
