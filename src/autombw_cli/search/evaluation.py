"""`Evaluation`: one finished (or failed) evaluation of one set of weights, as journaled."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from autombw_cli.blocks import Weights
from autombw_cli.search.optimizers.base import TrialState


@dataclass(frozen=True)
class Evaluation:
    """One row of ``history.csv`` (plus its raw per-image scores).

    ``score`` is the tallied score (None when the evaluation failed), ``payload_scores`` the
    per-payload tallies, ``raw_scores`` the scorer's raw value per image in render order,
    ``timings`` named durations in seconds (``merge_s``, ``generate_s``, ``score_s``,
    ``total_s``...), ``timestamp`` the Unix time it finished (was scored), ``member_scores`` an
    ensemble's raw scores per member label, one per image (what ``--resume`` rebuilds the
    z-score statistics from).
    """

    number: int
    weights: Weights
    score: float | None
    pass_index: int = 1
    payload_scores: Mapping[str, float] = field(default_factory=dict)
    raw_scores: Sequence[float] = ()
    worker: str = ""
    merge_id: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)
    state: TrialState = TrialState.COMPLETE
    member_scores: Mapping[str, Sequence[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", TrialState(self.state))
        object.__setattr__(self, "payload_scores", dict(self.payload_scores))
        object.__setattr__(self, "raw_scores", tuple(float(v) for v in self.raw_scores))
        object.__setattr__(self, "timings", dict(self.timings))
        members = {str(k): tuple(float(v) for v in vs) for k, vs in self.member_scores.items()}
        object.__setattr__(self, "member_scores", members)
        if self.state is TrialState.COMPLETE:
            if self.score is None or not math.isfinite(self.score):
                raise ValueError(f"evaluation {self.number}: a complete evaluation needs a score")
        elif self.state is TrialState.RUNNING:
            raise ValueError(f"evaluation {self.number}: the journal keeps finished evaluations")

    @property
    def ok(self) -> bool:
        return self.state is TrialState.COMPLETE
