"""Reliability: full searches against simulated WebUIs (real HTTP over loopback) while one
instance misbehaves. Every case checks the same promises:

- the search finishes with the full number of recorded evaluations;
- every recorded score comes from a verified merge: the merge id in ``history.csv`` is one the
  simulators actually rendered with while that merge was live (recorded by wrapping the
  simulator's own ``txt2img``), and no recorded row has an empty merge id;
- no evaluation is recorded twice (distinct numbers, distinct weights);
- ``run.log`` says what happened.

Cases that cannot finish (wrong credentials or no bridge at start) must stop in the preflight
with a message naming the instance and the problem, and record nothing.
"""

from __future__ import annotations

import asyncio
import csv
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from autombw_cli.app.run import Run
from autombw_cli.config import load_config
from autombw_cli.errors import WebUIError
from autombw_cli.sim.faults import FaultPlan
from autombw_cli.sim.server import SimulatorHandle
from search_helpers import write_search_config

pytest.importorskip("autombw_cli.search.journal")

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

EVALUATIONS = 12
WEIGHT_COLUMNS_SKIP = {"number", "pass", "state", "timestamp", "worker", "merge_id", "score"}


class RenderLog:
    """Wraps a simulator's ``txt2img`` to record the merge id each render was made with."""

    def __init__(self) -> None:
        self.merge_ids: set[str] = set()
        self._lock = threading.Lock()

    def wrap(self, handle: SimulatorHandle, before: Callable[[int], None] | None = None) -> None:
        sim = handle.sim
        original = sim.txt2img
        calls = {"n": 0}

        def txt2img(req: Any) -> Any:
            with self._lock:
                calls["n"] += 1
                n = calls["n"]
            if before is not None:
                before(n)
            answer = original(req)
            if isinstance(answer, dict):
                import json

                merge_id = json.loads(answer["info"]).get("autombw_merge_id")
                if merge_id:
                    with self._lock:
                        self.merge_ids.add(merge_id)
            return answer

        sim.txt2img = txt2img  # type: ignore[method-assign]


def _start(
    start_sim: Callable[..., SimulatorHandle], n: int, **options: Any
) -> list[SimulatorHandle]:
    """``n`` simulators (conftest's `start_sim`); ``options`` apply to the first (gpu0) only."""
    first = start_sim(arch="sd1", stop_timeout=3, **{"latency_per_image": 0.01, **options})
    rest = [start_sim(arch="sd1", latency_per_image=0.01, stop_timeout=3) for _ in range(n - 1)]
    return [first, *rest]


def _instances(handles: list[SimulatorHandle], first_extra: str = "") -> str:
    items = []
    for i, h in enumerate(handles):
        extra = f", {first_extra}" if i == 0 and first_extra else ""
        items.append(f"{{url: '{h.url}', label: gpu{i}{extra}}}")
    return "[" + ", ".join(items) + "]"


def _run(tmp_path: Path, instances: str, sink: Callable[[Any], None] | None = None) -> Any:
    cfg = load_config(
        write_search_config(
            tmp_path,
            instances=instances,
            evaluations=EVALUATIONS,
            outputs="{run_dir: runs, save_images: none, final_merge: false}",
        )
    )
    run = Run.create(cfg)
    run.scheduler_settings = type(run.scheduler_settings)(
        **{
            **run.scheduler_settings.__dict__,
            "probe_backoff_s": 0.2,
            "probe_backoff_max_s": 0.5,
            "max_attempts": 5,
        }
    )
    return asyncio.run(run.execute(sink or (lambda e: None), handle_signals=False))


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _check_history(run_dir: Path, rendered: RenderLog) -> list[dict[str, str]]:
    rows = _rows(run_dir)
    assert len(rows) == EVALUATIONS
    assert sorted(int(r["number"]) for r in rows) == list(range(1, EVALUATIONS + 1))
    assert all(r["state"] == "complete" for r in rows)
    assert all(r["merge_id"] for r in rows), "a recorded score without a merge id"
    unverified = {r["merge_id"] for r in rows} - rendered.merge_ids
    assert not unverified, f"merge ids no simulator rendered with: {unverified}"
    assert len({r["merge_id"] for r in rows}) == EVALUATIONS
    weights = [
        tuple(v for k, v in r.items() if k not in WEIGHT_COLUMNS_SKIP and k.isupper()) for r in rows
    ]
    assert len(set(weights)) == EVALUATIONS, "the same weights were recorded twice"
    return rows


