"""The final merge never replaces an existing checkpoint silently: re-running a config saves
under the first free name (``<output>-2``) and says so, unless ``outputs.overwrite: true``;
a final merge that fails makes the run fail (exit code of the cause). Real searches against
simulated WebUIs over loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from autombw_cli.app.run import Run
from autombw_cli.blocks import Arch
from autombw_cli.cli import main
from autombw_cli.config import load_config
from autombw_cli.search.events import RunWarning
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from autombw_cli.sim.server import SimulatorHandle, write_builtin_models
from search_helpers import write_search_config

pytest.importorskip("autombw_cli.search.journal")
pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def sim(tmp_path: Path, start_sim: Callable[..., SimulatorHandle]) -> SimulatorHandle:
    folder = tmp_path / "webui-models"
    write_builtin_models(folder, "sd1")
    # the previous run's merge (and its recipe), already in the WebUI's checkpoint folder
    write_checkpoint(folder / "test-merge.safetensors", random_state_dict(Arch.SD1, "tiny", 9))
    (folder / "test-merge.recipe.txt").write_text("the previous run's recipe\n")
    return start_sim(arch="sd1", model_dir=folder, latency_per_image=0.01)


def _search(tmp_path: Path, sim: SimulatorHandle, outputs: str) -> tuple[Path, list]:
    cfg = load_config(
        write_search_config(
            tmp_path,
            instances=f"[{{url: '{sim.url}', label: gpu0}}]",
            evaluations=3,
            outputs=outputs,
        )
    )
    events: list = []
    result = asyncio.run(Run.create(cfg).execute(events.append, handle_signals=False))
    assert result.exit_code == 0
    return result.run_dir, events


def test_a_rerun_saves_under_a_new_name_and_says_so(tmp_path: Path, sim: SimulatorHandle) -> None:
    folder = sim.sim.model_dir
    before = {p: digest(folder / p) for p in ("test-merge.safetensors", "test-merge.recipe.txt")}
    run_dir, events = _search(tmp_path, sim, "{run_dir: runs, save_images: none}")
    assert {p: digest(folder / p) for p in before} == before  # the previous merge is intact
    assert (folder / "test-merge-2.safetensors").is_file()
    assert (folder / "test-merge-2.recipe.txt").read_text().startswith("modelA=simA")
    warnings = [e.message for e in events if isinstance(e, RunWarning)]
    assert any("test-merge-2" in w and "already exists" in w for w in warnings), warnings
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["outputs"]["checkpoint"].endswith("test-merge-2.safetensors")


def test_outputs_overwrite_replaces_the_previous_merge(
    tmp_path: Path, sim: SimulatorHandle
) -> None:
    folder = sim.sim.model_dir
    old = digest(folder / "test-merge.safetensors")
    _search(tmp_path, sim, "{run_dir: runs, save_images: none, overwrite: true}")
    assert digest(folder / "test-merge.safetensors") != old
    assert (folder / "test-merge.recipe.txt").read_text().startswith("modelA=simA")
    assert not (folder / "test-merge-2.safetensors").exists()


def test_a_failed_final_merge_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = write_builtin_models(tmp_path / "models", "sd1")
    b = write_checkpoint(tmp_path / "xl.safetensors", random_state_dict(Arch.SDXL, "tiny", 2))
    models = (
        "{a: simA.safetensors, b: simB.safetensors, output: test-merge, arch: sd1, "
        f"a_file: '{a}', b_file: '{b}'}}"  # B's local file is not the B the WebUI merges
    )
    cfg = write_search_config(
        tmp_path,
        evaluations=3,
        models=models,
        outputs="{run_dir: runs, save_images: none, merge_via: offline}",
    )
    try:
        main(["search", "--plain", str(cfg)])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code == 4  # ModelMismatchError's family: the offline merge cannot merge A and B
    err = capsys.readouterr().err
    assert "final merge failed" in err and "--recipe" in err
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_code"] == 4 and "checkpoint" not in summary["outputs"]
    assert (run_dir / "test-merge.recipe.txt").is_file()
    assert not list(run_dir.glob("*.safetensors"))
