"""The validation stage of a run (``outputs.validation``): after the search, before the wrap-up,
the top candidates rendered again on the instances with fresh seeds (``search/validation.py``),
and which one the final merge takes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autombw_cli.app.records import RecordBook
from autombw_cli.config import SearchConfig
from autombw_cli.payloads import derive_seed
from autombw_cli.scoring.protocol import Scorer
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.events import EventSink, Notice, RunWarning
from autombw_cli.search.prompt import PromptSpec
from autombw_cli.search.scheduler import Instance, Outcome, Scheduler, SchedulerSettings
from autombw_cli.search.validation import (
    Validated,
    ValidationLog,
    ValidationRule,
    ValidationSource,
    fresh_prompts,
    winner,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationReport:
    """What the validation found: the candidates, their validated scores, the winner and
    whether every candidate was validated (if not, the winner is the search's best: a partial
    validation does not overrule the search)."""

    rule: ValidationRule
    top: tuple[Evaluation, ...]
    results: tuple[Validated, ...]
    winner: Evaluation
    complete: bool

    def describe(self) -> str:
        """One line for people: the winner, both of its scores, and whether it is the search's
        best."""
        v = next((r for r in self.results if r.number == self.winner.number), None)
        if not self.complete or v is None:
            return (
                f"validation incomplete ({len(self.results)} of {len(self.top)} candidates): "
                f"the search's best #{self.winner.number} stands"
            )
        same = self.top[0].number == self.winner.number
        return (
            f"validated winner: #{self.winner.number}, validated {v.validated_score:.4f} "
            f"(search {v.search_score:.4f})"
            + ("" if same else f"; the search's best was #{self.top[0].number}")
        )

    def to_dict(self) -> dict[str, Any]:
        scores = {v.number: v for v in self.results}
        return {
            "top": self.rule.top,
            "seeds": self.rule.seeds,
            "complete": self.complete,
            "winner": self.winner.number,
            "search_best": self.top[0].number if self.top else None,
            "candidates": [
                {
                    "number": e.number,
                    "search_score": e.score,
                    "validated_score": scores[e.number].validated_score
                    if e.number in scores
                    else None,
                    "images": scores[e.number].images if e.number in scores else 0,
                }
                for e in self.top
            ],
        }


def validation_rule(config: SearchConfig) -> ValidationRule | None:
    v = config.outputs.validation
    return None if v is None else ValidationRule(top=v.top, seeds=v.seeds)


def report_of(
    rule: ValidationRule, records: RecordBook, results: Sequence[Validated]
) -> ValidationReport | None:
    top = tuple(records.top()[: rule.top])
    if not top:
        return None
    found = winner(top, results)
    if found is None or not found[1]:  # a partial validation does not overrule the search
        return ValidationReport(rule, top, tuple(results), top[0], False)
    return ValidationReport(rule, top, tuple(results), found[0], True)


async def validate(
    *,
    config: SearchConfig,
    run_dir: Path,
    records: RecordBook,
    prompts: Sequence[PromptSpec],
    instances: list[Instance],
    scorer: Scorer,
    settings: SchedulerSettings,
    tally: Callable[[Outcome], tuple[float, dict[str, float]]],
    emit: EventSink,
    on_scheduler: Callable[[Scheduler], None],
) -> ValidationReport | None:
    """Validate the top candidates not validated yet (``validation.csv``); the report."""
    rule = validation_rule(config)
    if rule is None:
        return None
    top = records.top()[: rule.top]
    if not top:
        return None
    vlog = ValidationLog(run_dir)
    done = [v for v in vlog.read() if v.number in {e.number for e in top}]
    source = ValidationSource(top, done, tally=tally, record=vlog.append)
    todo = len(top) - len(done)
    if todo:
        emit(
            Notice(
                message=f"validation: rendering the top {len(top)} candidates again with "
                f"{rule.seeds} fresh seed set(s) ({todo} to go)"
            )
        )
        fresh = fresh_prompts(prompts, rule, derive_seed, config.search.seed)
        plain = SchedulerSettings(**{**settings.__dict__, "prune_after": None})
        scheduler = Scheduler(
            instances,
            scorer,
            fresh,
            model_a=config.models.a,
            model_b=config.models.b,
            emit=emit,
            settings=plain,
        )
        on_scheduler(scheduler)
        await scheduler.run(source)
    report = report_of(rule, records, source.results)
    if report is None:
        return None
    by_number = {v.number: v for v in report.results}
    for e in report.top:
        v = by_number.get(e.number)
        said = "not validated" if v is None else f"validated {v.validated_score:.4f}"
        emit(Notice(message=f"validation: #{e.number} search {e.score:.4f}, {said}"))
    best = report.top[0]
    if not report.complete:
        emit(RunWarning(message=report.describe() + "; `--resume` validates the rest"))
    elif report.winner.number != best.number:
        emit(
            Notice(
                message=f"validated winner: #{report.winner.number} (the search's best, "
                f"#{best.number}, scored lower on fresh seeds); the recipe and final merge use it"
            )
        )
    else:
        emit(Notice(message=f"validated winner: #{best.number}, the search's best"))
    log.info("validation: %s", report.to_dict())
    return report
