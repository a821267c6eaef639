"""Ensembles: several scorers, each normalised, weighted and summed per image.

``combined[i] = Σ_m weight_m · normalize_m(raw_m[i])`` where ``normalize`` is

- ``raw``: the raw score as is;
- ``sigmoid``: ``1 / (1 + e^-raw)``, into (0, 1);
- ``zscore``: ``(raw - mean_m) / std_m`` over the run. The mean and standard deviation are
  accumulated from the member's first ``zscore_warmup`` scored images and then frozen, so every
  later evaluation is normalised the same way and scores stay comparable across the run (images
  scored during the warm-up are normalised with the statistics gathered so far). A member whose
  scores have not varied yet uses std 1.

The result is one score per image, which the tally then combines (`autombw_cli.scoring.tally`).
`EnsembleScorer.score_members` also returns every member's raw scores for the journal, and
`EnsembleScorer.restore_stats` replays them on ``--resume``, so a resumed run freezes the same
z-score statistics as an uninterrupted one and keeps scoring on the same scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from autombw_cli.scoring.protocol import Scorer
from autombw_cli.scoring.settings import Normalization
from autombw_cli.scoring.tally import sigmoid

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["EnsembleScorer", "Member", "RunningStats"]


@dataclass
class RunningStats:
    """Welford mean/variance over at most ``limit`` values, then frozen."""

    limit: int
    count: int = 0
    mean: float = 0.0
    _m2: float = 0.0

    def update(self, values: Sequence[float]) -> None:
        for v in values:
            if self.count >= self.limit:
                return
            self.count += 1
            delta = v - self.mean
            self.mean += delta / self.count
            self._m2 += delta * (v - self.mean)

    @property
    def std(self) -> float:
        if self.count < 2:
            return 1.0
        s = math.sqrt(self._m2 / (self.count - 1))
        return s if s > 1e-12 else 1.0


@dataclass
class Member:
    """One scorer of an ensemble with its weight and normalisation."""

    scorer: Scorer
    weight: float = 1.0
    normalize: Normalization = Normalization.RAW
    label: str = ""
    stats: RunningStats | None = field(default=None, repr=False)


class EnsembleScorer:
    """A `Scorer` that combines other scorers per image."""

    name = "ensemble"

    def __init__(self, members: Sequence[Member], *, zscore_warmup: int = 64) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        seen: dict[str, int] = {}
        for m in self.members:
            base = m.label or m.scorer.name
            seen[base] = seen.get(base, 0) + 1
            m.label = base if seen[base] == 1 else f"{base}#{seen[base]}"
            if m.normalize is Normalization.ZSCORE and m.stats is None:
                m.stats = RunningStats(zscore_warmup)

    def _normalized(self, member: Member, raw: list[float]) -> list[float]:
        if member.normalize is Normalization.SIGMOID:
            return [sigmoid(x) for x in raw]
        if member.normalize is Normalization.ZSCORE:
            assert member.stats is not None
            member.stats.update(raw)
            mean, std = member.stats.mean, member.stats.std
            return [(x - mean) / std for x in raw]
        return list(raw)

    def score_members(
        self, images: Sequence[Image], prompts: Sequence[str]
    ) -> tuple[list[float], dict[str, list[float]]]:
        """Combined scores and each member's raw scores (keyed by member label)."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        combined = [0.0] * len(images)
        raw_by_member: dict[str, list[float]] = {}
        for m in self.members:
            raw = m.scorer.score(images, prompts)
            if len(raw) != len(images):
                raise ValueError(f"scorer {m.label} returned {len(raw)} scores for {len(images)}")
            raw_by_member[m.label] = list(raw)
            for i, v in enumerate(self._normalized(m, list(raw))):
                combined[i] += m.weight * v
        return combined, raw_by_member

    def score(self, images: Sequence[Image], prompts: Sequence[str]) -> list[float]:
        return self.score_members(images, prompts)[0]

    def restore_stats(self, history: Iterable[Mapping[str, Sequence[float]]]) -> int:
        """Replay journaled raw scores (per evaluation, member label → one score per image, in
        the order they were scored) into the z-score statistics, as scoring them did; returns
        the number of evaluations replayed. Call it on a fresh ensemble, before scoring.
        Labels the ensemble does not have are ignored."""
        zscored = [m for m in self.members if m.stats is not None]
        n = 0
        for entry in history:
            for m in zscored:
                assert m.stats is not None
                m.stats.update([float(v) for v in entry.get(m.label, ())])
            n += 1
        return n

    def close(self) -> None:
        for m in self.members:
            m.scorer.close()
