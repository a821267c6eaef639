"""Driving a `Campaign` with a Python objective function instead of WebUI instances: the loop
behind `autombw_cli.optimize` (and the benchmarks' and tests' `run_passes`).

The campaign (passes, budgets, early stopping, warm starts, de-duplication, numbering) is the
one the live run drives from the scheduler; this module only stands in for the scheduler. It
asks for candidates until ``workers`` are in flight, evaluates one of them (in a seeded random
order, which is how several WebUI instances look to the optimizer) and hands the result back
(``complete``; a failure, ``None``, is ``abandon``-ed: it uses no budget, is not told to the
optimizer as a score, and its number goes to the next candidate). With ``workers=1`` the
campaign runs in lockstep (ask, evaluate, tell), so a seeded search repeats exactly and a
resumed one (``history=``) continues exactly as the uninterrupted one did.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from autombw_cli.blocks import Weights
from autombw_cli.search.campaign import Campaign, PassEnd
from autombw_cli.search.evaluation import Evaluation, TrialState
from autombw_cli.search.events import StopReason
from autombw_cli.search.work import Candidate, Outcome

Objective = Callable[[Weights], float | None]  # None: the evaluation failed


@dataclass(frozen=True)
class SearchResult:
    """What a search found: every evaluation in the order it finished (number order with one
    worker; failed ones included, with ``score`` None), why it stopped and why each pass ended."""

    evaluations: tuple[Evaluation, ...]
    stop_reason: StopReason | None
    pass_ends: tuple[PassEnd, ...]

    @property
    def stop_reasons(self) -> list[str]:
        """Each pass's end as the log says it (``pass 1: pass budget``)."""
        return [str(end) for end in self.pass_ends]

    @property
    def best(self) -> Evaluation | None:
        """The best complete evaluation (the earliest of equal scores)."""
        ok = [e for e in self.evaluations if e.ok]
        return max(ok, key=lambda e: (e.score, -e.number)) if ok else None

    def best_after(self, n: int) -> float | None:
        """Best score among the first ``n`` complete evaluations."""
        scores = [e.score for e in self.evaluations if e.ok][:n]
        return max(scores) if scores else None  # type: ignore[type-var]


class ObjectiveLoop:
    """Evaluates a campaign's candidates with ``objective``. Build the `Campaign` with this
    loop's ``tally`` and ``record``, then call ``run``. ``history`` is a resumed search's
    earlier evaluations (kept at the front of the result)."""

    def __init__(
        self,
        objective: Objective,
        *,
        workers: int = 1,
        seed: int = 0,
        history: Iterable[Evaluation] = (),
        on_evaluation: Callable[[Evaluation], None] | None = None,
    ) -> None:
        self.objective = objective
        self.workers = max(1, workers)
        self.seed = seed
        self.on_evaluation = on_evaluation
        self.evaluations: list[Evaluation] = list(history)
        self._scores: dict[int, float] = {}

    @property
    def lockstep(self) -> int | None:
        """The campaign's ``lockstep`` for this many workers (campaign.py)."""
        return 0 if self.workers == 1 else None

    def tally(self, outcome: Outcome) -> tuple[float, dict[str, float]]:
        return self._scores.pop(outcome.candidate.number), {}

    def record(self, evaluation: Evaluation, _outcome: Outcome) -> None:
        self._keep(evaluation)

    def run(self, campaign: Campaign) -> SearchResult:
        order = random.Random(self.seed)
        in_flight: list[Candidate] = []
        while True:
            while len(in_flight) < self.workers:
                cand = campaign.next_candidate()
                if cand is None:
                    break
                in_flight.append(cand)
            if not in_flight:
                break
            pick = order.randrange(len(in_flight)) if self.workers > 1 else 0
            self._evaluate(campaign, in_flight.pop(pick))
        return SearchResult(
            tuple(self.evaluations),
            campaign.stop_reason,
            tuple(campaign.pass_ends),
        )

    def _evaluate(self, campaign: Campaign, cand: Candidate) -> None:
        worker = f"worker-{cand.number % self.workers}"
        started = time.time()
        score = self.objective(cand.weights)
        finished = time.time()
        if score is None:
            self._keep(
                Evaluation(
                    number=cand.number,
                    weights=cand.weights,
                    score=None,
                    pass_index=cand.pass_index,
                    instance=worker,
                    timings={"total_s": finished - started},
                    timestamp=finished,
                    state=TrialState.FAILED,
                )
            )
            campaign.abandon(cand, "the objective failed")
            return
        self._scores[cand.number] = float(score)
        campaign.complete(
            Outcome(cand, worker, "", (), (), 0.0, 0.0, 0.0, 0.0, started, finished, 1)
        )

    def _keep(self, evaluation: Evaluation) -> None:
        self.evaluations.append(evaluation)
        if self.on_evaluation is not None:
            self.on_evaluation(evaluation)
