"""The campaign: a run's passes, optimizers, budget, journal and best-so-far, as the
scheduler's ``CandidateSource``.

Every method runs in the scheduler's single optimizer thread, one at a time, so nothing here
needs a lock. The campaign hands out candidates pass by pass: a pass ends when its budget is
handed out, its early stopping fires, the total budget or the wall-time limit is reached, or its
optimizer has nothing new; once everything it handed out has come back, the next pass starts,
warm-started with every evaluation so far (``enqueue`` + ``ask`` + ``tell``, STYLE.md §2).
The same weights are never evaluated twice: a repeat is answered from the journal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from autombw_cli.blocks import Weights
from autombw_cli.search import glue as core
from autombw_cli.search.events import (
    EvaluationDone,
    EventSink,
    PassStarted,
    StopReason,
)
from autombw_cli.search.scheduler import Candidate, Outcome

log = logging.getLogger(__name__)

MAX_DUPLICATE_ASKS = 200  # asks in a row that only repeat known weights: the space is spent


@dataclass(frozen=True)
class PassPlan:
    index: int  # 1-based
    optimizer: str
    settings: dict[str, Any]
    max_evaluations: int | None
    early_stopping: Any = None  # the config's EarlyStoppingConfig (None: off)


@dataclass(frozen=True)
class Scored:
    """What the campaign knows about one completed evaluation."""

    number: int
    pass_index: int
    weights: Weights
    score: float


@dataclass
class _PassState:
    plan: PassPlan
    optimizer: Any
    stopper: Any
    budget: int | None
    issued: int = 0
    completed: int = 0
    outstanding: int = 0
    closed: bool = False  # hands out nothing more
    close_reason: StopReason | None = None
    early_stopped: bool = False


@dataclass
class Campaign:
    """See the module docstring. ``make_optimizer(plan)`` builds a pass's optimizer."""

    passes: Sequence[PassPlan]
    total_budget: int | None
    tally: Callable[[Outcome], tuple[float, dict[str, float]]]  # score, per-payload scores
    make_optimizer: Callable[[PassPlan], Any]
    record: Callable[[Outcome, float, dict[str, float]], None]  # journal one evaluation
    emit: EventSink
    max_time_s: float | None = None
    clock: Callable[[], float] = time.monotonic
    history: list[Scored] = field(default_factory=list)
    initial: Sequence[Weights] = ()  # points evaluated first (initial weights)
    warm_start: Sequence[tuple[Weights, float]] = ()  # known scores told to every optimizer
    stop_reason: StopReason | None = None
    _pass_pos: int = 0
    _state: _PassState | None = None
    _seen: dict[tuple[float, ...], float | None] = field(default_factory=dict)
    _next_number: int = 1
    _started: float | None = None
    _best: Scored | None = None

    def __post_init__(self) -> None:
        for s in self.history:
            self._seen[s.weights.key()] = s.score
            if self._best is None or s.score > self._best.score:
                self._best = s
        self._next_number = max((s.number for s in self.history), default=0) + 1

    # --- reading -------------------------------------------------------------------------
    @property
    def done(self) -> int:
        return len(self.history)

    @property
    def best(self) -> Scored | None:
        return self._best

    @property
    def current_pass(self) -> int:
        return 0 if self._state is None else self._state.plan.index

    # --- CandidateSource -----------------------------------------------------------------
    def next_candidate(self) -> Candidate | None:
        if self._started is None:
            self._started = self.clock()
        while True:
            st = self._state
            if st is None or (st.closed and st.outstanding == 0):
                if not self._open_next_pass():
                    return None
                continue
            if st.closed:
                return None  # wait for this pass's evaluations before the next pass
            reason = self._limit_reached(st)
            if reason is not None:
                self._close(st, reason)
                continue
            cand = self._ask(st)
            if cand is None:
                self._close(st, StopReason.EXHAUSTED)
                continue
            return cand

    def complete(self, outcome: Outcome) -> None:
        st = self._state
        cand = outcome.candidate
        score, per_payload = self.tally(outcome)
        self.record(outcome, score, per_payload)
        scored = Scored(cand.number, cand.pass_index, cand.weights, score)
        self.history.append(scored)
        self._seen[cand.weights.key()] = score
        is_best = self._best is None or score > self._best.score
        if is_best:
            self._best = scored
        if st is not None and st.plan.index == cand.pass_index:
            st.outstanding -= 1
            st.completed += 1
            core.tell(st.optimizer, cand.trial, score)
            if st.stopper is not None and core.stopper_update(st.stopper, score):
                st.early_stopped = True
                self._close(st, StopReason.BUDGET, why="early stopping")
        assert self._best is not None
        self.emit(
            EvaluationDone(
                number=cand.number,
                pass_index=cand.pass_index,
                instance=outcome.instance,
                score=score,
                payload_scores=per_payload,
                weights=cand.weights.to_dict(),
                duration_s=outcome.finished_at - outcome.started_at,
                done=self.done,
                budget=self.total_budget,
                best_score=self._best.score,
                best_number=self._best.number,
                is_best=is_best,
            )
        )

    def abandon(self, candidate: Candidate, reason: str) -> None:
        log.warning("evaluation #%d abandoned: %s", candidate.number, reason)
        self._seen.pop(candidate.weights.key(), None)
        st = self._state
        if st is not None and st.plan.index == candidate.pass_index:
            st.outstanding -= 1
            st.issued -= 1  # a failed evaluation does not use the budget
            core.tell_failed(st.optimizer, candidate.trial)
            if st.closed and st.close_reason is StopReason.BUDGET and not st.early_stopped:
                st.closed = False  # the budget it held is free again
                st.close_reason = None

    # --- passes ----------------------------------------------------------------------------
    def _open_next_pass(self) -> bool:
        if self.stop_reason is not None and self.stop_reason is not StopReason.BUDGET:
            return False
        while self._pass_pos < len(self.passes):
            plan = self.passes[self._pass_pos]
            self._pass_pos += 1
            done_here = [s for s in self.history if s.pass_index == plan.index]
            later = [s for s in self.history if s.pass_index > plan.index]
            if later:
                continue  # a resumed run already went past this pass
            budget = self._pass_budget(plan)
            if budget is not None and len(done_here) >= budget:
                continue
            if self._total_left() == 0:
                break
            st = _PassState(
                plan=plan,
                optimizer=self.make_optimizer(plan),
                stopper=core.make_stopper(plan.early_stopping),
                budget=budget,
                issued=len(done_here),
                completed=len(done_here),
            )
            self._warm_start(st, done_here)
            self._state = st
            if st.stopper is not None and core.stopper_should_stop(st.stopper):
                self._close(st, StopReason.BUDGET, why="early stopping (resumed)")
                continue
            self.emit(PassStarted(index=plan.index, optimizer=plan.optimizer, budget=budget))
            log.info("pass %d: %s, budget %s", plan.index, plan.optimizer, budget)
            return True
        if self.stop_reason is None:
            self.stop_reason = StopReason.BUDGET
        return False

    def _pass_budget(self, plan: PassPlan) -> int | None:
        return plan.max_evaluations

    def _warm_start(self, st: _PassState, own: list[Scored]) -> None:
        """Tell the new optimizer everything known: warm-start data, earlier passes, and this
        pass's own evaluations (resume, with early stopping replayed)."""
        known: list[tuple[Weights, float]] = list(self.warm_start)
        known += [(s.weights, s.score) for s in self.history]
        replay = core.replay(st.optimizer, known)
        if replay:
            log.info("pass %d: warm-started with %d evaluations", st.plan.index, replay)
        if st.stopper is not None:
            for s in sorted(own, key=lambda s: s.number):
                core.stopper_update(st.stopper, s.score)
        first_pass = st.plan.index == self.passes[0].index
        if first_pass and not own:
            for w in self.initial:
                if w.key() not in self._seen:
                    core.enqueue(st.optimizer, w)

    def _total_left(self) -> int | None:
        if self.total_budget is None:
            return None
        outstanding = 0 if self._state is None else self._state.outstanding
        return max(0, self.total_budget - self.done - outstanding)

    def _limit_reached(self, st: _PassState) -> StopReason | None:
        started = self._started
        timed_out = started is not None and self.max_time_s is not None
        if timed_out and self.clock() - started >= self.max_time_s:  # type: ignore[operator]
            self.stop_reason = StopReason.TIME
            return StopReason.TIME
        if st.budget is not None and st.issued >= st.budget:
            return StopReason.BUDGET
        left = self._total_left()
        if left is not None and left <= 0:
            self.stop_reason = StopReason.BUDGET
            self._pass_pos = len(self.passes)
            return StopReason.BUDGET
        return None

    def _close(self, st: _PassState, reason: StopReason, *, why: str = "") -> None:
        if not st.closed:
            st.closed = True
            st.close_reason = reason
            log.info("pass %d ends: %s", st.plan.index, why or reason.value)
            if reason is StopReason.TIME:
                self._pass_pos = len(self.passes)

    def _ask(self, st: _PassState) -> Candidate | None:
        for _ in range(MAX_DUPLICATE_ASKS):
            trial, weights = core.ask(st.optimizer)
            if trial is None:
                return None
            key = weights.key()
            if key in self._seen:
                known = self._seen[key]
                if known is None:
                    core.tell_failed(st.optimizer, trial)  # in flight elsewhere right now
                else:
                    core.tell(st.optimizer, trial, known)
                continue
            self._seen[key] = None
            number = self._next_number
            self._next_number += 1
            st.issued += 1
            st.outstanding += 1
            return Candidate(number=number, weights=weights, pass_index=st.plan.index, trial=trial)
        log.warning(
            "pass %d: the optimizer proposed only already-evaluated weights %d times in a row; "
            "ending the pass",
            st.plan.index,
            MAX_DUPLICATE_ASKS,
        )
        return None
