"""Running a list of passes through ONE loop (the reference loop for benchmarks and tests).

Each pass has its own optimizer, budget and early stopping, and starts warm with ALL earlier
evaluations (the warm-start file, earlier passes and, on resume, its own): they are replayed
into the new optimizer with enqueue + ask + tell (`replay`); there is no other warm-start path.
Pass ``i`` gets seed ``seed + i - 1``, so a seeded search repeats exactly.

The live run (``search/campaign.py``) drives the same pieces from the scheduler's workers; this
module runs an objective function in-process, with ``workers`` trials in flight that finish in
a seeded random order, which is how several WebUI instances look to the optimizer.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autombw_cli.blocks import Weights
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.optimizers import (
    SpaceExhausted,
    Trial,
    TrialState,
    create_optimizer,
    replay,
)
from autombw_cli.search.space import SearchSpace
from autombw_cli.search.stopping import EarlyStopping, Limits

log = logging.getLogger(__name__)

Objective = Callable[[Weights], float | None]  # None: the evaluation failed


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
    """Run the passes; ``history`` is a resumed run's journal (its budget counts)."""
    limits = limits or Limits()
    limits.start()
    evaluations = list(history)
    warm = list(warm_start)
    initial = [space.project(w) for w in initial]
    number = max((e.number for e in evaluations), default=0) + 1
    order = random.Random(seed)
    reasons: list[str] = []
    for index, spec in enumerate(passes, start=1):
        if any(e.pass_index > index for e in evaluations):
            continue  # a resumed run already went past this pass
        own = [e for e in evaluations if e.pass_index == index]
        opt = create_optimizer(spec.optimizer, dict(spec.settings), space, seed + index - 1)
        replay(opt, [*warm, *((e.weights, e.score) for e in evaluations if e.ok)])  # type: ignore[misc]
        for e in evaluations:  # failed ones are not replayed, but not proposed again either
            if not e.ok and not opt.seen(e.weights) and space.contains(e.weights):  # type: ignore[attr-defined]
                opt.enqueue(e.weights)
                opt.tell(opt.ask(), None, TrialState.FAILED)
        if index == 1 and not evaluations:
            for w in initial:
                opt.enqueue(w)
        stopper = _stopper(spec.early_stopping)
        for e in sorted(own, key=lambda e: e.number):
            if e.ok and stopper is not None:
                stopper.update(e.score)  # type: ignore[arg-type]
        issued = len(own)
        in_flight: list[Trial] = []
        reason = ""
        while True:
            while not reason and len(in_flight) < max(1, workers):
                reason = _limit(limits, spec, issued, evaluations, in_flight, stopper)
                if reason:
                    break
                try:
                    in_flight.append(opt.ask())
                except SpaceExhausted:
                    reason = "search space exhausted"
                    break
                issued += 1
            if not in_flight:
                break
            trial = in_flight.pop(order.randrange(len(in_flight)) if workers > 1 else 0)
            started = time.monotonic()
            score = objective(trial.weights)
            state = TrialState.COMPLETE if score is not None else TrialState.FAILED
            opt.tell(trial, score, state)
            ev = Evaluation(
                number=number,
                weights=trial.weights,
                score=score,
                pass_index=index,
                worker=f"worker-{number % max(1, workers)}",
                timings={"total_s": time.monotonic() - started},
                state=state,
            )
            number += 1
            evaluations.append(ev)
            if on_evaluation is not None:
                on_evaluation(ev)
            if state is TrialState.FAILED:
                issued -= 1  # a failure does not use the budget
            elif stopper is not None and stopper.update(score) and not reason:  # type: ignore[arg-type]
                reason = f"no improvement in {stopper.patience} evaluations"
        reasons.append(f"pass {index}: {reason or 'done'}")
        log.info("pass %d (%s) ends: %s", index, spec.optimizer, reason or "done")
        if limits.out_of_time() or _total_spent(limits, evaluations):
            break
    return SearchResult(evaluations, reasons)


def _stopper(template: EarlyStopping | None) -> EarlyStopping | None:
    if template is None or template.patience is None:
        return None
    return EarlyStopping(template.patience, template.min_delta_abs, template.min_delta_rel)


def _total_spent(limits: Limits, evaluations: list[Evaluation], in_flight: int = 0) -> bool:
    left = limits.evaluations_left(sum(e.ok for e in evaluations) + in_flight)
    return left is not None and left <= 0


def _limit(
    limits: Limits,
    spec: PassSpec,
    issued: int,
    evaluations: list[Evaluation],
    in_flight: list[Trial],
    stopper: EarlyStopping | None,
) -> str:
    if limits.out_of_time():
        return "wall-time limit"
    if _total_spent(limits, evaluations, len(in_flight)):
        return "evaluation budget"
    if spec.max_evaluations is not None and issued >= spec.max_evaluations:
        return "pass budget"
    if stopper is not None and stopper.should_stop:
        return f"no improvement in {stopper.patience} evaluations"
    return ""
