"""The synthetic benchmark landscapes (testing/landscapes.py): seeded, optimum 1.0 on the grid,
and each with the shape its name promises (rugged, noisy, flat)."""

from __future__ import annotations

import numpy as np
import pytest

from autombw_cli.testing.landscapes import (
    FLAT_STRONG,
    NOISE_SIGMA,
    Landscape,
    coupled,
    flat,
    noisy,
    rugged,
    skip_pairs,
)

SYNTHETIC = [coupled, skip_pairs, rugged, noisy, flat]


def _at(land: Landscape, x: np.ndarray) -> float:
    return land.value(land.target.replace(dict(zip(land.target.values, x.tolist(), strict=True))))


def _target(land: Landscape) -> np.ndarray:
    return np.array(list(land.target.values.values()))


@pytest.mark.parametrize("make", SYNTHETIC)
def test_seeded_optimum_one_on_the_grid_and_random_points_low(make) -> None:
    land = make(7)
    x = _target(land)
    assert np.allclose(x * 10, np.round(x * 10))  # on the 0.1 grid
    assert land.value(land.target) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    points = [rng.integers(0, 11, len(x)) / 10 for _ in range(50)]
    scores = [_at(land, p) for p in points]
    assert max(scores) < 1.0
    assert np.median(scores) < 0.4
    again = make(7)
    assert [_at(again, p) for p in points] == scores  # the same seed, the same landscape
    other = make(8)
    assert [_at(other, p) for p in points] != scores


def _climb(land: Landscape, x: np.ndarray) -> float:
    """Greedy single-block steps of 0.1 until none improves: where a local search stalls."""
    f = land.fn(x)
    while True:
        steps = []
        for i in range(len(x)):
            for d in (-0.1, 0.1):
                y = x.copy()
                y[i] = round(min(1.0, max(0.0, y[i] + d)), 1)
                steps.append((land.fn(y), y))
        best, y = max(steps, key=lambda s: s[0])
        if best <= f + 1e-12:
            return f
        f, x = best, y


def test_rugged_has_local_optima_where_the_smooth_bowl_has_none() -> None:
    rng = np.random.default_rng(1)
    starts = [rng.integers(0, 11, 27) / 10 for _ in range(3)]
    smooth, bumpy = coupled(1), rugged(1)
    assert min(_climb(smooth, s.copy()) for s in starts) > 0.95
    assert max(_climb(bumpy, s.copy()) for s in starts) < 0.9


def test_noisy_scores_the_same_weights_differently_around_their_value() -> None:
    land = noisy(2)
    w = land.target.replace({"IN03": 0.0, "OUT05": 1.0})
    scores = np.array([land(w) for _ in range(400)])
    assert len(set(scores.tolist())) == len(scores)
    assert abs(scores.mean() - land.value(w)) < 4 * NOISE_SIGMA / np.sqrt(len(scores))
    assert scores.std() == pytest.approx(NOISE_SIGMA, rel=0.15)
    again = noisy(2)
    assert [again(w) for _ in range(400)] == scores.tolist()  # seeded: a run repeats


def test_flat_has_few_blocks_that_matter() -> None:
    land = flat(3)
    x = _target(land)
    effects = []
    for i in range(len(x)):
        y = x.copy()
        y[i] = 0.0 if x[i] >= 0.5 else 1.0  # as far from the optimum as the block goes
        effects.append(1.0 - _at(land, y))
    ranked = sorted(effects, reverse=True)
    assert ranked[FLAT_STRONG - 1] > 0.2  # each block that matters costs a lot
    assert ranked[FLAT_STRONG] < 0.04  # each of the others costs a few hundredths at most
