"""The campaign (passes, budget, early stopping, resume, failures) with real optimizers.

No WebUI here: outcomes are built directly and scored by a known function of the weights.
"""

from __future__ import annotations

import pytest

pytest.importorskip("autombw_cli.search.optimizers")

from autombw_cli.blocks import Arch
from autombw_cli.search.campaign import Campaign, PassPlan
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.events import EvaluationDone, PassStarted, StopReason
from autombw_cli.search.optimizers import create_optimizer
from autombw_cli.search.scheduler import Candidate, Outcome
from autombw_cli.search.space import SearchSpace


def _space() -> SearchSpace:
    return SearchSpace.build(Arch.SD1, intervals=10)


def _outcome(c: Candidate) -> Outcome:
    return Outcome(c, "test", "m1", (), (), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1)


def _scored(number: int, pass_index: int, weights, score: float) -> Evaluation:
    return Evaluation(number=number, pass_index=pass_index, weights=weights, score=score)


def _score(c: Candidate) -> float:
    return -sum((v - 0.3) ** 2 for v in c.weights.values.values())


class _Early:
    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.min_delta_abs = 0.0
        self.min_delta_rel = 0.0


def _campaign(passes, total, events, *, history=(), score=None, clock=None, max_time=None):
    space = _space()
    recorded: list[tuple[int, float]] = []
    scores = {}

    def tally(o: Outcome):
        s = (score or _score)(o.candidate)
        scores[o.candidate.number] = s
        return s, {"p": s}

    kw = {}
    if clock is not None:
        kw["clock"] = clock
    return (
        Campaign(
            passes=passes,
            total_budget=total,
            tally=tally,
            make_optimizer=lambda plan: create_optimizer(plan.optimizer, plan.settings, space, 1),
            record=lambda e, _o: recorded.append((e.number, e.score)),
            emit=events.append,
            history=list(history),
            max_time_s=max_time,
            **kw,
        ),
        recorded,
    )


def _drain(c: Campaign, limit: int = 1000) -> list[Candidate]:
    """Hand out and complete candidates one at a time until the campaign is done."""
    out = []
    for _ in range(limit):
        cand = c.next_candidate()
        if cand is None:
            break
        out.append(cand)
        c.complete(_outcome(cand))
    return out


def test_passes_share_the_total_budget_and_run_in_order() -> None:
    events: list = []
    passes = [PassPlan(1, "random", {}, 5), PassPlan(2, "random", {}, 5)]
    c, recorded = _campaign(passes, 8, events)
    cands = _drain(c)
    assert [x.number for x in cands] == list(range(1, 9))
    assert [x.pass_index for x in cands] == [1] * 5 + [2] * 3
    assert [e.index for e in events if isinstance(e, PassStarted)] == [1, 2]
    assert len(recorded) == 8
    assert c.stop_reason is StopReason.BUDGET
    done = [e for e in events if isinstance(e, EvaluationDone)]
    assert done[-1].done == 8 and done[-1].best_score == max(s for _, s in recorded)


def test_next_pass_waits_for_the_outstanding_evaluations() -> None:
    events: list = []
    c, _ = _campaign([PassPlan(1, "random", {}, 2), PassPlan(2, "random", {}, 2)], None, events)
    a, b = c.next_candidate(), c.next_candidate()
    assert a is not None and b is not None
    assert c.next_candidate() is None  # pass 1 handed out, b still in flight
    c.complete(_outcome(a))
    assert c.next_candidate() is None
    c.complete(_outcome(b))
    nxt = c.next_candidate()
    assert nxt is not None and nxt.pass_index == 2


def test_abandoned_evaluations_do_not_use_the_budget_and_are_not_recorded() -> None:
    events: list = []
    c, recorded = _campaign([PassPlan(1, "random", {}, None)], 3, events)
    first = c.next_candidate()
    assert first is not None
    c.abandon(first, "instance gone")
    rest = _drain(c)
    assert len(rest) == 3 and first.weights not in [x.weights for x in rest]
    # the abandoned number goes to the next candidate: the history reads 1..3, no gap
    assert [n for n, _ in recorded] == [x.number for x in rest] == [1, 2, 3]


def test_early_stopping_ends_a_pass() -> None:
    events: list = []
    plans = [PassPlan(1, "random", {}, 50, _Early(3)), PassPlan(2, "random", {}, 2)]
    c, _ = _campaign(plans, None, events, score=lambda cand: 1.0)
    cands = _drain(c)
    # the first sets the best, three more without improvement stop pass 1, then pass 2 runs
    assert [x.pass_index for x in cands] == [1, 1, 1, 1, 2, 2]


def test_resume_counts_the_journal_and_never_repeats_weights() -> None:
    events: list = []
    plans = [PassPlan(1, "random", {}, 4), PassPlan(2, "random", {}, 4)]
    first, _ = _campaign(plans, 6, [])
    done = []
    for _ in range(5):
        cand = first.next_candidate()
        assert cand is not None
        first.complete(_outcome(cand))
        done.append(cand)
    history = [_scored(x.number, x.pass_index, x.weights, _score(x)) for x in done]
    resumed, _recorded = _campaign(plans, 6, events, history=history)
    rest = _drain(resumed)
    assert [x.number for x in rest] == [6]
    assert rest[0].pass_index == 2
    seen = {x.weights.key() for x in done}
    assert rest[0].weights.key() not in seen
    assert resumed.best is not None and resumed.best.score >= max(h.score for h in history)


def test_max_time_stops_handing_out() -> None:
    now = [0.0]
    c, _ = _campaign([PassPlan(1, "random", {}, None)], None, [], clock=lambda: now[0], max_time=10)
    assert c.next_candidate() is not None
    now[0] = 11.0
    assert c.next_candidate() is None
    assert c.stop_reason is StopReason.TIME


