"""Running a list of passes in-process: the synchronous driver of the benchmarks and tests
(nothing in the product uses it; the live run drives `Campaign` from the scheduler).

The pass logic (budgets, early stopping, warm starts by replay, numbering, resume) lives once,
in `Campaign` (``search/campaign.py``), which the live run drives from the scheduler's workers.
`run_passes` drives the same campaign with an objective function: it asks for candidates until
``workers`` are in flight, evaluates one of them (in a seeded random order, which is how several
WebUI instances look to the optimizer), and hands the result back (``complete``; a failure,
``None``, is ``abandon``-ed: it uses no budget and its number goes to the next candidate).
With ``workers=1`` the campaign runs in lockstep (ask, evaluate, tell), so a resumed search
(``history=`` the first k evaluations) continues exactly as the uninterrupted one did.
Pass ``i`` gets seed ``seed + i - 1``, so a seeded search repeats exactly.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autombw_cli.blocks import Weights
from autombw_cli.search.campaign import Campaign, PassPlan
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.optimizers import TrialState, create_optimizer
from autombw_cli.search.scheduler import Candidate, Outcome
from autombw_cli.search.space import SearchSpace
from autombw_cli.search.stopping import EarlyStopping

log = logging.getLogger(__name__)

Objective = Callable[[Weights], float | None]  # None: the evaluation failed


@dataclass(frozen=True)
class Limits:
    """A budget of evaluations and/or wall time over all passes (None: unlimited)."""

    max_evaluations: int | None = None
    max_wall_time_s: float | None = None
    clock: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class PassSpec:
    optimizer: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    max_evaluations: int | None = None
    early_stopping: EarlyStopping | None = None  # a template; each run copies it


@dataclass
class SearchResult:
    evaluations: list[Evaluation]
    stop_reasons: list[str]

    @property
    def best(self) -> Evaluation | None:
        ok = [e for e in self.evaluations if e.ok]
        return max(ok, key=lambda e: (e.score, -e.number)) if ok else None

    def best_after(self, n: int) -> float | None:
        """Best score among the first ``n`` complete evaluations."""
        scores = [e.score for e in self.evaluations if e.ok][:n]
        return max(scores) if scores else None  # type: ignore[type-var]


def run_passes(
    space: SearchSpace,
    passes: Sequence[PassSpec],
    objective: Objective,
    *,
    seed: int = 0,
    limits: Limits | None = None,
    history: Iterable[Evaluation] = (),
    warm_start: Iterable[tuple[Weights, float]] = (),
    initial: Iterable[Weights] = (),
    workers: int = 1,
    on_evaluation: Callable[[Evaluation], None] | None = None,
) -> SearchResult:
    """Run the passes; ``history`` is a resumed run's journal (its budget counts; failed
    evaluations in it are kept in the result but not told to the optimizers)."""
    limits = limits or Limits()
    past = list(history)
    evaluations: list[Evaluation] = list(past)
    scores: dict[int, float] = {}

    def keep(ev: Evaluation) -> None:
        evaluations.append(ev)
        if on_evaluation is not None:
            on_evaluation(ev)

    def record(evaluation: Evaluation, _outcome: Outcome) -> None:
        keep(evaluation)

    campaign = Campaign(
        passes=[
            PassPlan(i, p.optimizer, dict(p.settings), p.max_evaluations, p.early_stopping)
            for i, p in enumerate(passes, start=1)
        ],
        total_budget=limits.max_evaluations,
        tally=lambda o: (scores.pop(o.candidate.number), {}),
        make_optimizer=lambda plan: create_optimizer(
            plan.optimizer, plan.settings, space, seed + plan.index - 1
        ),
        record=record,
        emit=lambda _event: None,
        max_time_s=limits.max_wall_time_s,
        clock=limits.clock,
        history=[e for e in past if e.ok],
        initial=[space.project(w) for w in initial],
        warm_start=list(warm_start),
        lockstep=0 if workers <= 1 else None,
    )
    order = random.Random(seed)
    in_flight: list[Candidate] = []
    while True:
        while len(in_flight) < max(1, workers):
            cand = campaign.next_candidate()
            if cand is None:
                break
            in_flight.append(cand)
        if not in_flight:
            break
        cand = in_flight.pop(order.randrange(len(in_flight)) if workers > 1 else 0)
        worker = f"worker-{cand.number % max(1, workers)}"
        started = time.time()
        score = objective(cand.weights)
        finished = time.time()
        if score is None:
            timings = {"total_s": finished - started}
            keep(
                Evaluation(
                    number=cand.number,
                    weights=cand.weights,
                    score=None,
                    pass_index=cand.pass_index,
                    instance=worker,
                    timings=timings,
                    timestamp=finished,
                    state=TrialState.FAILED,
                )
            )
            campaign.abandon(cand, "the objective failed")
            continue
        scores[cand.number] = score
        campaign.complete(
            Outcome(cand, worker, "", (), (), 0.0, 0.0, 0.0, 0.0, started, finished, 1)
        )
    reasons = [str(end) for end in campaign.pass_ends]
    return SearchResult(evaluations, reasons)
