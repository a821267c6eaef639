"""Tally: combine the per-image scores of one evaluation into the evaluation's score.

The twelve tally types auto-MBW-rt offers (DOMAIN.md §4), as an enum mapped to functions, each
taking optional per-image weights (a payload's ``score_weight`` repeated for each of its images):

============  ==========================================  ===========================
tally         weighted formula (w = weights, x = scores)   needs
============  ==========================================  ===========================
arithmetic    A = Σwx / Σw                                 any scores
geometric     G = exp(Σw·ln x / Σw)                        x > 0
harmonic      H = Σw / Σ(w/x)                              x > 0
quadratic     sqrt(Σwx² / Σw)  (RMS)                       x ≥ 0
cubic         cbrt(Σwx³ / Σw)  (sign kept)                 any scores
a/g           (A/G)·A                                      x > 0
g/h           (G/H)·A                                      x > 0
a/h           (A/H)·A                                      x > 0
median        weighted median (equal weights: the median)  any scores
min / max     over images with w > 0                       any scores
mid-range     (min + max) / 2 over images with w > 0       any scores
============  ==========================================  ===========================

Raw ImageReward scores are roughly standard-normal and often negative. The tallies that need
positive scores do not shift or clip them silently: they raise `ScorerError` naming the first
offending score and pointing at ``scorer.sigmoid: true`` (what auto-MBW-rt always applied, which
maps every score into (0, 1)). ``quadratic`` refuses negatives too, because the RMS of negative
scores grows as the images get *worse*. Config loading can catch the combination earlier with
`Tally.needs_positive`.

`evaluation_score` is the whole per-evaluation pipeline the search uses: reverse scoring (negate
the raw score of a payload with ``reverse_scoring``), the optional sigmoid, then the tally.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import StrEnum

from autombw_cli.errors import ScorerError

__all__ = ["Tally", "evaluation_score", "sigmoid", "tally"]


class Tally(StrEnum):
    """How one evaluation's per-image scores become one number. Values are the config names."""

    ARITHMETIC = "arithmetic"
    GEOMETRIC = "geometric"
    HARMONIC = "harmonic"
    QUADRATIC = "quadratic"
    CUBIC = "cubic"
    A_G = "a/g"
    G_H = "g/h"
    A_H = "a/h"
    MEDIAN = "median"
    MIN = "min"
    MAX = "max"
    MID_RANGE = "mid-range"

    @classmethod
    def parse(cls, text: str) -> Tally:
        """Accept config names, auto-MBW-rt's labels ("Arithmetic Mean", "A/G Mean") and
        enum-style names ("A_G", "mid_range")."""
        key = text.strip().lower()
        if key.endswith(" mean"):
            key = key[: -len(" mean")]
        key = key.replace("_", "/" if len(key) == 3 else "-")
        for member in cls:
            if member.value == key:
                return member
        valid = ", ".join(m.value for m in cls)
        raise ScorerError(f"unknown tally type {text!r}", hint=f"use one of: {valid}")

    @property
    def needs_positive(self) -> bool:
        """True where scores must be > 0 (or ≥ 0 for quadratic) for the tally to mean anything."""
        return self in _POSITIVE_ONLY or self is Tally.QUADRATIC


_POSITIVE_ONLY = frozenset({Tally.GEOMETRIC, Tally.HARMONIC, Tally.A_G, Tally.G_H, Tally.A_H})


