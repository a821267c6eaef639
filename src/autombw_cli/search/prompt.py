"""`PromptSpec`: one concrete txt2img call of a run, the same for every candidate.

``payloads.py`` builds them (wildcard expansion, derived seeds), the run saves them as
``prompts.json``, the scheduler renders them for every candidate and the tally weighs each
image's score by its ``score_weight``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PromptSpec:
    """One expanded prompt of one payload, fixed for the whole run."""

    payload_name: str
    index: int  # position within its payload's expansion
    prompt: str
    negative_prompt: str
    seed: int
    body: dict[str, Any]  # the txt2img request
    score_weight: float = 1.0
    reverse_scoring: bool = False
    seed_derived: bool = False  # True when the payload said seed -1 and this seed was derived

    @property
    def key(self) -> str:
        return f"{self.payload_name}#{self.index}"

    @property
    def images(self) -> int:
        """Images one call renders (``batch_size`` x ``n_iter``)."""
        return int(self.body.get("batch_size", 1)) * int(self.body.get("n_iter", 1))

    def txt2img_body(self) -> dict[str, Any]:
        """The exact JSON body for ``POST /sdapi/v1/txt2img`` (a fresh copy each call)."""
        return copy.deepcopy(self.body)
