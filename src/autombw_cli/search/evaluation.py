"""`Evaluation`: the one value for a finished evaluation of one set of weights.

The journal writes and reads it (one row of ``history.csv`` and its ``raw_scores.jsonl``
record), the campaign keeps its history in it, the run's `RecordBook` and the report's summary
rank it, the ``EvaluationDone`` event carries it, and ``autombw recover`` reads it back from
history CSVs, console logs and recipes (with where it was found).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from autombw_cli.blocks import Weights


class TrialState(StrEnum):
    """Where a trial (one proposed set of weights) is: handed out, evaluated, stopped early
    (pruned: its first images were clearly worse than the best's, ``search/pruning.py``), or
    failed."""

    RUNNING = "running"
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True, slots=True)
class Evaluation:
    """One finished (or failed) evaluation.

    ``score`` is the tallied score (None when the evaluation failed; for a pruned one the
    estimate of its full score the optimizer was told, never a best), ``payload_scores`` the
    per-payload tallies, ``raw_scores`` the scorer's raw value per image in render order,
    ``instance`` the WebUI that rendered it (the journal's ``worker`` column), ``timings``
    named durations in seconds (``merge_s``, ``generate_s``, ``score_s``, ``total_s``...),
    ``timestamp`` the Unix time it finished (was scored), ``member_scores`` an ensemble's raw
    scores per member label, one per image (what ``--resume`` rebuilds the z-score statistics
    from). ``line`` and ``location`` say where ``recover`` read it (0 and "" otherwise); only a
    set of weights read back that way may be complete without a score (a recipe has none).
    """

    number: int = 0  # 0: the source does not number its evaluations (recover)
    weights: Weights
    score: float | None
    pass_index: int = 1
    state: TrialState = TrialState.COMPLETE
    payload_scores: Mapping[str, float] = field(default_factory=dict)
    raw_scores: Sequence[float] = ()
    instance: str = ""
    merge_id: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)
    member_scores: Mapping[str, Sequence[float]] = field(default_factory=dict)
    line: int = 0  # recover: 1-based physical line where the evaluation starts (0: n/a)
    location: str = ""  # recover, for people: "row 12 (line 13)", "line 40 (testweights) ..."

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", TrialState(self.state))
        object.__setattr__(self, "payload_scores", dict(self.payload_scores))
        object.__setattr__(self, "raw_scores", tuple(float(v) for v in self.raw_scores))
        object.__setattr__(self, "timings", dict(self.timings))
        members = {str(k): tuple(float(v) for v in vs) for k, vs in self.member_scores.items()}
        object.__setattr__(self, "member_scores", members)
        pruned = self.state is TrialState.PRUNED
        if pruned and (self.score is None or not math.isfinite(self.score)):
            raise ValueError(f"evaluation {self.number}: a pruned evaluation needs its estimate")
        if self.state is TrialState.COMPLETE:
            unscored = self.score is None and not self.location
            if unscored or (self.score is not None and not math.isfinite(self.score)):
                raise ValueError(f"evaluation {self.number}: a complete evaluation needs a score")
        elif self.state is TrialState.RUNNING:
            raise ValueError(f"evaluation {self.number}: the journal keeps finished evaluations")

    @property
    def ok(self) -> bool:
        return self.state is TrialState.COMPLETE

    @property
    def pruned(self) -> bool:
        return self.state is TrialState.PRUNED

    @property
    def counted(self) -> bool:
        """Complete or pruned: it used the budget and its score was told to the optimizer."""
        return self.state in (TrialState.COMPLETE, TrialState.PRUNED)

    @property
    def duration_s(self) -> float | None:
        """Merge + generation + scoring of this evaluation (None when not measured)."""
        return self.timings.get("total_s")
