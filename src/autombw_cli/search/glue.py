"""The run's thin adapter over the search core (optimizers, search space, early stopping).

The campaign calls these few functions instead of the optimizer objects directly, so the seam
between "what a run does" and "how an optimizer works" stays in one short file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autombw_cli.blocks import Weights

log = logging.getLogger(__name__)


def _states() -> Any:
    from autombw_cli.search.optimizers.base import TrialState

    return TrialState


def _state(*names: str) -> Any:
    states = _states()
    for n in names:
        if hasattr(states, n):
            return getattr(states, n)
    raise AttributeError(f"TrialState has none of {names}")


def ask(optimizer: Any) -> tuple[Any, Weights] | tuple[None, None]:
    """The optimizer's next trial and its weights; (None, None) when it has nothing new."""
    from autombw_cli.search.optimizers.base import SpaceExhausted

    try:
        trial = optimizer.ask()
    except SpaceExhausted as exc:
        log.info("the optimizer has nothing new: %s", exc)
        return None, None
    if trial is None:
        return None, None
    return trial, trial.weights


def tell(optimizer: Any, trial: Any, score: float) -> None:
    optimizer.tell(trial, score, _state("COMPLETE"))


def tell_failed(optimizer: Any, trial: Any) -> None:
    optimizer.tell(trial, None, _state("FAILED", "FAIL"))


def enqueue(optimizer: Any, weights: Weights) -> None:
    optimizer.enqueue(weights)


def replay(optimizer: Any, known: Sequence[tuple[Weights, float]]) -> int:
    """Tell an optimizer about evaluations it did not ask for (warm start, resume, later
    passes): ``enqueue`` + ``ask`` + ``tell`` each point. Returns how many were told."""
    from autombw_cli.search.optimizers.base import replay as core_replay

    return core_replay(optimizer, known)


@dataclass
class Stopper:
    """Early stopping of one pass: stop after ``patience`` evaluations that did not improve the
    pass's best by more than ``min_delta_abs`` and ``min_delta_rel * |best|``."""

    patience: int | None
    min_delta_abs: float = 0.0
    min_delta_rel: float = 0.0
    best: float | None = None
    since_best: int = 0

    def update(self, score: float) -> bool:
        if self.best is None:
            self.best = score
            self.since_best = 0
        else:
            margin = max(self.min_delta_abs, self.min_delta_rel * abs(self.best))
            if score > self.best + margin or (margin == 0 and score > self.best):
                self.best = score
                self.since_best = 0
            else:
                self.since_best += 1
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience


def make_stopper(config: Any) -> Stopper | None:
    if config is None or getattr(config, "patience", None) is None:
        return None
    return Stopper(
        patience=config.patience,
        min_delta_abs=getattr(config, "min_delta_abs", 0.0),
        min_delta_rel=getattr(config, "min_delta_rel", 0.0),
    )


def stopper_update(stopper: Stopper, score: float) -> bool:
    return stopper.update(score)


def stopper_should_stop(stopper: Stopper) -> bool:
    return stopper.should_stop
