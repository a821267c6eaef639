"""The campaign (passes, budget, early stopping, resume, failures) with real optimizers.

No WebUI here: outcomes are built directly and scored by a known function of the weights.
"""

from __future__ import annotations

import pytest

pytest.importorskip("autombw_cli.search.optimizers")

from autombw_cli.blocks import Arch
from autombw_cli.search.campaign import Campaign, PassPlan, Scored
from autombw_cli.search.events import EvaluationDone, PassStarted, StopReason
from autombw_cli.search.optimizers import create_optimizer
from autombw_cli.search.scheduler import Candidate, Outcome
from autombw_cli.search.space import SearchSpace


def _space() -> SearchSpace:
    return SearchSpace.build(Arch.SD1, intervals=10)


def _outcome(c: Candidate) -> Outcome:
    return Outcome(c, "test", "m1", (), (), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1)


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
            record=lambda o, s, pp: recorded.append((o.candidate.number, s)),
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
    assert len(rest) == 3 and first.number not in [x.number for x in rest]
    assert [n for n, _ in recorded] == [x.number for x in rest]
    assert first.number not in [n for n, _ in recorded]


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
    history = [Scored(x.number, x.pass_index, x.weights, _score(x)) for x in done]
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
    assert replacement is not None and replacement.number == 4
    for x in (cands[1], cands[2], replacement):
        c.complete(_outcome(x))  # type: ignore[arg-type]
    assert c.next_candidate() is None
    assert sorted(n for n, _ in recorded) == [2, 3, 4]
