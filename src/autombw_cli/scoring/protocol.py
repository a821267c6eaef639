"""The seam between the search and whatever judges images.

A scorer takes a batch of images with the prompt each was generated from and returns one raw
score per image: any real number, higher is better, not normalised (ImageReward's are roughly
standard-normal and often negative). Scoring is synchronous and may hold a GPU; the search runs
it in a worker thread and batches images from several WebUI workers into one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["Scorer"]


@runtime_checkable
class Scorer(Protocol):
    """What every scorer (built-in, ensemble or from the ``autombw.scorers`` entry points) is."""

    name: str

    def score(self, images: Sequence[Image], prompts: Sequence[str]) -> list[float]:
        """One raw score per image; ``prompts[i]`` is the prompt of ``images[i]``.

        Raises `autombw_cli.errors.ScorerError` when it cannot score (and ``ValueError`` when the
        two sequences differ in length, a caller bug).
        """
        ...
