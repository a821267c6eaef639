"""Full (small) searches in-process: `Run` against simulated WebUIs over loopback."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from autombw_cli.app.run import Run
from autombw_cli.config import load_config
from autombw_cli.errors import WebUIError
from autombw_cli.search.events import EvaluationDone, RunFinished, StopReason
from autombw_cli.search.scheduler import SchedulerSettings
from search_helpers import write_search_config

# the journal (search helper) is needed by every full run
pytest.importorskip("autombw_cli.search.journal")

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


@pytest.fixture
def sims(start_sim) -> list:  # type: ignore[no-untyped-def]
    return [start_sim(arch="sd1", latency_per_image=0.01) for _ in range(3)]


def _listed(handles) -> str:  # type: ignore[no-untyped-def]
    items = ", ".join(f"{{url: '{h.url}', label: gpu{i}}}" for i, h in enumerate(handles))
    return f"[{items}]"


def _execute(run: Run, events: list | None = None):  # type: ignore[no-untyped-def]
    sink = events.append if events is not None else (lambda e: None)
    return asyncio.run(run.execute(sink, handle_signals=False))


def test_quick_search_writes_every_output(tmp_path: Path) -> None:
    cfg = load_config(write_search_config(tmp_path, evaluations=10, prompts=2))
    events: list = []
    result = _execute(Run.create(cfg), events)
    d = result.run_dir
    assert result.exit_code == 0 and result.reason is StopReason.BUDGET
    assert result.done == 10
    for name in (
        "config.yaml",
        "prompts.json",
        "history.csv",
        "run.log",
        "summary.json",
        "test-merge.recipe.txt",
        "test-merge.recipe.json",
        "plots/scores.png",
        "plots/best-weights.png",
        "plots/top-k.png",
        "best-images/prompts.txt",
    ):
        assert (d / name).is_file(), name
    assert len(list((d / "best-images").glob("*.png"))) == 2  # one per expanded prompt
    summary = json.loads((d / "summary.json").read_text())
    assert summary["evaluations"] == 10
    assert summary["best"]["score"] == max(
        e.evaluation.score for e in events if isinstance(e, EvaluationDone)
    )
    assert summary["outputs"]["checkpoint"]  # the final merge through the bridge
    assert (d / "test-merge.safetensors").is_file()  # copied out of the simulator's folder
    assert all(i["webui_version"].startswith("autombw-sim") for i in summary["instances"].values())
    prompts = json.loads((d / "prompts.json").read_text())
    assert [p["prompt"] for p in prompts] == ["a photo of an apple", "a photo of a tree"]
    assert isinstance(events[-1], RunFinished)


def test_one_instance_killed_mid_run(tmp_path: Path, sims) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(write_search_config(tmp_path, instances=_listed(sims), evaluations=15))
    run = Run.create(cfg)
    events: list = []

    def sink(e) -> None:  # type: ignore[no-untyped-def]
        events.append(e)
        if isinstance(e, EvaluationDone) and e.done == 4:
            sims[2].stop()

    result = asyncio.run(run.execute(sink, handle_signals=False))
    assert result.exit_code == 0 and result.done == 15
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["instances"]["gpu2"]["state"] == "down"
    numbers = [e.evaluation.number for e in events if isinstance(e, EvaluationDone)]
    assert len(numbers) == len(set(numbers)) == 15


def test_every_instance_down_stops_with_what_was_saved(tmp_path: Path, sims) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(write_search_config(tmp_path, instances=_listed(sims), evaluations=40))
    run = Run.create(cfg)
    run.scheduler_settings = SchedulerSettings(
        park_after=1, probe_backoff_s=0.1, probe_backoff_max_s=0.2, all_down_after_s=0.5
    )

    def sink(e) -> None:  # type: ignore[no-untyped-def]
        if isinstance(e, EvaluationDone) and e.done == 3:
            for h in sims:
                h.stop()

    result = asyncio.run(run.execute(sink, handle_signals=False))
    assert result.reason is StopReason.ALL_DOWN and result.exit_code == 3
    assert 3 <= result.done < 40
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["evaluations"] == result.done
    assert (result.run_dir / "test-merge.recipe.txt").is_file()


def test_resume_continues_the_budget(tmp_path: Path) -> None:
    cfg = load_config(
        write_search_config(
            tmp_path,
            evaluations=12,
            passes="[{optimizer: random, max_evaluations: 5}, {optimizer: tpe}]",
            outputs="{run_dir: runs, save_images: none, final_merge: false}",
        )
    )
    first = _execute(Run.create(cfg, max_evaluations=7))
    assert first.done == 7
    events: list = []
    second = _execute(Run.resume(first.run_dir), events)
    assert second.run_dir == first.run_dir
    assert second.done == 12
    new = [e for e in events if isinstance(e, EvaluationDone)]
    assert sorted(e.evaluation.number for e in new) == list(range(8, 13))
    assert all(e.evaluation.pass_index == 2 for e in new)


def test_unreachable_instances_fail_preflight_with_every_problem(tmp_path: Path) -> None:
    instances = "[{url: 'http://127.0.0.1:9', label: a}, {url: 'http://127.0.0.1:11', label: b}]"
    cfg = load_config(write_search_config(tmp_path, instances=instances))
    with pytest.raises(WebUIError) as exc:
        _execute(Run.create(cfg))
    assert "2 problem(s)" in exc.value.message
    assert "a (" in exc.value.message and "b (" in exc.value.message
    assert not (tmp_path / "runs").exists()  # no run folder (nor an empty runs/) left behind


def test_warm_start_from_an_auto_mbw_rt_history(tmp_path: Path) -> None:
    from conftest import FIXTURES

    csv_path = FIXTURES / "auto-mbw-rt" / "history-15b-AstolfoMix-08b09b.csv"
    cfg = load_config(
        write_search_config(
            tmp_path,
            evaluations=3,
            frozen="{}",
            passes="[{optimizer: tpe}]",
            outputs="{run_dir: runs, save_images: none, final_merge: false}",
        )
    )
    result = _execute(Run.create(cfg, warm_start=csv_path))
    assert result.done == 3
    log = (result.run_dir / "run.log").read_text()
    assert "warm start: 96 evaluations" in log
    told = re.search(r"warm-started with (\d+) evaluations", log)
    assert told is not None and 90 <= int(told.group(1)) <= 96  # repeats in the CSV are skipped


def test_offline_final_merge_writes_the_checkpoint_into_the_run(tmp_path: Path) -> None:
    from safetensors import safe_open

    from autombw_cli.sim.server import write_builtin_models

    a, b = write_builtin_models(tmp_path / "models", "sd1")
    models = (
        f"{{a: simA.safetensors, b: simB.safetensors, output: test-merge, arch: sd1, "
        f"a_file: '{a}', b_file: '{b}'}}"
    )
    cfg = load_config(
        write_search_config(
            tmp_path,
            evaluations=3,
            models=models,
            outputs="{run_dir: runs, save_images: none, final_merge: true, merge_via: offline}",
        )
    )
    result = _execute(Run.create(cfg))
    ckpt = result.run_dir / "test-merge.safetensors"
    assert result.outputs["checkpoint"] == str(ckpt)
    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
    assert "sd_mbwrt_recipe" in meta


def test_preflight_checks_that_a_and_b_merge_as_the_configured_arch(tmp_path: Path, sims) -> None:  # type: ignore[no-untyped-def]
    models = "{a: simA.safetensors, b: simB.safetensors, output: test-merge, arch: sdxl}"
    cfg = load_config(write_search_config(tmp_path, instances=_listed(sims[:1]), models=models))
    with pytest.raises(WebUIError) as exc:
        _execute(Run.create(cfg))
    assert "gpu0" in exc.value.message and "models A and B" in exc.value.message


def test_a_failing_scorer_stops_the_run_but_keeps_what_was_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real Scorer that breaks after a few batches (injected at the run's scorer seam)."""
    import numpy as np

    from autombw_cli.app import instances
    from autombw_cli.errors import ScorerError

    class BreaksLater:
        name = "breaks-later"
        calls = 0

        def score(self, images, prompts):  # type: ignore[no-untyped-def]
            BreaksLater.calls += 1
            if BreaksLater.calls > 3:
                raise ScorerError("the scorer's GPU fell off the bus")
            return [float(np.asarray(im).mean()) for im in images]

        closed = 0

        def close(self) -> None:
            BreaksLater.closed += 1

    async def load(config):  # type: ignore[no-untyped-def]
        return BreaksLater()

    monkeypatch.setattr(instances, "load_scorer", load)
    cfg = load_config(write_search_config(tmp_path, evaluations=30))
    run = Run.create(cfg)
    with pytest.raises(ScorerError, match="fell off the bus"):
        _execute(run)
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "failed"
    assert 1 <= summary["evaluations"] < 30
    assert "checkpoint" not in summary["outputs"]
    assert BreaksLater.closed == 1  # the run closes its scorer however it ends
