"""When a pass stops early: the rule (`StoppingRule`, what the config gives) and its counter
(`EarlyStopping`, one per pass)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class StoppingRule(Protocol):
    """Early-stopping settings (the config's ``EarlyStoppingConfig`` is one)."""

    @property
    def patience(self) -> int | None: ...

    @property
    def min_delta_abs(self) -> float: ...

    @property
    def min_delta_rel(self) -> float: ...


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
    def from_rule(cls, rule: StoppingRule | None) -> EarlyStopping | None:
        """A fresh counter for ``rule`` (None or ``patience: null``: no early stop)."""
        if rule is None or rule.patience is None:
            return None
        return cls(
            patience=rule.patience,
            min_delta_abs=float(rule.min_delta_abs),
            min_delta_rel=float(rule.min_delta_rel),
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
