"""When a pass or a search stops: early stopping and the evaluation / wall-time limits."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class EarlyStopping:
    """Stop after ``patience`` evaluations that did not improve the best by more than
    ``max(min_delta_abs, min_delta_rel * |best|)`` (with both 0: any improvement counts).

    Works with negative scores (raw ImageReward): the margin uses ``|best|``.
    """

    patience: int | None = 27
    min_delta_abs: float = 0.0
    min_delta_rel: float = 0.0
    best: float = -math.inf
    since_best: int = 0

    @classmethod
    def from_config(cls, config: object | None) -> EarlyStopping | None:
        """From the config's EarlyStoppingConfig (None or ``patience: null``: no early stop)."""
        if config is None or getattr(config, "patience", None) is None:
            return None
        return cls(
            patience=config.patience,  # type: ignore[attr-defined]
            min_delta_abs=float(getattr(config, "min_delta_abs", 0.0)),
            min_delta_rel=float(getattr(config, "min_delta_rel", 0.0)),
        )

    def improves(self, score: float) -> bool:
        if math.isinf(self.best):
            return True
        margin = max(self.min_delta_abs, self.min_delta_rel * abs(self.best))
        return score > self.best + margin

    def update(self, score: float) -> bool:
        """Count one evaluation; True when the pass should stop."""
        if self.improves(score):
            self.best = score
            self.since_best = 0
        else:
            self.since_best += 1
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience


@dataclass
class Limits:
    """A budget of evaluations and/or wall time (None: unlimited)."""

    max_evaluations: int | None = None
    max_wall_time_s: float | None = None
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)

    def start(self) -> None:
        self.started = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def out_of_time(self) -> bool:
        return self.max_wall_time_s is not None and self.elapsed() >= self.max_wall_time_s

    def evaluations_left(self, done: int) -> int | None:
        if self.max_evaluations is None:
            return None
        return max(0, self.max_evaluations - done)
