"""What a run keeps in memory about its evaluations, and its best images.

`RecordBook` is bounded: the ``TOP_K`` best `Evaluation` values in full and 17 bytes (number,
score, pruned) per evaluation for the score plot and the counts. Everything else about an evaluation
lives only in the journal (``search/journal.py``), which takes and gives the same `Evaluation`.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable

from autombw_cli.report.summary import TOP_K, BestImage, ScoreTrace
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.work import Outcome


class RecordBook:
    """A run's completed evaluations as the run needs them in memory (bounded).

    Keeps the ``keep`` best complete records in full (best first; ties: the earlier number)
    and every evaluation's number, score and whether it was pruned in three flat arrays
    (8 + 8 + 1 bytes each); a pruned one is never among the best. Nothing per
    evaluation is kept as an object: a run of any length holds ``keep`` records here.
    """

    def __init__(self, records: Iterable[Evaluation] = (), *, keep: int = TOP_K) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.keep = keep
        self._numbers = array("q")
        self._scores = array("d")
        self._pruned = array("b")
        self._top: list[Evaluation] = []
        self._top_keys: list[tuple[float, int]] = []  # (-score, number), ascending
        for r in records:
            self.add(r)

    def add(self, record: Evaluation) -> None:
        self._numbers.append(record.number)
        self._scores.append(record.score)
        self._pruned.append(record.pruned)
        if not record.ok:
            return  # a pruned evaluation's score is an estimate: never among the best
        key = (-record.score, record.number)
        if len(self._top) < self.keep or key < self._top_keys[-1]:
            i = bisect.bisect_right(self._top_keys, key)
            self._top_keys.insert(i, key)
            self._top.insert(i, record)
            del self._top_keys[self.keep :], self._top[self.keep :]

    def __len__(self) -> int:
        return len(self._numbers)

    @property
    def best(self) -> Evaluation | None:
        return self._top[0] if self._top else None

    def top(self) -> list[Evaluation]:
        """The best ``keep`` records, best first."""
        return list(self._top)

    def trace(self) -> ScoreTrace:
        """Every evaluation's number and score, in the order they were recorded."""
        return ScoreTrace(
            numbers=array("q", self._numbers),
            scores=array("d", self._scores),
            pruned=array("b", self._pruned),
        )


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
