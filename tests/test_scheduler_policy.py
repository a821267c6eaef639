"""The scheduler's policies against small fake clients (the ``InstanceClient`` seam).

Retries across instances, abandoning after ``max_attempts``, disabling on a setup error,
probing a parked instance, the stop state, and what the scheduler reads of a txt2img answer.
No HTTP here: the same scheduler runs against simulated WebUIs in test_scheduler.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image

from autombw_cli.blocks import Arch, Weights
from autombw_cli.errors import WebUIError
from autombw_cli.search.events import (
    EvaluationFailed,
    Event,
    InstanceStateChanged,
    StopReason,
    WorkerState,
)
from autombw_cli.search.scheduler import (
    Candidate,
    Instance,
    InstanceClient,
    Outcome,
    PromptSpec,
    RunPhase,
    Scheduler,
    SchedulerSettings,
    StopState,
)
from autombw_cli.webui.errors import WebUIAuthError, WebUIServerError, WebUIUnreachable

pytestmark = pytest.mark.timeout(60)

PROMPTS = [
    PromptSpec("apple", 0, "a red apple", "", 1, {"prompt": "a red apple", "seed": 1}),
    PromptSpec("tree", 0, "a green tree", "", 2, {"prompt": "a green tree", "seed": 2}),
]
QUICK = SchedulerSettings(
    max_attempts=3,
    park_after=3,
    probe_backoff_s=0.01,
    probe_backoff_max_s=0.02,
    all_down_after_s=30.0,
)


@dataclass(frozen=True)
class Merged:
    merge_id: str


@dataclass(frozen=True)
class Status:
    version: str = "fake-bridge"


@dataclass(frozen=True)
class Rendering:
    images: Sequence[Image.Image]
    raw_images: Sequence[bytes]
    info: Mapping[str, Any]
    seeds: Sequence[int]


@dataclass
class FakeClient:
    """Renders one image per prompt; ``merge_errors`` are raised by the next merges, in order,
    ``ping_errors`` by the next pings. A merge waits for ``gate``; the second merge on opens
    ``opens`` (to order two instances without timing)."""

    merge_errors: list[WebUIError] = field(default_factory=list)
    ping_errors: list[WebUIError] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, list[int]] = field(default_factory=dict)  # per prompt
    gate: asyncio.Event | None = None
    opens: asyncio.Event | None = None
    merges: int = 0
    pings: int = 0

    async def ping(self) -> object:
        self.pings += 1
        if self.ping_errors:
            raise self.ping_errors.pop(0)
        return None

    async def bridge_status(self) -> Status:
        return Status()

    async def ensure_merge_live(self, merge_id: str) -> object:
        return None

    async def bridge_merge(
        self, model_a: str, model_b: str, weights: Weights, *, cache_device: str = "auto"
    ) -> Merged:
        if self.gate is not None:
            await self.gate.wait()
        self.merges += 1
        if self.opens is not None and self.merges >= 2:
            self.opens.set()
        if self.merge_errors:
            raise self.merge_errors.pop(0)
        return Merged(f"m{self.merges}")

    async def txt2img(self, body: Mapping[str, Any]) -> Rendering:
        # a different image per merge, so the identical-image guard has nothing to say
        img = Image.new("RGB", (4, 4), (self.merges % 256, 0, 0))
        return Rendering([img], [b"png"], self.info, self.seeds.get(body["prompt"], []))


def _typed(client: FakeClient) -> InstanceClient:
    return client  # the fake satisfies the seam the scheduler declares


class Constant:
    name = "constant"

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        return [0.5] * len(images)


class Source:
    def __init__(self, n: int) -> None:
        self.n = n
        self.issued = 0
        self.completed: list[Outcome] = []
        self.abandoned: list[tuple[int, str]] = []

    def next_candidate(self) -> Candidate | None:
        if self.issued >= self.n:
            return None
        self.issued += 1
        return Candidate(self.issued, Weights.uniform(Arch.SD1, self.issued / 10), 1)

    def complete(self, outcome: Outcome) -> None:
        self.completed.append(outcome)

    def abandon(self, candidate: Candidate, reason: str) -> None:
        self.abandoned.append((candidate.number, reason))


def _scheduler(
    clients: Mapping[str, FakeClient], events: list[Event], settings: SchedulerSettings = QUICK
) -> tuple[Scheduler, list[Instance]]:
    instances = [Instance(label, _typed(c)) for label, c in clients.items()]
    sched = Scheduler(
        instances,
        Constant(),
        PROMPTS,
        model_a="A",
        model_b="B",
        emit=events.append,
        settings=settings,
    )
    return sched, instances


def _states(events: list[Event], label: str) -> list[tuple[WorkerState, str]]:
    return [
        (e.state, e.detail)
        for e in events
        if isinstance(e, InstanceStateChanged) and e.instance == label
    ]


def test_a_failed_evaluation_is_retried_on_another_instance() -> None:
    # "b" stays in its first merge until "a" has failed and merged again: "a" is free to take
    # the retry first, and must leave it to "b"
    b_may_go = asyncio.Event()
    oom = WebUIServerError("CUDA out of memory", status_code=500)
    a = FakeClient(merge_errors=[oom], opens=b_may_go)
    b = FakeClient(gate=b_may_go)
    events: list[Event] = []
    sched, (ia, _) = _scheduler({"a": a, "b": b}, events)
    source = Source(4)
    assert asyncio.run(sched.run(source)) is None  # the source ran dry
    assert sorted(o.candidate.number for o in source.completed) == [1, 2, 3, 4]
    retried = [o for o in source.completed if o.attempts == 2]
    assert len(retried) == 1 and retried[0].instance == "b"
    failed = [e for e in events if isinstance(e, EvaluationFailed)]
    assert len(failed) == 1 and failed[0].will_retry and failed[0].instance == "a"
    assert failed[0].number == retried[0].candidate.number
    # one failure out of park_after: "a" kept working
    assert not ia.parked and ia.failures == 1
    assert not source.abandoned


def test_an_evaluation_is_abandoned_after_max_attempts() -> None:
    oom = [WebUIServerError("CUDA out of memory", status_code=500) for _ in range(2)]
    client = FakeClient(merge_errors=oom)
    events: list[Event] = []
    settings = SchedulerSettings(max_attempts=2, park_after=5, prefetch=False)
    sched, (inst,) = _scheduler({"solo": client}, events, settings)
    source = Source(2)
    asyncio.run(sched.run(source))
    # the only instance takes its own retry; two tries, then the source hears it failed
    assert [n for n, _ in source.abandoned] == [1]
    assert "CUDA out of memory" in source.abandoned[0][1]
    assert [o.candidate.number for o in source.completed] == [2]
    failed = [(e.attempt, e.will_retry) for e in events if isinstance(e, EvaluationFailed)]
    assert failed == [(1, True), (2, False)]
    assert inst.failures == 2 and not inst.parked


def test_a_setup_error_disables_the_instance_without_probing_it() -> None:
    client = FakeClient(merge_errors=[WebUIAuthError("wrong password", status_code=401)])
    events: list[Event] = []
    settings = SchedulerSettings(probe_backoff_s=0.01, all_down_after_s=0.2)
    sched, (inst,) = _scheduler({"solo": client}, events, settings)
    source = Source(3)
    assert asyncio.run(sched.run(source)) is StopReason.ALL_DOWN
    assert sched.stop_reason is StopReason.ALL_DOWN
    assert client.pings == 0 and client.merges == 1  # taken out: never probed, never retried
    assert inst.disabled and inst.state is WorkerState.DOWN
    assert (WorkerState.DOWN, "needs attention: wrong password") in _states(events, "solo")
    assert source.abandoned == [(1, "every instance is down")]
    assert not source.completed


def test_a_parked_instance_is_probed_until_it_answers_and_rejoins() -> None:
    down = [WebUIUnreachable("connection refused") for _ in range(3)]
    client = FakeClient(merge_errors=[WebUIUnreachable("connection refused")], ping_errors=down)
    events: list[Event] = []
    sched, (inst,) = _scheduler({"solo": client}, events)
    source = Source(3)
    assert asyncio.run(sched.run(source)) is None
    assert client.pings == 4  # three refused probes, then one that answers
    assert [o.candidate.number for o in source.completed] == [1, 2, 3]
    assert source.completed[0].attempts == 2
    states = _states(events, "solo")
    down_at = states.index((WorkerState.DOWN, "connection refused"))
    assert states[down_at + 1] == (WorkerState.IDLE, "rejoined")
    assert not inst.parked and inst.failures == 1 and inst.state is WorkerState.DONE


def test_the_webui_version_and_seeds_come_from_the_txt2img_answer() -> None:
    client = FakeClient(info={"version": "v1.10.1"}, seeds={"a red apple": [7]})
    sched, (inst,) = _scheduler({"solo": client}, [])
    source = Source(1)
    asyncio.run(sched.run(source))
    assert inst.webui_version == "v1.10.1"
    (outcome,) = source.completed
    # one seed per image where the WebUI says it, None where it does not
    assert [(ri.spec.payload_name, ri.seed) for ri in outcome.images] == [
        ("apple", 7),
        ("tree", None),
    ]


def test_a_stop_asked_before_the_run_hands_out_nothing() -> None:
    client = FakeClient()
    sched, (inst,) = _scheduler({"solo": client}, [])
    sched.request_stop()
    sched.request_stop(StopReason.TIME)  # the first reason wins
    source = Source(3)
    assert asyncio.run(sched.run(source)) is StopReason.INTERRUPTED
    assert source.issued == 0 and client.merges == 0
    assert inst.state is WorkerState.DONE


def test_the_stop_state_moves_one_way() -> None:
    stop = StopState()
    assert stop.phase is RunPhase.RUNNING and not stop.ended and not stop.winding_down
    stop.finish()
    assert stop.phase is RunPhase.OVER and stop.ended and not stop.winding_down
    assert stop.request(StopReason.INTERRUPTED)  # a stop after the source ran dry still counts
    assert stop.phase is RunPhase.STOPPING and stop.winding_down
    assert not stop.request(StopReason.ALL_DOWN)
    stop.finish()  # a finished source does not undo a stop
    assert stop.phase is RunPhase.STOPPING and stop.reason is StopReason.INTERRUPTED
    error = RuntimeError("scorer crashed")
    stop.fail(error)
    assert stop.phase is RunPhase.FAILED and stop.error is error and stop.winding_down
    assert not stop.request(StopReason.TIME)
    assert stop.reason is StopReason.INTERRUPTED
