"""The run's thin adapter over the search core (optimizers, search space, early stopping).

The campaign calls these few functions instead of the optimizer objects directly, so the seam
between "what a run does" and "how an optimizer works" stays in one short file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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


def make_stopper(config: Any) -> Any:
    """A pass's early stopping (``search/stopping.py``), None when it is off."""
    from autombw_cli.search.stopping import EarlyStopping

    return EarlyStopping.from_config(config)


def stopper_update(stopper: Any, score: float) -> bool:
    return bool(stopper.update(score))


def stopper_should_stop(stopper: Any) -> bool:
    return bool(stopper.should_stop)
