"""Validation: the search's top candidates rendered again with fresh seeds, after the search.

The best score of a noisy search is biased upward (the winner is partly the luckiest). After the
search, the ``top`` best distinct complete evaluations are rendered again with ``seeds`` fresh
seed sets (each of the run's prompts ``seeds`` more times, seeds derived from the run seed, the
same for every candidate, so a resumed run repeats them) and tallied like an evaluation; the
validated winner is the candidate with the best validated score (ties: the better search score).

Results go to ``validation.csv`` in the run folder (``number, search_score, validated_score,
images, worker, timestamp``, appended and fsynced per candidate), never to ``history.csv``:
readers of the journal (resume, warm start, recover) do not see them. A resumed run validates
only the candidates without a row.

`ValidationSource` is the scheduler's `CandidateSource` for this stage (no pruning, no
optimizer): one candidate per evaluation to validate, numbered as in the journal.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.history import split_rows
from autombw_cli.search.journal import (  # the journal's append-and-fsync file helpers
    _append_line,
    _complete_text,
    _csv_line,
    _cut_torn_tail,
    _exists,
)
from autombw_cli.search.prompt import PromptSpec
from autombw_cli.search.work import Candidate, Outcome

log = logging.getLogger(__name__)

VALIDATION = "validation.csv"
COLUMNS = ("number", "search_score", "validated_score", "images", "worker", "timestamp")


@dataclass(frozen=True)
class ValidationRule:
    top: int = 3
    seeds: int = 2


@dataclass(frozen=True)
class Validated:
    """One candidate's validation: its search score and its score on the fresh seeds."""

    number: int
    search_score: float
    validated_score: float
    images: int
    worker: str = ""
    timestamp: float = 0.0


def fresh_prompts(
    prompts: Sequence[PromptSpec],
    rule: ValidationRule,
    derive: Callable[..., int],
    run_seed: int,
) -> list[PromptSpec]:
    """The run's prompts ``rule.seeds`` times, each with a fresh seed derived from the run seed
    (``derive(run_seed, "validate", round, prompt key)``), never one the search used."""
    used = {p.seed for p in prompts}
    out: list[PromptSpec] = []
    for r in range(1, rule.seeds + 1):
        for p in prompts:
            seed = derive(run_seed, "validate", r, p.key)
            while seed in used:
                seed = derive(run_seed, "validate", r, p.key, seed)
            used.add(seed)
            out.append(replace(p, seed=seed, body={**p.body, "seed": seed}))
    return out


def winner(
    top: Sequence[Evaluation], validated: Sequence[Validated]
) -> tuple[Evaluation, bool] | None:
    """The validated winner among ``top`` and whether every one of them was validated; None
    when none was (the search's best stands)."""
    scores = {v.number: v.validated_score for v in validated}
    done = [e for e in top if e.number in scores]
    if not done:
        return None
    best = max(done, key=lambda e: (scores[e.number], e.score, -e.number))
    return best, len(done) == len(top)


class ValidationLog:
    """``validation.csv`` of one run folder: read what was validated, append one more."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / VALIDATION
        self._tail_cut = False

    def read(self) -> list[Validated]:
        """The rows written so far (a torn last line is dropped: that one is validated again)."""
        if not _exists(self.path):
            return []
        header, rows = split_rows(_complete_text(self.path))
        out = []
        for row in rows:
            if row.torn or len(row.cells) != len(header):
                continue
            c = row.by_name(header)
            try:
                out.append(
                    Validated(
                        number=int(c["number"]),
                        search_score=float(c["search_score"]),
                        validated_score=float(c["validated_score"]),
                        images=int(c["images"]),
                        worker=c.get("worker", ""),
                        timestamp=float(c.get("timestamp") or 0.0),
                    )
                )
            except (KeyError, ValueError):
                log.warning("%s, %s: not a validation row; skipped", self.path, row.where)
        return out

    def append(self, v: Validated) -> None:
        if not self._tail_cut:  # a torn last line (a kill mid-write) goes before the next row
            _cut_torn_tail(self.path)
            self._tail_cut = True
        if not _exists(self.path) or self.path.stat().st_size == 0:
            _append_line(self.path, _csv_line(list(COLUMNS)))
        cells = [
            str(v.number),
            repr(v.search_score),
            repr(v.validated_score),
            str(v.images),
            v.worker,
            f"{v.timestamp:.3f}",
        ]
        _append_line(self.path, _csv_line(cells))


class ValidationSource:
    """The scheduler's candidate source for validation (see the module docstring)."""

    def __init__(
        self,
        targets: Sequence[Evaluation],
        done: Sequence[Validated],
        *,
        tally: Callable[[Outcome], tuple[float, dict[str, float]]],
        record: Callable[[Validated], None],
    ) -> None:
        self.targets = {e.number: e for e in targets}
        self.results: list[Validated] = list(done)
        finished = {v.number for v in done}
        self._queue = [e for e in targets if e.number not in finished]
        self.tally = tally
        self.record = record
        self.abandoned: list[int] = []

    def next_candidate(self) -> Candidate | None:
        if not self._queue:
            return None
        e = self._queue.pop(0)
        return Candidate(number=e.number, weights=e.weights, pass_index=e.pass_index)

    def complete(self, outcome: Outcome) -> None:
        number = outcome.candidate.number
        score, _ = self.tally(outcome)
        if not math.isfinite(score):
            self.abandon(outcome.candidate, f"its validated score is {score}")
            return
        target = self.targets[number]
        assert target.score is not None
        v = Validated(
            number=number,
            search_score=target.score,
            validated_score=score,
            images=len(outcome.raw_scores),
            worker=outcome.instance,
            timestamp=outcome.finished_at or time.time(),
        )
        self.record(v)
        self.results.append(v)

    def abandon(self, candidate: Candidate, reason: str) -> None:
        log.warning("validation of #%d given up: %s", candidate.number, reason)
        self.abandoned.append(candidate.number)

    def judge_partial(self, outcome: Outcome) -> float | None:
        return None  # validation renders every image
