"""The scheduler against simulated WebUIs over loopback HTTP (real client, real bridge code).

The scorer here is a small real `Scorer` (mean brightness of each image): the scheduler does
not care what scores mean, only that every image gets one.
"""

from __future__ import annotations

import asyncio
import random
import threading

import numpy as np
import pytest

from autombw_cli.blocks import Arch, Weights, layout
from autombw_cli.errors import ScorerError, WebUIError
from autombw_cli.search.events import EvaluationFailed, RunWarning, StopReason, WorkerState
from autombw_cli.search.scheduler import (
    Candidate,
    Instance,
    Outcome,
    PromptSpec,
    Scheduler,
    SchedulerSettings,
)
from autombw_cli.webui.client import WebUIClient
from autombw_cli.webui.errors import (
    BridgeMissing,
    MergeLost,
    UnsupportedWebUI,
    WebUIAuthError,
    WebUIBadResponse,
    WebUIHTTPError,
    WebUIServerError,
    WebUITimeout,
    WebUIUnreachable,
    WebUIValidationError,
)
from autombw_cli.webui.timeouts import ClientTimeouts, RetryPolicy

pytestmark = pytest.mark.timeout(120)

PROMPTS = [
    PromptSpec(
        "apple",
        0,
        "a red apple",
        "",
        1,
        {"prompt": "a red apple", "seed": 1, "width": 32, "height": 32, "steps": 4},
    ),
    PromptSpec(
        "tree",
        0,
        "a green tree",
        "",
        2,
        {"prompt": "a green tree", "seed": 2, "width": 32, "height": 32, "steps": 4},
    ),
]
FAST = SchedulerSettings(
    max_attempts=4, park_after=2, probe_backoff_s=0.1, probe_backoff_max_s=0.3, all_down_after_s=1.0
)


class Brightness:
    name = "brightness"

    def score(self, images, prompts):  # type: ignore[no-untyped-def]
        return [float(np.asarray(im.convert("L")).mean()) / 255.0 for im in images]


class Source:
    """Hands out ``n`` random candidates; remembers what came back."""

    def __init__(self, n: int, on_complete=None) -> None:  # type: ignore[no-untyped-def]
        self.n = n
        self.issued = 0
        self.completed: list[Outcome] = []
        self.abandoned: list[Candidate] = []
        self.on_complete = on_complete
        self.thread_names: set[str] = set()

    def next_candidate(self) -> Candidate | None:
        self.thread_names.add(threading.current_thread().name)
        if self.issued >= self.n:
            return None
        self.issued += 1
        rng = random.Random(self.issued)
        values = {s: round(rng.random(), 1) for s in layout(Arch.SD1).slots}
        return Candidate(self.issued, Weights(Arch.SD1, values), 1)

    def complete(self, outcome: Outcome) -> None:
        self.completed.append(outcome)
        if self.on_complete is not None:
            self.on_complete(len(self.completed))

    def abandon(self, candidate: Candidate, reason: str) -> None:
        self.abandoned.append(candidate)


def _client(url: str, label: str) -> WebUIClient:
    return WebUIClient(
        url,
        label=label,
        timeouts=ClientTimeouts(connect=1.0, read=5.0, stall=5.0, poll_interval=0.2),
        retry=RetryPolicy(attempts=1, backoff=0.05),
    )


def _run(handles, source, *, settings=FAST, scorer=None, events=None):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        clients = [_client(h.url, f"sim{i}") for i, h in enumerate(handles)]
        instances = [Instance(c.label, c) for c in clients]
        sched = Scheduler(
            instances,
            scorer or Brightness(),
            PROMPTS,
            model_a="simA",
            model_b="simB",
            emit=(events.append if events is not None else lambda e: None),
            settings=settings,
        )
        try:
            reason = await sched.run(source)
        finally:
            for c in clients:
                await c.aclose()
        return reason, instances

    return asyncio.run(main())


@pytest.fixture
def sims(start_sim) -> list:  # type: ignore[no-untyped-def]
    return [start_sim(arch="sd1", latency_per_image=0.01) for _ in range(2)]


def _numbers(outcomes: list[Outcome]) -> list[int]:
    return sorted(o.candidate.number for o in outcomes)


def test_every_candidate_is_evaluated_once_across_instances(sims) -> None:  # type: ignore[no-untyped-def]
    source = Source(12)
    reason, instances = _run(sims, source)
    assert reason is None  # the source ran dry
    assert _numbers(source.completed) == list(range(1, 13))
    assert all(i.evaluations > 0 for i in instances)
    assert all(len(o.images) == 2 and len(o.raw_scores) == 2 for o in source.completed)
    # the source (optimizer, journal) is only ever called from its one thread
    assert len(source.thread_names) == 1
    assert all(i.state is WorkerState.DONE for i in instances)


def test_a_killed_instance_loses_no_evaluation(sims) -> None:  # type: ignore[no-untyped-def]
    events: list = []

    def kill(done: int) -> None:
        if done == 3:
            sims[1].stop()

    source = Source(10, on_complete=kill)
    reason, instances = _run(sims, source, events=events)
    assert reason is None
    assert _numbers(source.completed) == list(range(1, 11))  # none lost, none twice
    assert not source.abandoned
    assert instances[1].state is WorkerState.DOWN
    # nothing evaluated on the dead instance after it died was recorded as a score
    assert all(o.instance == "sim0" for o in source.completed[4:])


