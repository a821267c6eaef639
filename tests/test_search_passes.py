"""Passes through one loop, warm starts by replay, resume, early stopping and limits."""

from __future__ import annotations

import itertools
import math

import pytest

from autombw_cli.blocks import Arch, Weights
from autombw_cli.config import EarlyStoppingConfig
from autombw_cli.search.space import SearchSpace
from autombw_cli.search.stopping import EarlyStopping
from autombw_cli.testing.landscapes import LANDSCAPES, coupled
from autombw_cli.testing.passes import Limits, PassSpec, run_passes

SEARCHED = ["IN00", "IN05", "M00", "OUT03", "OUT11", "TIME_EMBED"]


def small_space() -> SearchSpace:
    frozen = {s: 0.5 for s in Weights.uniform(Arch.SD1, 0).values if s not in SEARCHED}
    return SearchSpace.build("sd1", frozen=frozen)


def test_passes_run_in_order_with_their_budgets_and_never_repeat() -> None:
    space = small_space()
    land = coupled(0)
    result = run_passes(
        space,
        [PassSpec("random", {}, 15), PassSpec("tpe", {}, 10), PassSpec("HillClimbing", {}, 10)],
        land,
        seed=3,
        workers=3,
    )
    assert [e.pass_index for e in result.evaluations] == [1] * 15 + [2] * 10 + [3] * 10
    assert len({space.key(e.weights) for e in result.evaluations}) == 35
    assert result.best is not None and result.best.score == max(e.score for e in result.evaluations)


def test_later_passes_start_from_every_earlier_evaluation() -> None:
    """Pass 2 hill-climbs from pass 1's best: its first proposals are neighbours of it."""
    space = small_space()
    land = coupled(1)
    result = run_passes(
        space, [PassSpec("random", {}, 30), PassSpec("HillClimbing", {}, 5)], land, seed=0
    )
    first = [e for e in result.evaluations if e.pass_index == 1]
    best1 = max(first, key=lambda e: e.score)  # type: ignore[arg-type, return-value]
    second = [e for e in result.evaluations if e.pass_index == 2]
    distances = [max(abs(e.weights[s] - best1.weights[s]) for s in SEARCHED) for e in second]
    assert max(distances) <= 0.3  # local steps around the warm-start best, not random points


def test_a_seeded_search_repeats_and_resume_continues_the_same_budget() -> None:
    space = small_space()
    land = LANDSCAPES["skip-pairs"](2)
    passes = [PassSpec("tpe", {}, 20), PassSpec("cmaes", {}, 10)]
    full = run_passes(space, passes, land, seed=5, workers=2)
    again = run_passes(space, passes, land, seed=5, workers=2)
    assert [e.weights for e in full.evaluations] == [e.weights for e in again.evaluations]
    # "killed" after 12 evaluations, resumed from the journal
    head = full.evaluations[:12]
    resumed = run_passes(space, passes, land, seed=5, workers=2, history=head)
    assert len(resumed.evaluations) == 30
    assert sum(e.pass_index == 1 for e in resumed.evaluations) == 20
    keys = [space.key(e.weights) for e in resumed.evaluations]
    assert len(set(keys)) == len(keys)


def test_early_stopping_ends_a_pass() -> None:
    space = small_space()
    result = run_passes(
        space,
        [PassSpec("random", {}, 100, EarlyStopping(patience=5)), PassSpec("random", {}, 3)],
        lambda w: 1.0,  # nothing ever improves on the first score
        seed=0,
    )
    assert sum(e.pass_index == 1 for e in result.evaluations) == 6
    assert sum(e.pass_index == 2 for e in result.evaluations) == 3
    assert "no improvement in 5" in result.stop_reasons[0]


def test_failures_do_not_use_the_budget_and_are_not_retried_as_new_points() -> None:
    space = small_space()
    calls = itertools.count()
    result = run_passes(
        space,
        [PassSpec("tpe", {}, 10)],
        lambda w: None if next(calls) % 3 == 0 else 0.5,
        seed=0,
    )
    ok = [e for e in result.evaluations if e.ok]
    assert len(ok) == 10
    assert len(result.evaluations) > 10
    assert len({space.key(e.weights) for e in result.evaluations}) == len(result.evaluations)