def sigmoid(x: float) -> float:
    """The logistic function, overflow-safe for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _arith(x: Sequence[float], w: Sequence[float]) -> float:
    return math.fsum(wi * xi for xi, wi in zip(x, w, strict=True)) / math.fsum(w)


def _geo(x: Sequence[float], w: Sequence[float]) -> float:
    return math.exp(
        math.fsum(wi * math.log(xi) for xi, wi in zip(x, w, strict=True)) / math.fsum(w)
    )


def _harm(x: Sequence[float], w: Sequence[float]) -> float:
    return math.fsum(w) / math.fsum(wi / xi for xi, wi in zip(x, w, strict=True))


def _quad(x: Sequence[float], w: Sequence[float]) -> float:
    return math.sqrt(_arith([xi * xi for xi in x], w))


def _cubic(x: Sequence[float], w: Sequence[float]) -> float:
    m = _arith([xi**3 for xi in x], w)
    return math.copysign(abs(m) ** (1.0 / 3.0), m)


def _a_g(x: Sequence[float], w: Sequence[float]) -> float:
    a = _arith(x, w)
    return a / _geo(x, w) * a


def _g_h(x: Sequence[float], w: Sequence[float]) -> float:
    return _geo(x, w) / _harm(x, w) * _arith(x, w)


def _a_h(x: Sequence[float], w: Sequence[float]) -> float:
    a = _arith(x, w)
    return a / _harm(x, w) * a


def _median(x: Sequence[float], w: Sequence[float]) -> float:
    pairs = sorted((xi, wi) for xi, wi in zip(x, w, strict=True) if wi > 0)
    half = math.fsum(wi for _, wi in pairs) / 2.0
    acc = 0.0
    for i, (xi, wi) in enumerate(pairs):
        acc += wi
        if math.isclose(acc, half, rel_tol=1e-12, abs_tol=1e-15) and i + 1 < len(pairs):
            return (xi + pairs[i + 1][0]) / 2.0  # exactly on the boundary: average (plain median)
        if acc > half:
            return xi
    return pairs[-1][0]


def _positive(x: Sequence[float], w: Sequence[float]) -> list[float]:
    return [xi for xi, wi in zip(x, w, strict=True) if wi > 0]


def _min(x: Sequence[float], w: Sequence[float]) -> float:
    return min(_positive(x, w))


def _max(x: Sequence[float], w: Sequence[float]) -> float:
    return max(_positive(x, w))


def _mid(x: Sequence[float], w: Sequence[float]) -> float:
    kept = _positive(x, w)
    return (min(kept) + max(kept)) / 2.0


_FUNCTIONS: dict[Tally, Callable[[Sequence[float], Sequence[float]], float]] = {
    Tally.ARITHMETIC: _arith,
    Tally.GEOMETRIC: _geo,
    Tally.HARMONIC: _harm,
    Tally.QUADRATIC: _quad,
    Tally.CUBIC: _cubic,
    Tally.A_G: _a_g,
    Tally.G_H: _g_h,
    Tally.A_H: _a_h,
    Tally.MEDIAN: _median,
    Tally.MIN: _min,
    Tally.MAX: _max,
    Tally.MID_RANGE: _mid,
}


def tally(
    kind: Tally | str, scores: Sequence[float], weights: Sequence[float] | None = None
) -> float:
    """Combine ``scores`` (one per image) with the tally ``kind``; ``weights`` default to 1.

    Raises `ScorerError` for no scores, NaN scores, weights that are negative, of the wrong
    count or all zero, and for scores outside the domain of the tally (see the module doc).
    """
    kind = kind if isinstance(kind, Tally) else Tally.parse(kind)
    x = [float(s) for s in scores]
    if not x:
        raise ScorerError(f"{kind.value} tally of no scores: the evaluation produced no images")
    w = [1.0] * len(x) if weights is None else [float(v) for v in weights]
    if len(w) != len(x):
        raise ScorerError(f"{len(x)} scores but {len(w)} weights for the {kind.value} tally")
    if any(math.isnan(v) for v in x):
        raise ScorerError(f"a score is NaN: {x}", hint="the scorer produced an invalid value")
    if any(v < 0 or math.isnan(v) or math.isinf(v) for v in w) or math.fsum(w) <= 0:
        raise ScorerError(
            f"score weights must be finite, ≥ 0 and not all 0, got {w}",
            hint="check the payloads' score_weight",
        )
    if kind.needs_positive:
        strict = kind is not Tally.QUADRATIC
        for i, (xi, wi) in enumerate(zip(x, w, strict=True)):
            if wi > 0 and (xi <= 0 if strict else xi < 0):
                need = "positive scores" if strict else "scores ≥ 0"
                raise ScorerError(
                    f"the {kind.value} tally needs {need}, but image {i} scored {xi:g}",
                    hint="set scorer.sigmoid: true (maps raw scores into 0..1, as auto-MBW-rt "
                    "did) or use a tally that takes any score (arithmetic, cubic, median, "
                    "min, max, mid-range)",
                )
    return _FUNCTIONS[kind](x, w)


def evaluation_score(
    raw_scores: Sequence[float],
    *,
    kind: Tally | str = Tally.ARITHMETIC,
    weights: Sequence[float] | None = None,
    reverse: Sequence[bool] | None = None,
    apply_sigmoid: bool = False,
) -> float:
    """One evaluation's score from its per-image raw scores: negate the images whose payload has
    ``reverse_scoring`` (``reverse[i]``), apply the sigmoid if asked, then `tally`."""
    x = [float(s) for s in raw_scores]
    if reverse is not None:
        if len(reverse) != len(x):
            raise ScorerError(f"{len(x)} scores but {len(reverse)} reverse flags")
        x = [-xi if r else xi for xi, r in zip(x, reverse, strict=True)]
    if apply_sigmoid:
        x = [sigmoid(xi) for xi in x]
    return tally(kind, x, weights)