def _log(run_dir: Path) -> str:
    return (run_dir / "run.log").read_text(encoding="utf-8")


def _all_rendered(handles: list[SimulatorHandle], **wrap: Any) -> RenderLog:
    rendered = RenderLog()
    for i, h in enumerate(handles):
        rendered.wrap(h, wrap.get(f"before{i}"))
    return rendered


def test_instance_killed_mid_generation(
    tmp_path: Path, start_sim: Callable[..., SimulatorHandle]
) -> None:
    """gpu0's server is stopped while its first render runs. Every gpu0 render stalls until its
    server stops and then drops the half-sent answer (the simulator's stall fault), so the kill
    lands mid-generation whatever the load; the first render is certain to come, because each
    instance takes a candidate as the run starts (gpu0 first)."""
    stall = FaultPlan(stall_every=1, stall_seconds=600)
    handles = _start(start_sim, 3, faults=stall)
    victim = handles[0]
    stopper = threading.Thread(target=victim.stop, kwargs={"timeout": 3})

    def before(n: int) -> None:
        if n == 1:  # stop the server while this render is running
            stopper.start()

    rendered = _all_rendered(handles, before0=before)
    result = _run(tmp_path, _instances(handles))
    assert stopper.ident is not None, "gpu0 never rendered"
    stopper.join()
    assert result.exit_code == 0 and result.done == EVALUATIONS
    rows = _check_history(result.run_dir, rendered)
    assert all(r["worker"] != "gpu0" for r in rows), "the killed instance recorded a score"
    with pytest.raises(httpx.ConnectError):  # the server is gone, not just one answer
        httpx.get(victim.url + "/internal/ping", timeout=5)
    log = _log(result.run_dir)
    # the render in flight dies with the server (gpu0's first failure), then gpu0 cannot be
    # reached until it is parked
    assert "gpu0: evaluation failed: gpu0: txt2img:" in log, log


def test_instance_restarts_and_comes_back(
    tmp_path: Path, start_sim: Callable[..., SimulatorHandle]
) -> None:
    handles = _start(start_sim, 2, faults=FaultPlan(restart_every=3))
    rendered = _all_rendered(handles)
    result = _run(tmp_path, _instances(handles))
    assert result.exit_code == 0 and result.done == EVALUATIONS
    rows = _check_history(result.run_dir, rendered)
    assert any(r["worker"] == "gpu0" for r in rows), "the restarted instance never worked again"
    log = _log(result.run_dir)
    assert "gpu0: evaluation failed: gpu0: txt2img: the connection dropped" in log, log
    assert "gpu0: back up" in log, log


def test_instance_that_stalls(tmp_path: Path, start_sim: Callable[..., SimulatorHandle]) -> None:
    # the stall (8 s) is far longer than the stall limit (1 s) plus autombw's 2 s progress polls
    handles = _start(start_sim, 2, faults=FaultPlan(stall_every=2, stall_seconds=8))
    rendered = _all_rendered(handles)
    result = _run(tmp_path, _instances(handles, "timeouts: {stall: 1}"))
    assert result.exit_code == 0 and result.done == EVALUATIONS
    _check_history(result.run_dir, rendered)
    log = _log(result.run_dir)
    assert "gpu0: txt2img made no progress" in log, log


