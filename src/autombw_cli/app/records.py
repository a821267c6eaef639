"""A run's evaluation records and the seam to the journal (``search/journal.py``).

`Record` is one completed evaluation; `append` turns it into the journal's `Evaluation` (one
fsynced row of ``history.csv``), `read_records` turns journal rows back into records for
``--resume``. `RecordBook` is what a run keeps in memory about its evaluations, bounded: the
``TOP_K`` best records in full and 16 bytes (number, score) per evaluation for the score plot
and the counts. Everything else about an evaluation lives only in the journal.
"""

from __future__ import annotations

import bisect
import time
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from autombw_cli.blocks import Arch, Weights
from autombw_cli.report.summary import TOP_K, BestImage, EvaluationRecord, ScoreTrace
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.journal import Journal
from autombw_cli.search.journal import read_warm_start as read_journal_warm_start
from autombw_cli.search.optimizers.base import TrialState
from autombw_cli.search.work import Outcome


@dataclass(frozen=True)
class Record:
    number: int
    pass_index: int
    weights: Weights
    score: float
    payload_scores: Mapping[str, float] = field(default_factory=dict)
    raw_scores: tuple[float, ...] = ()
    instance: str = ""
    merge_id: str = ""
    merge_s: float = 0.0
    generate_s: float = 0.0
    score_s: float = 0.0
    duration_s: float = 0.0
    timestamp: float = 0.0

    @classmethod
    def from_outcome(cls, o: Outcome, score: float, per_payload: Mapping[str, float]) -> Record:
        return cls(
            number=o.candidate.number,
            pass_index=o.candidate.pass_index,
            weights=o.candidate.weights,
            score=score,
            payload_scores=dict(per_payload),
            raw_scores=tuple(o.raw_scores),
            instance=o.instance,
            merge_id=o.merge_id,
            merge_s=o.merge_s,
            generate_s=o.generate_s,
            score_s=o.score_s,
            duration_s=o.finished_at - o.started_at,
            timestamp=o.finished_at,
        )

    def as_report(self) -> EvaluationRecord:
        return EvaluationRecord(
            number=self.number,
            pass_index=self.pass_index,
            score=self.score,
            weights=self.weights,
            instance=self.instance,
            payload_scores=dict(self.payload_scores),
            duration_s=self.duration_s,
        )


class RecordBook:
    """A run's completed evaluations as the run needs them in memory (bounded).

    Keeps the ``keep`` best records in full (best first; ties: the earlier number) and every
    evaluation's number and score in two flat arrays (8 + 8 bytes each). Nothing per
    evaluation is kept as an object: a run of any length holds ``keep`` records here.
    """

    def __init__(self, records: Iterable[Record] = (), *, keep: int = TOP_K) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.keep = keep
        self._numbers = array("q")
        self._scores = array("d")
        self._top: list[Record] = []
        self._top_keys: list[tuple[float, int]] = []  # (-score, number), ascending
        for r in records:
            self.add(r)

    def add(self, record: Record) -> None:
        self._numbers.append(record.number)
        self._scores.append(record.score)
        key = (-record.score, record.number)
        if len(self._top) < self.keep or key < self._top_keys[-1]:
            i = bisect.bisect_right(self._top_keys, key)
            self._top_keys.insert(i, key)
            self._top.insert(i, record)
            del self._top_keys[self.keep :], self._top[self.keep :]

    def __len__(self) -> int:
        return len(self._numbers)

    @property
    def best(self) -> Record | None:
        return self._top[0] if self._top else None

    def top(self) -> list[Record]:
        """The best ``keep`` records, best first."""
        return list(self._top)

    def trace(self) -> ScoreTrace:
        """Every evaluation's number and score, in the order they were recorded."""
        return ScoreTrace(numbers=array("q", self._numbers), scores=array("d", self._scores))


def best_images(outcome: Outcome) -> list[BestImage]:
    counters: dict[tuple[str, int], int] = {}
    out = []
    for ri, raw in zip(outcome.images, outcome.raw_scores, strict=True):
        key = (ri.spec.payload_name, ri.spec.index)
        k = counters.get(key, 0)
        counters[key] = k + 1
        out.append(
            BestImage(
                payload_name=ri.spec.payload_name,
                index=ri.spec.index,
                image_index=k,
                prompt=ri.spec.prompt,
                negative_prompt=ri.spec.negative_prompt,
                seed=ri.seed,
                raw=ri.raw,
                raw_score=raw,
            )
        )
    return out


# --- the journal seam ---------------------------------------------------------------------
def open_journal(run_dir: Path, arch: Arch) -> Journal:
    return Journal(run_dir, arch)


def append(journal: Journal, record: Record, outcome: Outcome | None = None) -> None:
    evaluation = Evaluation(
        number=record.number,
        pass_index=record.pass_index,
        weights=record.weights,
        score=record.score,
        payload_scores=dict(record.payload_scores),
        raw_scores=list(record.raw_scores),
        worker=record.instance,
        merge_id=record.merge_id,
        timings={
            "merge_s": round(record.merge_s, 4),
            "generate_s": round(record.generate_s, 4),
            "score_s": round(record.score_s, 4),
            "total_s": round(record.duration_s, 4),
        },
        timestamp=record.timestamp or time.time(),
        member_scores=dict(outcome.member_scores) if outcome is not None else {},
    )
    journal.append(evaluation)


def read_records(journal: Journal) -> list[Record]:
    """The journal's complete evaluations, one record per number (a later row of a number
    wins), in the order the journal recorded them."""
    by_number: dict[int, Record] = {}
    for e in journal.read():
        if e.state is not TrialState.COMPLETE or e.score is None:
            continue
        timings = e.timings
        by_number[e.number] = Record(
            number=e.number,
            pass_index=e.pass_index or 1,
            weights=e.weights,
            score=float(e.score),
            payload_scores=dict(e.payload_scores),
            raw_scores=tuple(e.raw_scores),
            instance=e.worker,
            merge_id=e.merge_id,
            merge_s=float(timings.get("merge_s", 0.0)),
            generate_s=float(timings.get("generate_s", 0.0)),
            score_s=float(timings.get("score_s", 0.0)),
            duration_s=float(timings.get("total_s", 0.0)),
        )
    return list(by_number.values())


def read_warm_start(path: Path, arch: Arch) -> list[tuple[Weights, float]]:
    """Known (weights, score) pairs from an auto-MBW-rt history CSV or one of ours."""
    return list(read_journal_warm_start(path, arch))
