"""A run's evaluation records and the seam to the journal (``search/journal.py``).

`Record` is what the run keeps in memory about one completed evaluation; `append` turns it into
the journal's `Evaluation` (one fsynced row of ``history.csv``), `read_records` turns journal
rows back into records for ``--resume``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autombw_cli.blocks import Arch, Weights
from autombw_cli.report.summary import BestImage, EvaluationRecord
from autombw_cli.search.scheduler import Outcome


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
def open_journal(run_dir: Path, arch: Arch) -> Any:
    from autombw_cli.search.journal import Journal

    return Journal(run_dir, arch)


def append(journal: Any, record: Record, outcome: Outcome | None = None) -> None:
    from autombw_cli.search.evaluation import Evaluation

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


def read_records(journal: Any, arch: Arch) -> list[Record]:
    out = []
    for e in journal.read():
        state = str(getattr(e, "state", "complete")).lower()
        if "complete" not in state or e.score is None:
            continue
        timings = getattr(e, "timings", {}) or {}
        out.append(
            Record(
                number=e.number,
                pass_index=getattr(e, "pass_index", 1) or 1,
                weights=e.weights,
                score=float(e.score),
                payload_scores=dict(getattr(e, "payload_scores", {}) or {}),
                raw_scores=tuple(getattr(e, "raw_scores", ()) or ()),
                instance=getattr(e, "worker", "") or "",
                merge_id=getattr(e, "merge_id", "") or "",
                merge_s=float(timings.get("merge_s", 0.0)),
                generate_s=float(timings.get("generate_s", 0.0)),
                score_s=float(timings.get("score_s", 0.0)),
                duration_s=float(timings.get("total_s", 0.0)),
            )
        )
    return out


def read_warm_start(path: Path, arch: Arch) -> list[tuple[Weights, float]]:
    """Known (weights, score) pairs from an auto-MBW-rt history CSV or one of ours."""
    from autombw_cli.search.journal import read_warm_start as core_read

    return list(core_read(path, arch))