def test_total_budget_and_wall_time_limits() -> None:
    space = small_space()
    result = run_passes(
        space,
        [PassSpec("random", {}, 50), PassSpec("random", {}, 50)],
        coupled(0),
        limits=Limits(max_evaluations=60),
    )
    assert len(result.evaluations) == 60
    clock = itertools.count()
    timed = run_passes(
        space,
        [PassSpec("random", {}, 50)],
        coupled(0),
        limits=Limits(max_wall_time_s=10, clock=lambda: float(next(clock))),
    )
    assert 0 < len(timed.evaluations) < 50
    assert "wall-time" in timed.stop_reasons[0]


def test_warm_start_data_and_initial_points() -> None:
    space = small_space()
    land = coupled(4)
    start = Weights.uniform(Arch.SD1, 0.52)  # projected onto the grid: 0.5
    warm = [(land.target, 1.0)]  # an outside history that already found the optimum
    result = run_passes(
        space, [PassSpec("tpe", {}, 5)], land, initial=[start], warm_start=warm, seed=0
    )
    assert result.evaluations[0].weights == space.project(start)
    assert all(e.weights != land.target for e in result.evaluations)


class TestEarlyStopping:
    def test_patience_counts_evaluations_without_improvement(self) -> None:
        s = EarlyStopping(patience=2)
        assert [s.update(v) for v in (1.0, 0.5, 2.0, 2.0, 1.0)] == [
            False,
            False,
            False,
            False,
            True,
        ]

    def test_absolute_and_relative_tolerance_with_negative_scores(self) -> None:
        s = EarlyStopping(patience=2, min_delta_abs=0.1)
        s.update(-2.0)
        assert not s.improves(-1.95) and s.improves(-1.85)
        r = EarlyStopping(patience=2, min_delta_rel=0.1)
        r.update(-2.0)  # margin 0.2 of |best|
        assert not r.improves(-1.85) and r.improves(-1.7)
        assert EarlyStopping(patience=None).update(-math.inf) is False

    def test_from_rule(self) -> None:
        s = EarlyStopping.from_rule(EarlyStoppingConfig(patience=4, min_delta_abs=0.5))
        assert s is not None and s.patience == 4 and s.min_delta_abs == 0.5
        assert EarlyStopping.from_rule(EarlyStoppingConfig(patience=None)) is None
        assert EarlyStopping.from_rule(None) is None


@pytest.mark.parametrize("name", sorted(LANDSCAPES))
def test_landscapes_peak_at_their_target(name: str) -> None:
    land = LANDSCAPES[name](0)
    assert land.value(land.target) == pytest.approx(1.0)  # value: without `noisy`'s noise
    space = SearchSpace.build("sd1")
    import numpy as np

    rng = np.random.default_rng(0)
    scores = [land.value(space.sample(rng)) for _ in range(200)]
    assert max(scores) < 0.9 and np.mean(scores) < 0.5
    assert land.value(land.target.replace({"IN00": 0.0})) < 1.0  # targets lie in 0.1..0.9


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("tpe", {}),
        ("random", {}),
        ("cmaes", {"popsize": 4}),
        ("qmc", {}),
        ("HillClimbing", {}),
        ("Bayesian", {"n_candidates": 200}),
    ],
)
def test_one_worker_resume_repeats_the_uninterrupted_search(name: str, settings: dict) -> None:
    """Killed after k evaluations and resumed from the journal, a one-worker search proposes
    exactly what the uninterrupted one did (same numbers, weights and scores)."""
    space = small_space()
    land = coupled(7)
    passes = [PassSpec("random", {}, 5), PassSpec(name, settings, 13, EarlyStopping(30))]
    full = run_passes(space, passes, land, seed=11)
    expected = [(e.number, e.weights, e.score) for e in full.evaluations]
    assert [n for n, _, _ in expected] == list(range(1, 19))
    for k in (3, 5, 6, 11):
        resumed = run_passes(space, passes, land, seed=11, history=full.evaluations[:k])
        assert [(e.number, e.weights, e.score) for e in resumed.evaluations] == expected, k


def test_failed_evaluations_give_their_number_to_the_next_candidate() -> None:
    space = small_space()
    calls = itertools.count()
    result = run_passes(
        space, [PassSpec("random", {}, 6)], lambda w: None if next(calls) in (1, 2) else 0.5
    )
    ok = [e.number for e in result.evaluations if e.ok]
    failed = [e.number for e in result.evaluations if not e.ok]
    assert ok == [1, 2, 3, 4, 5, 6] and failed == [2, 2]