def test_instance_answering_out_of_memory(
    tmp_path: Path, start_sim: Callable[..., SimulatorHandle]
) -> None:
    handles = _start(start_sim, 2, faults=FaultPlan(oom_every=3))
    rendered = _all_rendered(handles)
    result = _run(tmp_path, _instances(handles))
    assert result.exit_code == 0 and result.done == EVALUATIONS
    _check_history(result.run_dir, rendered)
    assert "out of memory" in _log(result.run_dir).lower()


def test_connection_dropped_mid_answer(
    tmp_path: Path, start_sim: Callable[..., SimulatorHandle]
) -> None:
    handles = _start(start_sim, 2, faults=FaultPlan(drop_every=3))
    rendered = _all_rendered(handles)
    result = _run(tmp_path, _instances(handles))
    assert result.exit_code == 0 and result.done == EVALUATIONS
    _check_history(result.run_dir, rendered)
    assert "gpu0" in _log(result.run_dir)


def test_merge_silently_lost(tmp_path: Path, start_sim: Callable[..., SimulatorHandle]) -> None:
    """Every 3rd render the WebUI reloads its checkpoint first (as a user clicking in the UI
    would): the bridge's merge is gone, the image shows plain A. It must never be scored."""
    handles = _start(start_sim, 2)
    victim = handles[0].sim

    def before(n: int) -> None:
        if n % 3 == 0:
            ref = victim.host.loaded_checkpoint()
            assert ref is not None
            victim.host.load_checkpoint(ref)

    rendered = _all_rendered(handles, before0=before)
    result = _run(tmp_path, _instances(handles))
    assert result.exit_code == 0 and result.done == EVALUATIONS
    _check_history(result.run_dir, rendered)
    log = _log(result.run_dir)
    assert "no longer in the model" in log and "gpu0" in log, log


def test_credentials_revoked_mid_run(
    tmp_path: Path, start_sim: Callable[..., SimulatorHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REL_USER", "user")
    monkeypatch.setenv("REL_PASSWORD", "s3cret-pw")
    handles = _start(start_sim, 2, auth=("user", "s3cret-pw"))

    def before(n: int) -> None:
        if n == 2:
            handles[0].sim.set_faults(refuse_auth=True)

    rendered = _all_rendered(handles, before0=before)
    result = _run(
        tmp_path,
        _instances(handles, "auth: {user_env: REL_USER, password_env: REL_PASSWORD}"),
    )
    assert result.exit_code == 0 and result.done == EVALUATIONS
    _check_history(result.run_dir, rendered)
    log = _log(result.run_dir)
    assert "gpu0: txt2img refused (401 Unauthorized)" in log, log
    assert "s3cret-pw" not in log


def test_wrong_credentials_stop_in_preflight(
    tmp_path: Path, start_sim: Callable[..., SimulatorHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REL_USER", "user")
    monkeypatch.setenv("REL_PASSWORD", "not-the-password")
    handles = _start(start_sim, 2, auth=("user", "right-password"))
    with pytest.raises(WebUIError) as exc:
        _run(
            tmp_path, _instances(handles, "auth: {user_env: REL_USER, password_env: REL_PASSWORD}")
        )
    message = exc.value.message
    assert "gpu0" in message and ("401" in message or "credential" in message.lower())
    assert "not-the-password" not in str(exc.value) and "right-password" not in str(exc.value)
    assert not any((tmp_path / "runs").glob("*/history.csv"))  # nothing recorded


def test_instance_without_the_bridge_stops_in_preflight(
    tmp_path: Path, start_sim: Callable[..., SimulatorHandle]
) -> None:
    handles = _start(start_sim, 2, bridge=False)
    with pytest.raises(WebUIError) as exc:
        _run(tmp_path, _instances(handles))
    message = exc.value.message
    assert "gpu0" in message and "bridge" in message.lower() and "gpu1" not in message
    assert not any((tmp_path / "runs").glob("*/history.csv"))
