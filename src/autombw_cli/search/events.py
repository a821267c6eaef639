"""What a run tells the outside world while it works: small frozen event values.

``search/`` never draws to the terminal. The run and its scheduler call an ``EventSink`` (any
callable taking one event) and ``report/progress.py`` turns the stream into a live display,
plain lines or JSON lines. Every event is a frozen dataclass with a ``kind`` name and a
``to_dict()`` for the JSON log; sinks must be quick and must not raise.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autombw_cli.search.evaluation import Evaluation

log = logging.getLogger(__name__)


class WorkerState(StrEnum):
    """What one WebUI instance is doing right now."""

    STARTING = "starting"
    IDLE = "idle"
    MERGING = "merging"
    GENERATING = "generating"
    SCORING = "scoring"  # its last images wait in the scoring stage, nothing else to do
    DOWN = "down"  # parked after failures, probed with backoff
    DONE = "done"


class StopReason(StrEnum):
    """Why a run ended."""

    BUDGET = "budget"  # every pass used its evaluations (or the total budget was reached)
    EARLY_STOPPED = "early_stopped"  # the last pass stopped early: no improvement for a while
    TIME = "time"  # max wall time reached
    EXHAUSTED = "exhausted"  # the optimizer has nothing new to propose
    INTERRUPTED = "interrupted"  # Ctrl-C (first press): in-flight work finished, outputs written
    ALL_DOWN = "all_down"  # every instance is down
    FAILED = "failed"  # a fatal error (the scorer, the journal); outputs written, error raised


@dataclass(frozen=True)
class Event:
    at: float = field(default_factory=time.time, kw_only=True)

    @property
    def kind(self) -> str:
        name = type(self).__name__
        return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"event": self.kind}
        for f in dataclasses.fields(self):
            data[f.name] = _jsonable(getattr(self, f.name))
        return data


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: Path
    name: str
    budget: int | None
    instances: tuple[str, ...]
    already_done: int = 0  # evaluations found in the journal (resume)
    max_time_s: float | None = None


@dataclass(frozen=True)
class PassStarted(Event):
    index: int  # 1-based
    optimizer: str
    budget: int | None  # this pass's evaluations


@dataclass(frozen=True)
class InstanceStateChanged(Event):
    instance: str
    state: WorkerState
    detail: str = ""


@dataclass(frozen=True)
class EvaluationDone(Event):
    """One evaluation finished and was journaled, with the run's progress at that moment."""

    evaluation: Evaluation
    done: int  # completed evaluations so far (journal included)
    budget: int | None
    best_score: float
    best_number: int
    is_best: bool

    def to_dict(self) -> dict[str, Any]:
        """The evaluation's fields flat, as the JSON log has always written them."""
        e = self.evaluation
        pruned = {"state": e.state.value} if e.pruned else {}  # its score is an estimate
        return {
            **pruned,
            "event": self.kind,
            "at": self.at,
            "number": e.number,
            "pass_index": e.pass_index,
            "instance": e.instance,
            "score": e.score,
            "payload_scores": _jsonable(dict(e.payload_scores)),
            "weights": e.weights.to_dict(),
            "duration_s": e.duration_s,
            "done": self.done,
            "budget": self.budget,
            "best_score": self.best_score,
            "best_number": self.best_number,
            "is_best": self.is_best,
        }


@dataclass(frozen=True)
class EvaluationFailed(Event):
    number: int
    instance: str
    attempt: int
    error: str
    will_retry: bool


@dataclass(frozen=True)
class ScorerQueue(Event):
    depth: int  # evaluations waiting for or in the scorer


@dataclass(frozen=True)
class RunWarning(Event):
    message: str


@dataclass(frozen=True)
class Notice(Event):
    """Something worth a line while nothing else shows (preflight, loading the scorer)."""

    message: str


@dataclass(frozen=True)
class OutputWritten(Event):
    path: Path
    what: str


@dataclass(frozen=True)
class RunFinished(Event):
    reason: StopReason
    done: int
    best_score: float | None
    best_number: int | None
    run_dir: Path
    elapsed_s: float


EventSink = Callable[[Event], None]


def fan_out(sinks: Sequence[EventSink]) -> EventSink:
    """One sink that forwards to several; a failing sink is logged, never raised."""

    def emit(event: Event) -> None:
        for sink in sinks:
            try:
                sink(event)
            except Exception:  # a display bug must not kill a search
                log.exception("event sink %r failed on %s", sink, event.kind)

    return emit


def null_sink(event: Event) -> None:
    """A sink that ignores everything."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
