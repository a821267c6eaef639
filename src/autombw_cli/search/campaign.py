"""The campaign: a run's passes, optimizers, budget, numbering and best-so-far, as the
scheduler's ``CandidateSource`` (and, through ``testing/passes.py``, the benchmarks' loop).

Every method runs in one thread, one at a time, so nothing here needs a lock. The campaign hands
out candidates pass by pass: a pass ends when its budget is handed out, its early stopping fires,
the total budget or the wall-time limit is reached, or its optimizer has nothing new; once
everything it handed out has come back, the next pass starts, warm-started with every evaluation
so far (``enqueue`` + ``ask`` + ``tell``, STYLE.md §2). The same weights are never evaluated
twice.

Numbers: evaluations are numbered 1..N with no gaps. A candidate takes the smallest number not
recorded and not in flight, so the number of an abandoned candidate (out of retries) or of one
lost in flight at a kill (``--resume``) goes to the next candidate.

Lockstep (``lockstep=L``, one instance): the optimizer is told results in number order, and
candidate ``n`` is asked once evaluations ``1..n-L-1`` are told and ``n-L..n-1`` are pending
(``next_candidate`` answers None, "wait", until they are complete). Early stopping counts in the
same order. So candidate ``n`` is a pure function of (seed, pass, the evaluations before it),
whatever the timing; ``L=1`` lets the scheduler ask for the next candidate while the current
one renders. A resumed lockstep run re-drives its current pass: it asks the new optimizer again,
in the same order, checks each proposal against the journal and tells the journaled score, which
leaves the optimizer exactly as the uninterrupted run had it (any backend: TPE, CMA-ES's
generations, GFO's populations). If a proposal differs from the journal (several instances,
failures, another version), the optimizer is rebuilt by replaying the journal instead: nothing
is lost or repeated, but later candidates may differ from an uninterrupted run's. Without
lockstep (several instances) results are told as they arrive.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from autombw_cli.blocks import Weights
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.events import (
    EvaluationDone,
    EventSink,
    Notice,
    PassStarted,
    RunWarning,
    StopReason,
)
from autombw_cli.search.optimizers import create_optimizer
from autombw_cli.search.optimizers.base import (
    Optimizer,
    SpaceExhausted,
    Trial,
    TrialState,
    replay,
)
from autombw_cli.search.pruning import PruningRule, judge
from autombw_cli.search.stopping import EarlyStopping, StoppingRule
from autombw_cli.search.work import Candidate, Outcome

if TYPE_CHECKING:
    from autombw_cli.search.space import SearchSpace

log = logging.getLogger(__name__)

MAX_DUPLICATE_ASKS = 200  # asks in a row that only repeat known weights: the space is spent


class PassEndReason(StrEnum):
    """Why a pass handed out nothing more (its value is what the log says)."""

    PASS_BUDGET = "pass budget"
    TOTAL_BUDGET = "evaluation budget"
    WALL_TIME = "wall-time limit"
    EXHAUSTED = "search space exhausted"
    EARLY_STOP = "no improvement"  # said with the patience: "no improvement in N evaluations"


@dataclass(frozen=True)
class PassPlan:
    index: int  # 1-based
    optimizer: str
    settings: dict[str, Any]
    max_evaluations: int | None
    early_stopping: StoppingRule | None = None  # None: off


def optimizer_factory(space: SearchSpace, seed: int) -> Callable[[PassPlan], Optimizer]:
    """The campaign's ``make_optimizer``: pass ``i`` gets seed ``seed + i - 1``, so a seeded
    search repeats exactly (the live run, `optimize` and the benchmarks all use this)."""

    def make(plan: PassPlan) -> Optimizer:
        return create_optimizer(plan.optimizer, plan.settings, space, seed + plan.index - 1)

    return make


@dataclass(frozen=True)
class PassEnd:
    """Why a pass handed out nothing more; ``patience`` is set for an early stop."""

    index: int
    optimizer: str
    reason: PassEndReason
    patience: int | None = None

    @property
    def why(self) -> str:
        if self.reason is PassEndReason.EARLY_STOP:
            return f"{self.reason.value} in {self.patience} evaluations"
        return self.reason.value

    def __str__(self) -> str:
        return f"pass {self.index}: {self.why}"


@dataclass
class _PassState:
    plan: PassPlan
    optimizer: Optimizer
    stopper: EarlyStopping | None
    budget: int | None
    issued: int = 0
    completed: int = 0
    in_flight: set[int] = field(default_factory=set)  # numbers handed out, not back yet
    untold: dict[int, tuple[Trial, float]] = field(default_factory=dict)  # lockstep: number -> …
    closed: bool = False  # hands out nothing more
    close_reason: PassEndReason | None = None

    @property
    def outstanding(self) -> int:
        return len(self.in_flight)


class _Diverged(Exception):
    """A re-driven proposal differs from the journal."""


class Campaign:
    """See the module docstring. The constructor takes the inputs, which do not change; the
    rest is the campaign's own state. ``make_optimizer(plan)`` builds a pass's optimizer,
    ``tally`` turns an outcome into (score, per-payload scores), ``record`` journals one
    finished evaluation (the outcome comes along for its images), ``history`` is what a resumed
    run already evaluated (complete evaluations, each number once)."""

    def __init__(
        self,
        *,
        passes: Sequence[PassPlan],
        total_budget: int | None,
        tally: Callable[[Outcome], tuple[float, dict[str, float]]],
        make_optimizer: Callable[[PassPlan], Optimizer],
        record: Callable[[Evaluation, Outcome], None],
        emit: EventSink,
        max_time_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        history: Sequence[Evaluation] = (),
        initial: Sequence[Weights] = (),
        warm_start: Sequence[tuple[Weights, float]] = (),
        lockstep: int | None = None,
        pruning: PruningRule | None = None,
    ) -> None:
        if lockstep is not None and lockstep < 0:
            raise ValueError("lockstep must be >= 0")
        # inputs
        self.passes = tuple(passes)
        self.total_budget = total_budget
        self.tally = tally
        self.make_optimizer = make_optimizer
        self.record = record
        self.emit = emit
        self.max_time_s = max_time_s
        self.clock = clock
        self.initial = tuple(initial)  # points evaluated first (initial weights)
        self.warm_start = tuple(warm_start)  # known scores told to every optimizer
        self.lockstep = lockstep  # L: see the module docstring (None: tell as results arrive)
        self.pruning = pruning  # None: every candidate renders all its images
        # what happened
        self.history: list[Evaluation] = list(history)
        self.stop_reason: StopReason | None = None
        self.pass_ends: list[PassEnd] = []
        self.exact_resume: bool | None = None  # after a lockstep resume: was it exact?
        # where it is
        self._pass_pos = 0
        self._state: _PassState | None = None
        self._seen: set[bytes] = set()  # Weights.key() of recorded or in flight
        self._started: float | None = None
        self._best: Evaluation | None = None
        for s in self.history:
            self._seen.add(s.weights.key())
            if s.ok and (self._best is None or s.score > self._best.score):
                self._best = s
        used = {s.number for s in self.history}
        self._next_number = max(used, default=0) + 1
        # heap of unused numbers below _next_number
        self._free = [n for n in range(1, self._next_number) if n not in used]
        heapq.heapify(self._free)

    # --- reading -------------------------------------------------------------------------
    @property
    def done(self) -> int:
        return len(self.history)

    @property
    def best(self) -> Evaluation | None:
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
            if self.lockstep is not None:
                limit = self._peek_number() - self.lockstep
                if any(n < limit for n in st.in_flight):
                    return None  # lockstep: wait until the evaluations before are back
                self._flush(st, limit)
                if st.closed:
                    continue  # early stopping fired
            cand = self._ask(st)
            if cand is None:
                self._close(st, PassEndReason.EXHAUSTED)
                continue
            return cand

    def judge_partial(self, outcome: Outcome) -> float | None:
        """Pruning's one look at a candidate's first images (``outcome`` holds them, scored):
        the estimate of its full score to tell the optimizer when it is pruned, else None.

        The estimate is the best score moved by how much worse the same images tallied:
        ``best.score + tally(its images) - tally(the best's scores for those images)``."""
        best = self._best
        if self.pruning is None or best is None or not outcome.images:
            return None
        n = len(best.raw_scores)
        k = len(outcome.raw_scores)
        if k >= n or n == 0:
            return None
        signs = [-1.0 if ri.spec.reverse_scoring else 1.0 for ri in outcome.images]
        signs += [1.0] * (n - k)  # the rest of the images are not known yet
        verdict = judge(self.pruning, outcome.raw_scores, signs, best, self.history)
        if verdict is None or not verdict.prune:
            return None
        own, _ = self.tally(outcome)
        theirs, _ = self.tally(replace(outcome, raw_scores=tuple(best.raw_scores[:k])))
        estimate = best.score + own - theirs
        log.info(
            "evaluation #%d pruned after %d image(s): %s; told %.6g",
            outcome.candidate.number,
            k,
            verdict.describe(),
            estimate,
        )
        return estimate

    def complete(self, outcome: Outcome) -> None:
        st = self._state
        cand = outcome.candidate
        score, per_payload = self.tally(outcome)
        evaluation = outcome.evaluation(score, per_payload)
        if outcome.pruned_score is not None:  # told the estimate; never a best
            score = outcome.pruned_score
            evaluation = replace(evaluation, score=score, state=TrialState.PRUNED)
        self.record(evaluation, outcome)
        if self.warm_start and not self.history:
            self._check_warm_start_scale(score)
        self.history.append(evaluation)
        self._seen.add(cand.weights.key())
        is_best = evaluation.ok and (self._best is None or score > self._best.score)
        if is_best:
            self._best = evaluation
        if st is not None and st.plan.index == cand.pass_index and cand.number in st.in_flight:
            st.in_flight.discard(cand.number)
            st.completed += 1
            if self.lockstep is None:
                self._tell(st, cand.trial, score)
            else:
                st.untold[cand.number] = (cand.trial, score)
        assert self._best is not None
        self.emit(
            EvaluationDone(
                evaluation=evaluation,
                done=self.done,
                budget=self.total_budget,
                best_score=self._best.score,
                best_number=self._best.number,
                is_best=is_best,
            )
        )

    def abandon(self, candidate: Candidate, reason: str) -> None:
        log.warning(
            "evaluation #%d abandoned: %s (its number goes to the next candidate)",
            candidate.number,
            reason,
        )
        self._seen.discard(candidate.weights.key())
        heapq.heappush(self._free, candidate.number)
        st = self._state
        if st is not None and st.plan.index == candidate.pass_index:
            st.in_flight.discard(candidate.number)
            st.issued -= 1  # a failed evaluation does not use the budget
            st.optimizer.tell(candidate.trial, None, TrialState.FAILED)
            if st.closed and st.close_reason in (
                PassEndReason.PASS_BUDGET,
                PassEndReason.TOTAL_BUDGET,
            ):
                st.closed = False  # the budget it held is free again
                st.close_reason = None
                if self.pass_ends and self.pass_ends[-1].index == st.plan.index:
                    self.pass_ends.pop()
                if self.stop_reason is StopReason.BUDGET:
                    self.stop_reason = None

    # --- numbers -------------------------------------------------------------------------
    def _peek_number(self) -> int:
        return self._free[0] if self._free else self._next_number

    def _take_number(self) -> int:
        if self._free:
            return heapq.heappop(self._free)
        self._next_number += 1
        return self._next_number - 1

    # --- passes ----------------------------------------------------------------------------
    def _open_next_pass(self) -> bool:
        if self.stop_reason is not None and self.stop_reason is not StopReason.BUDGET:
            return False
        while self._pass_pos < len(self.passes):
            plan = self.passes[self._pass_pos]
            self._pass_pos += 1
            own = sorted(
                (s for s in self.history if s.pass_index == plan.index), key=lambda s: s.number
            )
            if any(s.pass_index > plan.index for s in self.history):
                continue  # a resumed run already went past this pass
            budget = plan.max_evaluations
            if budget is not None and len(own) >= budget:
                continue
            if self._total_left() == 0:
                break
            st = self._new_pass(plan, budget)
            if own and self.lockstep is not None:
                st = self._resume_exactly(st, own)
            elif own:
                self._replay_everything(st, own)
            else:
                self._warm_start(st)
            self._state = st
            if st.stopper is not None and st.stopper.should_stop and not st.closed:
                self._close(st, PassEndReason.EARLY_STOP)
            if st.closed:
                continue
            self.emit(PassStarted(index=plan.index, optimizer=plan.optimizer, budget=budget))
            log.info("pass %d: %s, budget %s", plan.index, plan.optimizer, budget)
            return True
        if self.stop_reason is None:
            self.stop_reason = self._final_reason()
        return False

    def _final_reason(self) -> StopReason:
        """Why the run ends once no pass is left: the last pass's reason, told truthfully."""
        last = self.pass_ends[-1].reason if self.pass_ends else PassEndReason.PASS_BUDGET
        if last is PassEndReason.EARLY_STOP:
            return StopReason.EARLY_STOPPED
        if last is PassEndReason.EXHAUSTED:
            return StopReason.EXHAUSTED
        return StopReason.BUDGET

    def _new_pass(self, plan: PassPlan, budget: int | None) -> _PassState:
        return _PassState(
            plan=plan,
            optimizer=self.make_optimizer(plan),
            stopper=EarlyStopping.from_rule(plan.early_stopping),
            budget=budget,
        )

    def _warm_start(self, st: _PassState) -> None:
        """What every pass does when it opens: tell its optimizer the warm-start data and every
        evaluation of earlier passes (in number order), then enqueue the initial points not yet
        evaluated (first pass only)."""
        known: list[tuple[Weights, float]] = list(self.warm_start)
        earlier = sorted(
            (s for s in self.history if s.pass_index != st.plan.index), key=lambda s: s.number
        )
        known += [(s.weights, s.score) for s in earlier]
        replayed = replay(st.optimizer, known)
        if replayed:
            log.info("pass %d: warm-started with %d evaluations", st.plan.index, replayed)
        if self.warm_start and st.plan.index == self.passes[0].index and not self.history:
            self.emit(Notice(message=self._warm_start_told(st)))
        if st.plan.index == self.passes[0].index:
            for w in self.initial:
                if w.key() not in self._seen:
                    st.optimizer.enqueue(w)

    def _warm_start_told(self, st: _PassState) -> str:
        """What the first pass learnt from the --warm-start file, and what it skipped."""
        space = st.optimizer.space
        inside = [w for w, _ in self.warm_start if space.contains(w)]
        outside = len(self.warm_start) - len(inside)
        repeats = len(inside) - len({space.key(w) for w in inside})
        scores = [score for _, score in self.warm_start]
        told = len(inside) - repeats
        text = (
            f"warm start: the optimizer learnt {told} of {len(self.warm_start)} evaluations "
            f"(scores {min(scores):.4g}..{max(scores):.4g})"
        )
        skipped = []
        if repeats:
            skipped.append(f"{repeats} repeating weights already given (at this grid's step)")
        if outside:
            skipped.append(
                f"{outside} outside this search space (other frozen blocks, clamps or grid)"
            )
        return text + (f"; skipped: {'; '.join(skipped)}" if skipped else "")

    def _check_warm_start_scale(self, score: float) -> None:
        """The first score of this run far outside the warm-start's range means another scorer
        or tally (auto-MBW-rt's sigmoid ImageReward ~0.6, raw ImageReward ~-2..2): the optimizer
        would take old and new scores as one scale."""
        scores = [s for _, s in self.warm_start]
        lo, hi = min(scores), max(scores)
        span = max(hi - lo, 1e-9)
        if lo - 2 * span <= score <= hi + 2 * span:
            return
        self.emit(
            RunWarning(
                message=f"the first score of this run ({score:.4g}) is far from the warm-start "
                f"file's scores ({lo:.4g}..{hi:.4g}): were they made with another scorer, "
                "tally or sigmoid setting? The optimizer takes both as one scale; if they differ, "
                "start without --warm-start"
            )
        )

    def _replay_everything(self, st: _PassState, own: list[Evaluation]) -> None:
        """Resume without lockstep: tell the new optimizer everything known, including this
        pass's own evaluations, and replay its early stopping."""
        self._warm_start(st)
        replayed = replay(st.optimizer, [(s.weights, s.score) for s in own])
        log.info("pass %d: resumed, %d own evaluations replayed", st.plan.index, replayed)
        if st.stopper is not None:
            for s in own:
                st.stopper.update(s.score)
        st.issued = st.completed = len(own)

    def _resume_exactly(self, st: _PassState, own: list[Evaluation]) -> _PassState:
        """Lockstep resume: re-drive this pass's own evaluations (module docstring); fall back
        to ``_replay_everything`` with a fresh optimizer if a proposal differs."""
        own_keys = {s.weights.key() for s in own}
        self._seen -= own_keys
        try:
            self._warm_start(st)  # own keys are out of _seen, as when it opened
            for s in own:
                self._redrive_one(st, s)
        except _Diverged as exc:
            self._seen |= own_keys
            log.warning(
                "pass %d: resuming by replaying the journal (%s); the evaluations so far are all "
                "kept, later candidates may differ from an uninterrupted run's",
                st.plan.index,
                exc,
            )
            self.exact_resume = False
            st = self._new_pass(st.plan, st.budget)
            self._replay_everything(st, own)
            return st
        log.info("pass %d: re-drove its %d evaluations exactly", st.plan.index, len(own))
        self.exact_resume = True
        return st

    def _redrive_one(self, st: _PassState, s: Evaluation) -> None:
        assert self.lockstep is not None
        self._flush(st, s.number - self.lockstep)
        if st.closed:
            raise _Diverged(f"early stopping ended the pass before #{s.number}")
        if st.budget is not None and st.issued >= st.budget:
            raise _Diverged(f"the pass budget was spent before #{s.number}")
        trial, weights = self._propose(st)
        if trial is None or weights is None or weights.key() != s.weights.key():
            raise _Diverged(f"#{s.number} was not proposed again")
        self._seen.add(s.weights.key())
        st.issued += 1
        st.completed += 1
        st.untold[s.number] = (trial, s.score)

    def _total_left(self) -> int | None:
        if self.total_budget is None:
            return None
        outstanding = 0 if self._state is None else self._state.outstanding
        return max(0, self.total_budget - self.done - outstanding)

    def _limit_reached(self, st: _PassState) -> PassEndReason | None:
        started = self._started
        timed_out = started is not None and self.max_time_s is not None
        if timed_out and self.clock() - started >= self.max_time_s:  # type: ignore[operator]
            self.stop_reason = StopReason.TIME
            return PassEndReason.WALL_TIME
        left = self._total_left()
        if left is not None and left <= 0:
            self.stop_reason = StopReason.BUDGET
            self._pass_pos = len(self.passes)
            return PassEndReason.TOTAL_BUDGET
        if st.budget is not None and st.issued >= st.budget:
            return PassEndReason.PASS_BUDGET
        return None

    def _close(self, st: _PassState, reason: PassEndReason) -> None:
        if not st.closed:
            st.closed = True
            st.close_reason = reason
            patience = st.stopper.patience if st.stopper is not None else None
            end = PassEnd(st.plan.index, st.plan.optimizer, reason, patience)
            self.pass_ends.append(end)
            log.info("pass %d ends: %s", st.plan.index, end.why)
            if reason is PassEndReason.WALL_TIME:
                self._pass_pos = len(self.passes)

    # --- the optimizer -------------------------------------------------------------------
    def _tell(self, st: _PassState, trial: Trial, score: float) -> None:
        """Tell a result and count it for early stopping (which may close the pass)."""
        st.optimizer.tell(trial, score, TrialState.COMPLETE)
        if st.stopper is not None and st.stopper.update(score) and not st.closed:
            self._close(st, PassEndReason.EARLY_STOP)

    def _flush(self, st: _PassState, limit: int) -> None:
        """Lockstep: tell the results numbered below ``limit``, in number order."""
        for n in sorted(k for k in st.untold if k < limit):
            trial, score = st.untold.pop(n)
            self._tell(st, trial, score)

    def _propose(self, st: _PassState) -> tuple[Trial, Weights] | tuple[None, None]:
        """The optimizer's next proposal that is not recorded or in flight."""
        for _ in range(MAX_DUPLICATE_ASKS):
            try:
                trial = st.optimizer.ask()
            except SpaceExhausted as exc:
                log.info("the optimizer has nothing new: %s", exc)
                return None, None
            if trial.weights.key() not in self._seen:
                return trial, trial.weights
            st.optimizer.tell(trial, None, TrialState.FAILED)  # known here, not to it
        log.warning(
            "pass %d: the optimizer proposed only already-evaluated weights %d times in a row; "
            "ending the pass",
            st.plan.index,
            MAX_DUPLICATE_ASKS,
        )
        return None, None

    def _ask(self, st: _PassState) -> Candidate | None:
        trial, weights = self._propose(st)
        if trial is None or weights is None:
            return None
        self._seen.add(weights.key())
        number = self._take_number()
        st.issued += 1
        st.in_flight.add(number)
        return Candidate(number=number, weights=weights, pass_index=st.plan.index, trial=trial)