def test_lost_merges_are_retried_and_never_scored(sims) -> None:  # type: ignore[no-untyped-def]
    sims[0].sim.set_faults(restart_every=3)
    events: list = []
    source = Source(10)
    _run(sims, source, events=events)
    assert _numbers(source.completed) == list(range(1, 11))
    failed = [e for e in events if isinstance(e, EvaluationFailed)]
    assert failed, "the restart fault should have failed some evaluations"
    assert all(e.will_retry for e in failed)
    assert len({o.merge_id for o in source.completed}) == 10


def test_a_failing_instance_is_parked_and_rejoins(sims) -> None:  # type: ignore[no-untyped-def]
    sims[1].sim.set_faults(oom_every=1)

    def heal(done: int) -> None:
        if done == 4:
            sims[1].sim.set_faults(oom_every=0)

    source = Source(30, on_complete=heal)
    events: list = []
    _run(sims, source, events=events)
    assert _numbers(source.completed) == list(range(1, 31))
    sim1 = [e for e in events if getattr(e, "instance", None) == "sim1"]
    states = [e.state for e in sim1 if hasattr(e, "state")]
    assert WorkerState.DOWN in states
    assert any(o.instance == "sim1" for o in source.completed), "sim1 should have rejoined"


def test_every_instance_down_stops_the_run_cleanly(sims) -> None:  # type: ignore[no-untyped-def]
    def kill_all(done: int) -> None:
        if done == 2:
            for h in sims:
                h.stop()

    source = Source(50, on_complete=kill_all)
    reason, instances = _run(sims, source)
    assert reason is StopReason.ALL_DOWN
    assert all(i.state is WorkerState.DOWN for i in instances)
    done = set(_numbers(source.completed))
    assert done.isdisjoint(c.number for c in source.abandoned)
    assert len(done) >= 2


def test_a_scorer_failure_stops_the_run(sims) -> None:  # type: ignore[no-untyped-def]
    class Broken:
        name = "broken"

        def score(self, images, prompts):  # type: ignore[no-untyped-def]
            raise RuntimeError("model exploded")

    source = Source(5)
    with pytest.raises(ScorerError, match="model exploded"):
        _run(sims, source, scorer=Broken())
    assert not source.completed


def test_a_refused_request_takes_the_instance_out(sims) -> None:  # type: ignore[no-untyped-def]
    """A 4xx answer (here the bridge refuses A == B) is a setup problem: no endless retries."""
    events: list = []

    async def main():  # type: ignore[no-untyped-def]
        c = _client(sims[0].url, "sim0")
        sched = Scheduler(
            [Instance("sim0", c)],
            Brightness(),
            PROMPTS,
            model_a="simA",
            model_b="simA",
            emit=events.append,
            settings=FAST,
        )
        try:
            return await sched.run(source)
        finally:
            await c.aclose()

    source = Source(3)
    assert asyncio.run(main()) is StopReason.ALL_DOWN
    assert not source.completed
    failed = [e for e in events if isinstance(e, EvaluationFailed)]
    assert len(failed) == 1 and "same checkpoint" in failed[0].error


def test_identical_images_for_different_weights_warn_loudly() -> None:
    from PIL import Image

    from autombw_cli.search.work import IdenticalImageGuard, Job, Rendered, RenderedImage

    events: list = []
    guard = IdenticalImageGuard(events.append)
    img = Image.new("RGB", (8, 8), (10, 20, 30))
    for n, w in ((1, 0.2), (2, 0.2), (3, 0.7)):
        cand = Candidate(n, Weights.uniform(Arch.SD1, w), 1)
        guard.check(
            Rendered(Job(cand), "x", f"m{n}", [RenderedImage(PROMPTS[0], img, b"", 1)], 0, 0, 0, 0)
        )
    warnings = [e.message for e in events if isinstance(e, RunWarning)]
    assert len(warnings) == 1  # #2 repeats #1's weights (fine); #3 differs: warn
    assert "#1 and #3" in warnings[0] and "NOT being applied" in warnings[0]


@pytest.mark.parametrize(
    ("error", "needs_attention", "instance_down"),
    [
        (WebUIAuthError("no", status_code=401), True, False),
        (BridgeMissing("no", status_code=404), True, False),
        (WebUIValidationError("bad field"), True, False),
        (WebUIHTTPError("slow down", status_code=429), False, False),
        (WebUIHTTPError("request timeout", status_code=408), False, False),
        (WebUIServerError("CUDA out of memory", status_code=500), False, False),
        (UnsupportedWebUI("Forge", status_code=501), True, False),
        (WebUIUnreachable("connection refused"), False, True),
        (WebUITimeout("stalled"), False, True),
        (WebUIBadResponse("not JSON"), False, False),
        (MergeLost("reloaded"), False, False),
    ],
)
def test_webui_errors_say_how_the_scheduler_treats_the_instance(
    error: WebUIError, needs_attention: bool, instance_down: bool
) -> None:
    """The scheduler parks an instance for good on ``needs_attention`` and probes it on
    ``instance_down`` (it reads these instead of importing webui/'s classes)."""
    assert error.needs_attention is needs_attention
    assert error.instance_down is instance_down