def test_a_failure_after_the_budget_was_handed_out_frees_its_place() -> None:
    c, recorded = _campaign([PassPlan(1, "random", {}, None)], 3, [])
    cands = [c.next_candidate() for _ in range(3)]
    assert all(x is not None for x in cands)
    assert c.next_candidate() is None  # all 3 handed out
    c.abandon(cands[0], "lost merge, out of retries")  # type: ignore[arg-type]
    replacement = c.next_candidate()
    assert replacement is not None and replacement.number == 1  # the freed number
    assert replacement.weights != cands[0].weights  # type: ignore[union-attr]
    for x in (cands[1], cands[2], replacement):
        c.complete(_outcome(x))  # type: ignore[arg-type]
    assert c.next_candidate() is None
    assert sorted(n for n, _ in recorded) == [1, 2, 3]


def test_resume_fills_the_gap_a_kill_left_first() -> None:
    """#3 was in flight at a kill: the resumed run hands out 3 before 6."""
    plans = [PassPlan(1, "random", {}, None)]
    first, _ = _campaign(plans, None, [])
    done = [first.next_candidate() for _ in range(5)]
    history = [_scored(x.number, 1, x.weights, _score(x)) for x in done if x and x.number != 3]
    resumed, recorded = _campaign(plans, 6, [], history=history)
    rest = _drain(resumed)
    assert [x.number for x in rest] == [3, 6]
    assert sorted([h.number for h in history] + [n for n, _ in recorded]) == list(range(1, 7))


def test_the_stop_reason_says_early_stopping_when_the_last_pass_stopped_early() -> None:
    plans = [PassPlan(1, "random", {}, 50, _Early(3))]
    c, recorded = _campaign(plans, 60, [], score=lambda cand: 1.0)
    _drain(c)
    assert len(recorded) == 4
    assert c.stop_reason is StopReason.EARLY_STOPPED
    assert [str(e) for e in c.pass_ends] == ["pass 1: no improvement in 3 evaluations"]
    budget, _ = _campaign([PassPlan(1, "random", {}, 5)], None, [])
    _drain(budget)
    assert budget.stop_reason is StopReason.BUDGET


# --- lockstep: a resumed one-instance run proposes exactly what an uninterrupted one does ---
def _lockstep(plans, lag: int, history=(), seed: int = 1) -> tuple[Campaign, list]:
    space = _space()
    recorded: list[Evaluation] = []

    def tally(o: Outcome):
        s = _score(o.candidate)
        return s, {"p": s}

    c = Campaign(
        passes=plans,
        total_budget=None,
        tally=tally,
        make_optimizer=lambda plan: create_optimizer(
            plan.optimizer, plan.settings, space, seed + plan.index
        ),
        record=lambda e, _o: recorded.append(e),
        emit=lambda e: None,
        history=list(history),
        lockstep=lag,
    )
    return c, recorded


def _run_one_instance(c: Campaign, lag: int, order_seed: int, stop_after: int | None = None):
    """One instance with prefetch: up to ``lag`` candidates asked ahead; whether the next ask
    or the next result comes first varies (seeded), as timing does in a real run."""
    import random

    rng = random.Random(order_seed)
    in_flight: list[Candidate] = []
    completed = 0
    while stop_after is None or completed < stop_after:
        ask_first = len(in_flight) <= lag and (not in_flight or rng.random() < 0.5)
        cand = c.next_candidate() if ask_first else None
        if cand is not None:
            in_flight.append(cand)
            continue
        if not in_flight:
            if c.next_candidate() is None:
                break
            continue
        c.complete(_outcome(in_flight.pop(0)))
        completed += 1


LOCKSTEP = [
    ("tpe", {}),
    ("random", {}),
    ("cmaes", {"popsize": 4}),
    ("HillClimbing", {}),
    ("ParticleSwarm", {"population": 4, "initialize": {"random": 4}}),
    (
        "portfolio",
        {"members": ["tpe", {"optimizer": "Bayesian", "settings": {"n_candidates": 300}}]},
    ),
]


@pytest.mark.parametrize(("name", "settings"), LOCKSTEP)
@pytest.mark.parametrize("lag", [0, 1])
def test_lockstep_resume_repeats_the_uninterrupted_run(name, settings, lag) -> None:
    plans = [PassPlan(1, "random", {}, 6), PassPlan(2, name, settings, 16, _Early(40))]
    full, full_rec = _lockstep(plans, lag)
    _run_one_instance(full, lag, order_seed=0)
    expected = [(s.number, s.weights, s.score) for s in full_rec]
    assert [n for n, _, _ in expected] == list(range(1, 23))
    # the same run with another timing: the same candidates
    other, other_rec = _lockstep(plans, lag)
    _run_one_instance(other, lag, order_seed=99)
    assert [(s.number, s.weights) for s in other_rec] == [(n, w) for n, w, _ in expected]
    for k in (4, 6, 7, 13):  # killed after k results (in pass 1, at its end, in pass 2)
        head, _ = _lockstep(plans, lag)
        got: list[Evaluation] = []
        _run_one_instance(head, lag, order_seed=k, stop_after=k)
        got = list(head.history)
        resumed, rest = _lockstep(plans, lag, history=got)
        _run_one_instance(resumed, lag, order_seed=k + 1)
        combined = sorted([*got, *rest], key=lambda s: s.number)
        assert [(s.number, s.weights, s.score) for s in combined] == expected, f"killed at {k}"
        assert resumed.exact_resume in (None, True)
