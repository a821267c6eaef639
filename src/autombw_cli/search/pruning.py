"""Pruning: the rule that stops rendering a candidate that is clearly worse than the best.

One look per evaluation. Once ``after`` images of a candidate are rendered and scored, its
per-image raw scores are compared, image by image, with the best evaluation's scores for the
same images (same prompt and seed: the prompts and seeds of a run are fixed, so the
comparison is paired and the prompt-to-prompt spread cancels). With ``d_i`` the signed
difference (a ``reverse_scoring`` image counts negated) and ``s`` the spread of such
differences within one evaluation, pooled over earlier complete evaluations against the same
best, the candidate is pruned when the upper confidence bound of its mean difference

    mean(d_1..d_k) + t(confidence, dof) * s / sqrt(k)

is below zero: at that confidence, its images are worse on average than the best's, so its full
score is expected to be below the best score. ``t`` is Student's quantile (normal quantile with
the first-order correction for ``dof`` degrees of freedom). Until ``min_evaluations`` complete
evaluations have the best's number of images, nothing is pruned (no spread to judge by).

The rule is pure: `judge` takes the partial scores, the best evaluation and the history and
returns a `PruneVerdict` (or None: not enough data). The campaign asks it and decides what to
tell the optimizer (``search/campaign.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from autombw_cli.search.evaluation import Evaluation

SPREAD_WINDOW = 200  # the most recent complete evaluations the spread is pooled over


@dataclass(frozen=True)
class PruningRule:
    """``after``: images rendered (and scored) before the one look; ``confidence``: one-sided
    level of the bound; ``min_evaluations``: complete evaluations needed before any prune."""

    after: int = 2
    confidence: float = 0.95
    min_evaluations: int = 5

    def __post_init__(self) -> None:
        if self.after < 1:
            raise ValueError("pruning.after must be at least 1")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError("pruning.confidence must be in [0.5, 1)")
        if self.min_evaluations < 2:
            raise ValueError("pruning.min_evaluations must be at least 2")


@dataclass(frozen=True)
class PruneVerdict:
    """The look at one candidate: its mean signed difference to the best over ``images``
    images, the upper bound of that mean, and the pooled spread it used."""

    images: int
    mean_difference: float
    bound: float
    spread: float
    dof: int

    @property
    def prune(self) -> bool:
        return self.bound < 0.0

    def describe(self) -> str:
        return (
            f"mean difference to the best {self.mean_difference:+.4g} over {self.images} "
            f"image(s), upper bound {self.bound:+.4g} (spread {self.spread:.4g}, {self.dof} dof)"
        )


def t_quantile(p: float, dof: int) -> float:
    """Student's t quantile, normal quantile plus the first-order Cornish-Fisher term (within
    1% of the exact value from 10 degrees of freedom on)."""
    z = NormalDist().inv_cdf(p)
    return z + (z**3 + z) / (4 * max(dof, 1))


def pooled_spread(
    best: Evaluation, history: Sequence[Evaluation], signs: Sequence[float]
) -> tuple[float, int] | None:
    """The spread (standard deviation) of per-image differences to ``best`` within one
    evaluation, pooled over the last ``SPREAD_WINDOW`` complete evaluations with as many images
    as the best, and its degrees of freedom; None when fewer than two such evaluations."""
    ref = best.raw_scores
    n = len(ref)
    if n < 2 or len(signs) != n:
        return None
    sq = 0.0
    dof = 0
    used = 0
    for e in reversed(history):
        if used >= SPREAD_WINDOW:
            break
        if not e.ok or e.number == best.number or len(e.raw_scores) != n:
            continue
        d = [s * (x - b) for s, x, b in zip(signs, e.raw_scores, ref, strict=True)]
        mean = sum(d) / n
        sq += sum((v - mean) ** 2 for v in d)
        dof += n - 1
        used += 1
    if used < 2 or dof == 0:
        return None
    return math.sqrt(sq / dof), dof


def judge(
    rule: PruningRule,
    partial: Sequence[float],
    signs: Sequence[float],
    best: Evaluation,
    history: Sequence[Evaluation],
) -> PruneVerdict | None:
    """The look at a candidate's first ``len(partial)`` raw scores (``signs``: +1, or -1 for a
    reversed image, one per image of a full evaluation); None when there is not enough to judge
    by (too few complete evaluations, the best's per-image scores unknown)."""
    k = len(partial)
    n = len(best.raw_scores)
    if k < 1 or k >= n or len(signs) != n:
        return None
    complete = sum(1 for e in history if e.ok and len(e.raw_scores) == n)
    if complete < rule.min_evaluations:
        return None
    spread = pooled_spread(best, history, signs)
    if spread is None:
        return None
    s, dof = spread
    diffs = [sg * (x - b) for sg, x, b in zip(signs, partial, best.raw_scores, strict=False)]
    mean = sum(diffs) / k
    bound = mean + t_quantile(rule.confidence, dof) * s / math.sqrt(k)
    return PruneVerdict(images=k, mean_difference=mean, bound=bound, spread=s, dof=dof)
