"""The seam between the search and whatever judges images: the one `Scorer` protocol.

A scorer takes a batch of images with the prompt each was generated from and returns one raw
score per image: any real number, higher is better, not normalised (ImageReward's are roughly
standard-normal and often negative). Scoring is synchronous and may hold a GPU; the search runs
it in a worker thread and batches images from several WebUI workers into one call, and the run
calls ``close()`` once it is done with it.

`MemberScorer` is the one optional capability, checked with ``isinstance`` where a scorer is
used: a scorer made of members (an ensemble) reports each member's raw scores, which the journal
keeps, and rebuilds its normalisation statistics from them on ``--resume``.

A third-party scorer (an ``autombw.scorers`` entry point) needs only ``name`` and ``score``: the
registry gives one without ``close`` a no-op one (``registry.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["MemberScorer", "Scorer"]


@runtime_checkable
class Scorer(Protocol):
    """What every scorer the run holds (built-in, ensemble or from an entry point) is."""

    name: str

    def score(self, images: Sequence[Image], prompts: Sequence[str]) -> list[float]:
        """One raw score per image; ``prompts[i]`` is the prompt of ``images[i]``.

        Raises `autombw_cli.errors.ScorerError` when it cannot score (and ``ValueError`` when the
        two sequences differ in length, a caller bug).
        """
        ...

    def close(self) -> None:
        """Free what the scorer holds (a model, GPU memory). Called once; idempotent."""
        ...


@runtime_checkable
class MemberScorer(Scorer, Protocol):
    """A scorer made of members (``EnsembleScorer``): the optional capability."""

    def score_members(
        self, images: Sequence[Image], prompts: Sequence[str]
    ) -> tuple[list[float], dict[str, list[float]]]:
        """Combined scores and each member's raw scores (keyed by member label)."""
        ...

    def restore_stats(self, history: Iterable[Mapping[str, Sequence[float]]]) -> int:
        """Replay journaled member scores into the normalisation statistics; returns how many
        evaluations were replayed."""
        ...
