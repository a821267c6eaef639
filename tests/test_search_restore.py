"""After a search, however it ends, every WebUI holds plain model A again with the bridge's
caches freed (A1111 otherwise keeps the last candidate merged under A's name, and ~7 GB of
caches). The WebUIs are simulated ones started here, listed in the config as real instances
are, so their state can be read once the run is over."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autombw_cli.app.run import Run
from autombw_cli.config import load_config
from autombw_cli.search.events import EvaluationDone, RunFinished, StopReason
from autombw_cli.sim.server import SimulatorHandle
from search_helpers import history_numbers, write_search_config

pytest.importorskip("autombw_cli.search.journal")

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


@pytest.fixture
def sims(start_sim: Callable[..., SimulatorHandle]) -> list[SimulatorHandle]:
    return [start_sim(arch="sd1", latency_per_image=0.02) for _ in range(2)]


def _listed(handles: list[SimulatorHandle]) -> str:
    items = ", ".join(f"{{url: '{h.url}', label: gpu{i}}}" for i, h in enumerate(handles))
    return f"[{items}]"


def _config(tmp_path: Path, sims: list[SimulatorHandle], *, evaluations: int, outputs: str = ""):  # type: ignore[no-untyped-def]
    out = "{run_dir: runs, save_images: best, final_merge: true" + outputs + "}"
    return write_search_config(
        tmp_path, instances=_listed(sims), evaluations=evaluations, outputs=out
    )


def assert_plain_a(handle: SimulatorHandle) -> None:
    status = handle.sim.core.status()
    assert status["merge_id"] is None and status["merge_live"] is False, status
    assert status["cache_bytes"] == 0, status
    assert status["loaded_checkpoint"].startswith("simA"), status
    live = handle.sim.host.live_model().state_dict()  # type: ignore[union-attr]
    a = load_file(handle.sim.model_dir / "simA.safetensors")
    assert all(torch.equal(live[k], t) for k, t in a.items())


def assert_merged(handle: SimulatorHandle) -> None:
    status = handle.sim.core.status()
    assert status["merge_live"] is True and status["cache_bytes"] > 0, status


def test_finished_search_restores_every_instance_after_the_final_merge(
    tmp_path: Path, sims: list[SimulatorHandle]
) -> None:
    run = Run.create(load_config(_config(tmp_path, sims, evaluations=8)))
    events: list = []
    result = asyncio.run(run.execute(events.append, handle_signals=False))
    assert result.reason is StopReason.BUDGET
    assert "checkpoint" in result.outputs  # saved through a bridge, before the restore
    for h in sims:
        assert_plain_a(h)
    assert isinstance(events[-1], RunFinished)


def test_keep_merge_loaded_leaves_the_last_merge(
    tmp_path: Path, sims: list[SimulatorHandle]
) -> None:
    cfg = load_config(_config(tmp_path, sims, evaluations=6, outputs=", keep_merge_loaded: true"))
    asyncio.run(Run.create(cfg).execute(lambda e: None, handle_signals=False))
    for h in sims:
        assert_merged(h)


def test_interrupted_search_restores_every_instance(
    tmp_path: Path, sims: list[SimulatorHandle]
) -> None:
    """The first Ctrl-C: evaluations in flight finish, the outputs are written."""
    run = Run.create(load_config(_config(tmp_path, sims, evaluations=200)))

    async def main():  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()

        def sink(e: object) -> None:  # events may come from a worker thread
            if isinstance(e, EvaluationDone) and e.done == 3 and run._scheduler is not None:
                loop.call_soon_threadsafe(run._scheduler.request_stop, StopReason.INTERRUPTED)

        return await run.execute(sink, handle_signals=False)

    result = asyncio.run(main())
    assert result.reason is StopReason.INTERRUPTED and result.done < 200
    for h in sims:
        assert_plain_a(h)


def test_aborted_search_restores_every_instance(
    tmp_path: Path, sims: list[SimulatorHandle]
) -> None:
    """The second Ctrl-C: the run's task is cancelled mid-evaluation."""
    run = Run.create(load_config(_config(tmp_path, sims, evaluations=200)))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task: asyncio.Task | None = None

        def sink(e: object) -> None:  # events may come from a worker thread
            if isinstance(e, EvaluationDone) and e.done == 3 and task is not None:
                loop.call_soon_threadsafe(task.cancel)

        task = asyncio.create_task(run.execute(sink, handle_signals=False))
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    for h in sims:
        assert_plain_a(h)


def test_failed_search_restores_every_instance(
    tmp_path: Path, sims: list[SimulatorHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
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

        def close(self) -> None:
            """Holds nothing."""

    async def load(config):  # type: ignore[no-untyped-def]
        return BreaksLater()

    monkeypatch.setattr(instances, "load_scorer", load)
    run = Run.create(load_config(_config(tmp_path, sims, evaluations=200)))
    with pytest.raises(ScorerError):
        asyncio.run(run.execute(lambda e: None, handle_signals=False))
    for h in sims:
        assert_plain_a(h)


def test_sigterm_restores_every_instance(tmp_path: Path, sims: list[SimulatorHandle]) -> None:
    """`autombw search` stopped by SIGTERM (a service manager, `kill`, a container stop)."""
    cfg = _config(tmp_path, sims, evaluations=400)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "autombw_cli", "search", "--plain", str(cfg)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = 0
        deadline = time.monotonic() + 150
        while seen < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line.startswith("[")
        assert seen >= 3, proc.stderr.read() if proc.poll() is not None else "no evaluations"  # type: ignore[union-attr]
        assert any(h.sim.core.status()["merge_id"] for h in sims)  # mid-search: merged
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    run_dir = next((tmp_path / "runs").iterdir())
    assert len(history_numbers(run_dir)) >= 3
    for h in sims:
        assert_plain_a(h)
