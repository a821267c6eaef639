"""Running a list of passes on a given space in-process: the tests' and benchmarks' handle
on the search core below the config (explicit `SearchSpace`, `PassSpec`s, warm-start data,
limits). Users drive it through `autombw_cli.optimize`, which takes a ``search:`` mapping.

Both are thin layers over `ObjectiveLoop` (``search/objective_loop.py``) driving the same
`Campaign` the live run drives from the scheduler: budgets, early stopping, warm starts by
replay, numbering and resume live there once. Pass ``i`` gets seed ``seed + i - 1``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autombw_cli.blocks import Weights
from autombw_cli.search.campaign import Campaign, PassPlan, optimizer_factory
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.objective_loop import Objective, ObjectiveLoop, SearchResult
from autombw_cli.search.space import SearchSpace
from autombw_cli.search.stopping import EarlyStopping

__all__ = ["Limits", "Objective", "PassSpec", "SearchResult", "run_passes"]


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
    loop = ObjectiveLoop(
        objective, workers=workers, seed=seed, history=past, on_evaluation=on_evaluation
    )
    campaign = Campaign(
        passes=[
            PassPlan(i, p.optimizer, dict(p.settings), p.max_evaluations, p.early_stopping)
            for i, p in enumerate(passes, start=1)
        ],
        total_budget=limits.max_evaluations,
        tally=loop.tally,
        make_optimizer=optimizer_factory(space, seed),
        record=loop.record,
        emit=lambda _event: None,
        max_time_s=limits.max_wall_time_s,
        clock=limits.clock,
        history=[e for e in past if e.ok],
        initial=[space.project(w) for w in initial],
        warm_start=list(warm_start),
        lockstep=loop.lockstep,
    )
    return loop.run(campaign)
