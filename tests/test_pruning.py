"""Pruning: the paired rule (``search/pruning.py``) and the campaign's side of it (what a pruned
evaluation is told, counted and recorded as; an exact resume stays exact)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from autombw_cli.blocks import Arch, Weights, layout
from autombw_cli.search.campaign import Campaign, PassPlan
from autombw_cli.search.evaluation import Evaluation, TrialState
from autombw_cli.search.optimizers import create_optimizer
from autombw_cli.search.prompt import PromptSpec
from autombw_cli.search.pruning import PruningRule, judge, t_quantile
from autombw_cli.search.scheduler import Candidate, Outcome, RenderedImage
from autombw_cli.search.space import SearchSpace

N = 6
SPECS = [PromptSpec(f"p{i}", 0, f"prompt {i}", "", i, {}) for i in range(N)]


def _w(v: float) -> Weights:
    return Weights(Arch.SD1, dict.fromkeys(layout(Arch.SD1).slots, v))


def _ev(number: int, raw: list[float], state: TrialState = TrialState.COMPLETE) -> Evaluation:
    return Evaluation(
        number=number,
        weights=_w(number / 1000),
        score=sum(raw) / len(raw),
        raw_scores=raw,
        state=state,
    )


def _history(rng: random.Random, n: int, sd: float) -> list[Evaluation]:
    offsets = [rng.gauss(0, 1) for _ in range(N)]
    return [_ev(i + 1, [o + rng.gauss(0, sd) for o in offsets]) for i in range(n)]


def test_the_rule_waits_for_enough_evaluations_and_knows_the_best() -> None:
    rng = random.Random(1)
    hist = _history(rng, 4, 0.3)
    best = max(hist, key=lambda e: e.score)
    rule = PruningRule(after=2, min_evaluations=5)
    assert judge(rule, [-9.0, -9.0], [1.0] * N, best, hist) is None  # 4 < 5 evaluations
    hist += _history(rng, 3, 0.3)
    verdict = judge(rule, [-9.0, -9.0], [1.0] * N, best, hist)
    assert verdict is not None and verdict.prune
    # as good as the best on these images: not pruned
    same = judge(rule, list(best.raw_scores[:2]), [1.0] * N, best, hist)
    assert same is not None and not same.prune


def test_a_reversed_image_counts_negated() -> None:
    rng = random.Random(2)
    hist = _history(rng, 10, 0.2)
    best = hist[0]
    low = [best.raw_scores[0] - 3.0]
    rule = PruningRule(after=1)
    assert judge(rule, low, [1.0] * N, best, hist).prune
    assert not judge(rule, low, [-1.0] + [1.0] * (N - 1), best, hist).prune


def test_false_prune_rate_under_the_null_is_at_most_the_level() -> None:
    """Candidates exactly as good as the best (same mean, same noise, a fresh draw of both):
    pruned about 5% of the time at confidence 0.95, not more."""
    rng = random.Random(3)
    sd = 0.4
    offsets = [rng.gauss(0, 1) for _ in range(N)]
    hist = [_ev(i + 1, [o + rng.gauss(0, sd) for o in offsets]) for i in range(30)]
    rule = PruningRule(after=2, confidence=0.95)
    pruned = 0
    trials = 2000
    for _ in range(trials):
        best = _ev(99, [o + rng.gauss(0, sd) for o in offsets])
        twin = [o + rng.gauss(0, sd) for o in offsets[:2]]
        if judge(rule, twin, [1.0] * N, best, [*hist, best]).prune:
            pruned += 1
    assert 0.02 <= pruned / trials <= 0.07


def test_t_quantile_is_close_to_students() -> None:
    assert t_quantile(0.95, 10) == pytest.approx(1.812, rel=0.01)
    assert t_quantile(0.95, 1000) == pytest.approx(1.646, rel=0.001)


def test_rule_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        PruningRule(after=0)
    with pytest.raises(ValueError):
        PruningRule(confidence=1.0)


# --- the campaign ------------------------------------------------------------------------------
def _raw(c: Candidate) -> list[float]:
    """Per-image scores, a known function of the weights (image i adds its own offset)."""
    q = -sum((v - 0.3) ** 2 for v in c.weights.values.values())
    return [q + 0.05 * i + 0.01 * ((c.number * 7 + i * 3) % 5) for i in range(N)]


def _outcome(c: Candidate, raw: list[float]) -> Outcome:
    images = tuple(RenderedImage(SPECS[i], None, b"", i) for i in range(len(raw)))  # type: ignore[arg-type]
    return Outcome(c, "test", "m", images, tuple(raw), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1)


def _campaign(history=(), lag: int | None = 0, budget: int | None = 24) -> tuple[Campaign, list]:
    space = SearchSpace.build(Arch.SD1, intervals=10)
    recorded: list[Evaluation] = []
    told: list[tuple[TrialState, float | None]] = []

    def make(plan):
        opt = create_optimizer(plan.optimizer, plan.settings, space, 3)
        tell = opt.tell

        def spy(trial, score, state=TrialState.COMPLETE):
            told.append((state, score))
            tell(trial, score, state)

        opt.tell = spy  # type: ignore[method-assign]
        return opt

    c = Campaign(
        passes=[PassPlan(1, "random", {}, None)],
        total_budget=budget,
        tally=lambda o: (sum(o.raw_scores) / len(o.raw_scores), {}),
        make_optimizer=make,
        record=lambda e, _o: recorded.append(e),
        emit=lambda _e: None,
        history=list(history),
        lockstep=lag,
        pruning=PruningRule(after=2, min_evaluations=3),
    )
    c.told = told  # type: ignore[attr-defined]
    return c, recorded


def _drive(c: Campaign, stop_after: int | None = None) -> None:
    done = 0
    while stop_after is None or done < stop_after:
        cand = c.next_candidate()
        if cand is None:
            return
        raw = _raw(cand)
        partial = _outcome(cand, raw[:2])
        estimate = c.judge_partial(partial)
        if estimate is None:
            c.complete(_outcome(cand, raw))
        else:
            c.complete(replace(partial, pruned_score=estimate))
        done += 1


def test_a_pruned_evaluation_is_recorded_as_pruned_told_its_estimate_and_uses_the_budget():
    c, recorded = _campaign()
    _drive(c)
    assert len(recorded) == 24  # pruned ones count in the budget
    pruned = [e for e in recorded if e.pruned]
    assert pruned, "a random search on this function prunes some candidates"
    for e in pruned:
        assert e.state is TrialState.PRUNED and len(e.raw_scores) == 2
        assert e.score < c.best.score  # the estimate is below the best at that time
    assert c.best.ok
    # the optimizer heard every evaluation as complete: pruned ones with their estimate
    told = [s for st, s in c.told if st is TrialState.COMPLETE]  # type: ignore[attr-defined]
    in_order = [e.score for e in sorted(recorded, key=lambda e: e.number)]
    assert len(told) >= len(in_order) - 1  # lockstep: the last one is told on the next ask
    assert told == in_order[: len(told)]


def test_pruning_off_renders_everything() -> None:
    c, recorded = _campaign()
    c.pruning = None
    _drive(c)
    assert not any(e.pruned for e in recorded)


def test_an_exact_resume_stays_exact_with_pruned_evaluations() -> None:
    full, full_rec = _campaign()
    _drive(full)
    expected = [(e.number, e.weights, e.score, e.state) for e in full_rec]
    assert any(s is TrialState.PRUNED for *_, s in expected)
    for k in (5, 11, 17):
        head, head_rec = _campaign()
        _drive(head, stop_after=k)
        resumed, rest = _campaign(history=head_rec)
        _drive(resumed)
        got = sorted([*head_rec, *rest], key=lambda e: e.number)
        assert [(e.number, e.weights, e.score, e.state) for e in got] == expected, k
        assert resumed.exact_resume is True
