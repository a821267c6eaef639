"""The optimizer seam: `Trial`, `TrialState`, the `Optimizer` protocol and the shared adapter logic.

An optimizer proposes weights (`ask`), hears back a score or a failure (`tell`), and takes fixed
points first (`enqueue`). Several trials may be outstanding at once (one per WebUI instance) and
may be told in any order. Warm starts, later passes and ``--resume`` are all `enqueue` + `ask` +
`tell` of known evaluations (`replay`); there is no other warm-start path.

`AdapterBase` holds what both backends share: trial numbering, the enqueue queue, the rule that
a trial is told exactly once, the best so far, and de-duplication: an adapter never hands out
weights that were already evaluated, are in flight, or failed (keys at the space's resolution).
A backend proposal that repeats a known point is answered from memory (cache hit) and the
backend is asked again; after `MAX_PROPOSALS` repeats the adapter hands out a random unseen point.
`propose` is the same ask with a caller's cap and no random fallback (a portfolio uses it to
give a repeating member's turn to the next member).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import numpy as np

from autombw_cli.blocks import Weights
from autombw_cli.search.evaluation import TrialState
from autombw_cli.search.space import SearchSpace

log = logging.getLogger(__name__)

MAX_PROPOSALS = 25  # backend proposals per ask before falling back to a random unseen point
MAX_RANDOM_TRIES = 1000
MAX_OPEN_REPEATS = 2  # repeats of in-flight points before the random fallback


class TrialOrigin(StrEnum):
    ENQUEUED = "enqueued"  # a fixed point (starting weights, replayed evaluation)
    OPTIMIZER = "optimizer"  # proposed by the backend
    RANDOM = "random"  # a random unseen point (the backend only repeated itself, or must wait)


@dataclass(frozen=True)
class Trial:
    """One candidate handed out by an optimizer. ``number`` is unique per optimizer."""

    number: int
    weights: Weights
    params: dict[str, float]
    origin: TrialOrigin = TrialOrigin.OPTIMIZER


class SpaceExhausted(Exception):
    """Every point of a (small) grid space has been handed out."""


@runtime_checkable
class Optimizer(Protocol):
    name: str
    space: SearchSpace

    def ask(self) -> Trial: ...

    def propose(self, max_proposals: int = ...) -> Trial | None: ...

    def tell(
        self, trial: Trial, score: float | None, state: TrialState = TrialState.COMPLETE
    ) -> None: ...

    def enqueue(self, weights: Weights) -> None: ...

    def best(self) -> tuple[Weights, float] | None: ...

    def seen(self, weights: Weights) -> bool: ...


_IN_FLIGHT = object()
_FAILED = object()


class AdapterBase(ABC):
    """Shared bookkeeping; a backend implements the four ``_backend_*`` hooks."""

    name: str = "optimizer"

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.space = space
        self.seed = seed
        self._rng = np.random.default_rng(seed + 7_919)
        self._queue: deque[Weights] = deque()
        self._pending: dict[int, tuple[Trial, Any]] = {}
        self._told: set[int] = set()
        self._known: dict[bytes, object] = {}  # space.key() -> score | _IN_FLIGHT | _FAILED
        self._next = 0
        self._best: tuple[Weights, float] | None = None
        self.n_complete = 0
        self.n_failed = 0

    # --- the protocol -------------------------------------------------------------------
    def enqueue(self, weights: Weights) -> None:
        """Evaluate these weights before any proposal (FIFO). They must lie in the space
        (use ``space.project`` for user-given starting points)."""
        if not self.space.contains(weights):
            raise ValueError(
                f"enqueued weights are outside the search space: {weights.to_named_string()}"
            )
        self._queue.append(weights)

    def ask(self) -> Trial:
        trial = self.propose()
        if trial is not None:
            return trial
        w = self._random_unseen()
        token = self._backend_ask_fixed(w)
        return self._issue(w, token, TrialOrigin.RANDOM)

    def propose(self, max_proposals: int = MAX_PROPOSALS) -> Trial | None:
        """An enqueued point, else the backend's first unseen proposal within
        ``max_proposals``; None where `ask` would fall back to a random unseen point (the
        backend only repeated known points, or has nothing right now)."""
        while self._queue:
            w = self._queue.popleft()
            if self.space.key(w) in self._known:
                log.debug("skipping enqueued weights already seen: %s", w.to_named_string())
                continue
            token = self._backend_ask_fixed(w)
            return self._issue(w, token, TrialOrigin.ENQUEUED)
        open_repeats = 0
        for _ in range(max_proposals):
            proposal = self._backend_ask()
            if proposal is None:
                break  # the backend cannot propose right now
            params, token = proposal
            w = self.space.to_weights(params)
            known = self._known.get(self.space.key(w))
            if known is None:
                return self._issue(w, token, TrialOrigin.OPTIMIZER)
            score = known if isinstance(known, float) else None
            self._backend_duplicate(token, score)
            if score is None:
                # A repeat of a point in flight (or failed) teaches the backend nothing, so a
                # model that ignores running trials would propose it again: stop early.
                open_repeats += 1
                if open_repeats >= MAX_OPEN_REPEATS:
                    break
        return None

    def tell(
        self, trial: Trial, score: float | None, state: TrialState = TrialState.COMPLETE
    ) -> None:
        if trial.number in self._told:
            raise ValueError(f"trial {trial.number} was already told")
        if trial.number not in self._pending:
            raise ValueError(f"trial {trial.number} was not asked from this optimizer")
        if state is TrialState.RUNNING:
            raise ValueError("tell needs a finished state (COMPLETE or FAILED)")
        if state is TrialState.COMPLETE:
            if score is None or not math.isfinite(score):
                raise ValueError(
                    f"trial {trial.number}: COMPLETE needs a finite score, got {score}"
                )
            score = float(score)
        else:
            score = None
        _, token = self._pending.pop(trial.number)
        self._told.add(trial.number)
        key = self.space.key(trial.weights)
        if score is None:
            self._known[key] = _FAILED
            self.n_failed += 1
        else:
            self._known[key] = score
            self.n_complete += 1
            if self._best is None or score > self._best[1]:
                self._best = (trial.weights, score)
        self._backend_tell(token, score)

    def best(self) -> tuple[Weights, float] | None:
        return self._best

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    def seen(self, weights: Weights) -> bool:
        """True when these weights were evaluated, failed, or are in flight."""
        return self.space.key(weights) in self._known

    def in_flight(self, weights: Weights) -> bool:
        """True while these weights are handed out and not yet told."""
        return self._known.get(self.space.key(weights)) is _IN_FLIGHT

    # --- backend hooks ------------------------------------------------------------------
    @abstractmethod
    def _backend_ask(self) -> tuple[dict[str, float], Any] | None:
        """A proposal (params, token), or None when the backend has nothing right now."""

    @abstractmethod
    def _backend_ask_fixed(self, weights: Weights) -> Any:
        """Register a fixed point with the backend; return its token."""

    @abstractmethod
    def _backend_tell(self, token: Any, score: float | None) -> None:
        """The result of a token (None: failed)."""

    @abstractmethod
    def _backend_duplicate(self, token: Any, score: float | None) -> None:
        """A proposal repeated a known point: ``score`` is its score (None: in flight/failed)."""

    # --- internals ----------------------------------------------------------------------
    def _issue(self, weights: Weights, token: Any, origin: TrialOrigin) -> Trial:
        trial = Trial(self._next, weights, self.space.to_params(weights), origin)
        self._next += 1
        self._pending[trial.number] = (trial, token)
        self._known[self.space.key(weights)] = _IN_FLIGHT
        self._on_issue(token)
        return trial

    def _on_issue(self, token: Any) -> None:  # noqa: B027 (an optional hook)
        """Hook: a token became a trial."""

    def _random_unseen(self) -> Weights:
        if len(self._known) >= self.space.size():
            raise SpaceExhausted(
                f"all {int(self.space.size())} points of the search space were handed out"
            )
        for _ in range(MAX_RANDOM_TRIES):
            w = self.space.sample(self._rng)
            if self.space.key(w) not in self._known:
                return w
        raise SpaceExhausted("could not find an unseen point in the search space")


def replay(optimizer: Optimizer, known: Iterable[tuple[Weights, float]]) -> int:
    """Tell an optimizer known evaluations (warm start, earlier passes, resume).

    Each point is enqueued, asked and told its score. Points outside the optimizer's space
    (another grid, other frozen blocks) and repeats are skipped. Returns how many were told.
    """
    told = 0
    for weights, score in known:
        if not optimizer.space.contains(weights) or not math.isfinite(score):
            continue
        if optimizer.seen(weights):
            continue
        optimizer.enqueue(weights)
        trial = optimizer.ask()
        if optimizer.space.key(trial.weights) != optimizer.space.key(weights):
            raise RuntimeError("replay: the optimizer did not return the enqueued weights first")
        optimizer.tell(trial, score, TrialState.COMPLETE)
        told += 1
    return told
