"""The values recover produces: what kind of source, the whole result (its evaluations are the
search's `Evaluation`, with where each was found), and their JSON form."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from autombw_cli.blocks import Arch, Ordering, Weights, canonical_slot, format_weight
from autombw_cli.errors import JournalError, WeightsError
from autombw_cli.recipe import Recipe
from autombw_cli.search.evaluation import Evaluation

MAX_WARNINGS_IN_ERROR = 5


class SourceKind(StrEnum):
    HISTORY = "history"
    MBWRT_CSV = "mbwrt-csv"
    LOG = "log"
    RECIPE = "recipe"
    CHECKPOINT = "checkpoint"  # a merged .safetensors carrying its recipe in the metadata


@dataclass(frozen=True)
class RecoveredSource:
    """Everything read from one source, in file order, plus what had to be skipped."""

    source: str
    kind: SourceKind
    evaluations: tuple[Evaluation, ...]
    warnings: tuple[str, ...] = ()
    recipe: Recipe | None = field(default=None)

    def ranked(self) -> list[Evaluation]:
        """Best first: higher score, ties to the earliest line; unscored entries last."""
        return sorted(
            self.evaluations,
            key=lambda e: (e.score is None, -(e.score if e.score is not None else 0.0), e.line),
        )

    def best(self) -> Evaluation:
        return self.ranked()[0]

    def top(self, k: int) -> list[Evaluation]:
        return self.ranked()[: max(k, 0)]

    def to_dict(self, top: int = 1) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind.value,
            "evaluations": len(self.evaluations),
            "warnings": list(self.warnings),
            "best": evaluation_dict(self.best()),
            "top": [evaluation_dict(e) for e in self.top(top)],
        }


def evaluation_dict(evaluation: Evaluation) -> dict[str, Any]:
    """One evaluation read back, as ``recover --json`` prints it."""
    w = evaluation.weights
    return {
        "score": evaluation.score,
        "line": evaluation.line,
        "location": evaluation.location,
        "arch": w.arch.value,
        "weights": dict(w.items()),
        "text_encoder_weight": w.text_encoder,
        "recipe_order": order_line(w, Ordering.RECIPE),
        "nat_order": order_line(w, Ordering.NAT),
    }


def order_line(weights: Weights, ordering: Ordering) -> str:
    return ",".join(format_weight(v) for v in weights.to_list(ordering))


def slot_or_none(name: str, arch: Arch) -> str | None:
    """The canonical slot for a column name, or None when it is not a block name."""
    try:
        return canonical_slot(name, arch)
    except WeightsError:
        return None


def no_evaluations(source: str, what: str, warnings: Sequence[str]) -> JournalError:
    shown = list(warnings[:MAX_WARNINGS_IN_ERROR])
    detail = ("; skipped: " + " | ".join(shown)) if shown else ""
    return JournalError(f"{source}: no complete evaluation found ({what}){detail}")
