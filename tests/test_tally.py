"""The 12 tally types, their weights, their domains and the per-evaluation pipeline."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from autombw_cli.errors import ScorerError
from autombw_cli.scoring import ScorerConfig, Tally, evaluation_score, sigmoid, tally

# auto-MBW-rt's own formulas (scripts/main/merger.py, adjust_weights_score), unweighted.
AUTO_MBW_RT = {
    Tally.ARITHMETIC: statistics.mean,
    Tally.GEOMETRIC: statistics.geometric_mean,
    Tally.HARMONIC: statistics.harmonic_mean,
    Tally.QUADRATIC: lambda s: float(np.sqrt(np.mean(np.array(s) ** 2))),
    Tally.CUBIC: lambda s: float(np.cbrt(np.mean(np.array(s) ** 3))),
    Tally.A_G: lambda s: statistics.mean(s) / statistics.geometric_mean(s) * statistics.mean(s),
    Tally.G_H: lambda s: (
        statistics.geometric_mean(s) / statistics.harmonic_mean(s) * statistics.mean(s)
    ),
    Tally.A_H: lambda s: statistics.mean(s) / statistics.harmonic_mean(s) * statistics.mean(s),
    Tally.MEDIAN: statistics.median,
    Tally.MIN: min,
    Tally.MAX: max,
    Tally.MID_RANGE: lambda s: (min(s) + max(s)) / 2,
}
AUTO_MBW_RT_LABELS = [
    "Harmonic Mean",
    "Geometric Mean",
    "Arithmetic Mean",
    "Quadratic Mean",
    "Cubic Mean",
    "A/G Mean",
    "G/H Mean",
    "A/H Mean",
    "Median",
    "Min",
    "Max",
    "Mid-Range",
]
SCORES = [0.62, 0.35, 0.91, 0.47, 0.73, 0.58]


def test_twelve_tallies() -> None:
    assert len(Tally) == 12
    assert set(AUTO_MBW_RT) == set(Tally)


@pytest.mark.parametrize("kind", list(Tally))
def test_matches_auto_mbw_rt_unweighted(kind: Tally) -> None:
    assert tally(kind, SCORES) == pytest.approx(AUTO_MBW_RT[kind](SCORES), rel=1e-12)


@pytest.mark.parametrize("kind", list(Tally))
def test_tallies_differ_where_they_should(kind: Tally) -> None:
    # every tally gives a distinct value on skewed data, so a swapped mapping would fail
    values = {k: round(tally(k, SCORES), 12) for k in Tally}
    assert sum(v == values[kind] for v in values.values()) == 1


def test_parse_auto_mbw_rt_labels_and_config_names() -> None:
    parsed = [Tally.parse(label) for label in AUTO_MBW_RT_LABELS]
    assert len(set(parsed)) == 12
    assert Tally.parse("A/G Mean") is Tally.A_G
    assert Tally.parse("a_g") is Tally.A_G
    assert Tally.parse("MID_RANGE") is Tally.MID_RANGE
    assert Tally.parse(" quadratic ") is Tally.QUADRATIC
    with pytest.raises(ScorerError, match="unknown tally type 'mode'"):
        Tally.parse("mode")


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.floats(0.01, 10.0, allow_nan=False),
            st.integers(1, 3),
        ),
        min_size=1,
        max_size=8,
    ),
    kind=st.sampled_from(list(Tally)),
)
def test_integer_weights_equal_repetition(data: list[tuple[float, int]], kind: Tally) -> None:
    scores = [s for s, _ in data]
    weights = [w for _, w in data]
    repeated = [s for s, w in data for _ in range(w)]
    assert tally(kind, scores, weights) == pytest.approx(tally(kind, repeated), rel=1e-9)


def test_weights_change_the_result() -> None:
    x = [0.2, 0.8]
    assert tally("arithmetic", x, [3, 1]) == pytest.approx(0.35)
    assert tally("arithmetic", x, [1, 3]) == pytest.approx(0.65)
    assert tally("median", [1.0, 2.0, 3.0], [1, 1, 5]) == 3.0


def test_zero_weight_images_are_left_out_of_min_max_median() -> None:
    x = [-5.0, 1.0, 2.0, 9.0]
    w = [0, 1, 1, 0]
    assert tally("min", x, w) == 1.0
    assert tally("max", x, w) == 2.0
    assert tally("mid-range", x, w) == 1.5
    assert tally("median", x, w) == 1.5


@pytest.mark.parametrize("kind", ["geometric", "harmonic", "a/g", "g/h", "a/h"])
@pytest.mark.parametrize("bad", [-0.3, 0.0])
def test_positive_only_tallies_refuse_non_positive_scores(kind: str, bad: float) -> None:
    with pytest.raises(ScorerError, match=r"needs positive scores.*image 1") as err:
        tally(kind, [0.5, bad, 0.7])
    assert "sigmoid" in (err.value.hint or "")


def test_quadratic_refuses_negatives_but_takes_zero() -> None:
    assert tally("quadratic", [0.0, 3.0, 4.0]) == pytest.approx(math.sqrt(25 / 3))
    with pytest.raises(ScorerError, match="scores ≥ 0"):
        tally("quadratic", [-1.0, 1.0])


@pytest.mark.parametrize("kind", ["arithmetic", "cubic", "median", "min", "max", "mid-range"])
def test_any_sign_tallies_keep_order_with_negative_scores(kind: str) -> None:
    worse = [-1.9, -1.2, -1.5]
    better = [-0.4, -0.1, -0.3]
    assert tally(kind, better) > tally(kind, worse)
    assert tally(kind, worse) < 0


def test_cubic_keeps_sign() -> None:
    assert tally("cubic", [-2.0, -2.0]) == pytest.approx(-2.0)


def test_sigmoid_is_safe_and_monotone() -> None:
    assert sigmoid(0.0) == 0.5
    assert sigmoid(-1000.0) == 0.0
    assert sigmoid(1000.0) == 1.0
    assert sigmoid(-1.0) < sigmoid(-0.5) < sigmoid(2.0)


def test_evaluation_score_reverse_sigmoid_then_tally() -> None:
    raw = [-1.2, 0.4, 2.0]
    plain = evaluation_score(raw, kind="geometric", apply_sigmoid=True)
    assert plain == pytest.approx(statistics.geometric_mean([sigmoid(x) for x in raw]))
    reversed_ = evaluation_score(
        raw, kind="arithmetic", reverse=[False, True, True], weights=[1, 1, 2]
    )
    assert reversed_ == pytest.approx((-1.2 - 0.4 - 4.0) / 4)
    with pytest.raises(ScorerError, match="needs positive"):
        evaluation_score(raw, kind="geometric")


@pytest.mark.parametrize(
    ("scores", "weights", "message"),
    [
        ([], None, "no scores"),
        ([1.0, 2.0], [1.0], "2 scores but 1 weights"),
        ([1.0, math.nan], None, "NaN"),
        ([1.0, 2.0], [-1.0, 2.0], "≥ 0"),
        ([1.0, 2.0], [0.0, 0.0], "not all 0"),
    ],
)
def test_bad_input_is_reported(scores, weights, message) -> None:
    with pytest.raises(ScorerError, match=message):
        tally("arithmetic", scores, weights)


def test_config_rejects_positive_only_tally_on_raw_imagereward() -> None:
    with pytest.raises(ValidationError, match="needs positive scores"):
        ScorerConfig(name="imagereward", tally="geometric")
    assert ScorerConfig(name="imagereward", tally="Geometric Mean", sigmoid=True).tally is (
        Tally.GEOMETRIC
    )
    assert ScorerConfig(name="laion", tally="harmonic").tally is Tally.HARMONIC
    with pytest.raises(ValidationError, match="unknown tally type"):
        ScorerConfig(tally="mode")
