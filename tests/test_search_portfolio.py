"""The portfolio optimizer: members take turns, every member learns every result, and a
proposal of a point another member has in flight waits for that point's result."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from autombw_cli.search.optimizers import (
    TrialOrigin,
    TrialState,
    create_optimizer,
    replay,
    validate_optimizer_settings,
)
from test_search_optimizers import FAST_PORTFOLIO, drive, objective, small_space

TWO_RANDOMS = {"members": ["random", "random"]}  # same seed: both propose the same points


def test_members_take_turns_and_each_learns_every_result() -> None:
    space = small_space()
    opt = create_optimizer("portfolio", FAST_PORTFOLIO, space, seed=0)
    asked = drive(opt, 24, workers=1)
    assert len({space.key(w) for w in asked}) == 24
    tpe, bayesian = opt.members
    # each proposed every other point and was told the other's as enqueued points
    assert tpe.n_complete == bayesian.n_complete == opt.n_complete == 24
    assert tpe.n_pending == bayesian.n_pending == 0
    assert opt.best() == max(tpe.best(), bayesian.best(), key=lambda b: b[1])


def test_a_proposal_of_a_point_in_flight_waits_for_its_result() -> None:
    space = small_space()
    opt = create_optimizer("portfolio", TWO_RANDOMS, space, seed=3)
    first, second = opt.members
    a = opt.ask()  # the first member's point
    b = opt.ask()  # the second proposes the same point, in flight: it waits; the first goes on
    assert space.key(a.weights) != space.key(b.weights)
    assert second.in_flight(a.weights) and second.n_pending == 1
    opt.tell(a, 0.25)
    assert second.n_pending == 0 and second.best() == (a.weights, 0.25)
    opt.tell(b, 0.5)
    assert first.n_complete == second.n_complete == 2


def test_a_failure_reaches_the_waiting_member_and_no_other() -> None:
    space = small_space()
    opt = create_optimizer("portfolio", TWO_RANDOMS, space, seed=3)
    first, second = opt.members
    a = opt.ask()
    b = opt.ask()
    opt.tell(a, None, TrialState.FAILED)
    assert first.n_failed == second.n_failed == 1  # the second waited on it
    opt.tell(b, 0.5)
    assert first.n_complete == second.n_complete == 1


def _count_proposals(member) -> list[int]:
    """A spy on a real member: how many proposals its backend made."""
    count = [0]
    backend_ask = member._backend_ask

    def counted():
        count[0] += 1
        return backend_ask()

    member._backend_ask = counted
    return count


def test_a_member_that_repeats_a_known_point_gives_its_turn_to_the_next() -> None:
    # The second member is the same random sampler as the first, so each of its proposals is a
    # point the first already proposed and it was told: it is asked once per turn (not again
    # and again, as a converged gp would be, each ask a model fit) and the first one proposes.
    space = small_space()
    opt = create_optimizer("portfolio", TWO_RANDOMS, space, seed=3)
    first, second = opt.members
    by_first, by_second = _count_proposals(first), _count_proposals(second)
    asked = drive(opt, 10, workers=1)
    assert len({space.key(w) for w in asked}) == 10
    assert by_second == [5]  # its five turns, one proposal each, every one a repeat
    assert by_first == [10]  # its own five turns and the five it was given
    assert all(m.n_complete == 10 and m.n_pending == 0 for m in opt.members)


def test_when_every_member_repeats_itself_the_point_is_random_and_unseen() -> None:
    space = small_space()
    # the members' first three proposals, already evaluated
    known = [(w, objective(w)) for w in drive(create_optimizer("random", {}, space, 3), 3)]
    opt = create_optimizer("portfolio", TWO_RANDOMS, space, seed=3)
    assert replay(opt, known) == 3
    trial = opt.ask()
    assert trial.origin is TrialOrigin.RANDOM
    assert not any(space.key(trial.weights) == space.key(w) for w, _ in known)
    opt.tell(trial, objective(trial.weights))
    assert all(m.n_complete == 4 and m.n_pending == 0 for m in opt.members)


def test_many_in_flight_leave_no_member_trial_untold() -> None:
    space = small_space()
    opt = create_optimizer("portfolio", TWO_RANDOMS, space, seed=1)
    asked = drive(opt, 40, workers=4)
    assert len({space.key(w) for w in asked}) == 40
    assert all(m.n_pending == 0 for m in opt.members)
    assert all(m.n_complete == 40 for m in opt.members)


def test_replay_and_enqueued_points_reach_every_member() -> None:
    space = small_space()
    known = [(w, objective(w)) for w in drive(create_optimizer("random", {}, space, 9), 8)]
    opt = create_optimizer("portfolio", TWO_RANDOMS, space, seed=0)
    assert replay(opt, known) == 8
    assert all(m.n_complete == 8 for m in opt.members)
    start = next(w for v in (0.0, 1.0, 0.5) if not opt.seen(w := known[0][0].replace({"IN00": v})))
    opt.enqueue(start)
    trial = opt.ask()
    assert trial.origin is TrialOrigin.ENQUEUED and trial.weights == start
    opt.tell(trial, 1.0)
    assert all(m.best() == (start, 1.0) for m in opt.members)


def test_the_same_seed_repeats_the_same_search() -> None:
    space = small_space()
    settings = {"members": ["tpe", "cmaes"]}
    runs = [drive(create_optimizer("portfolio", settings, space, seed=4), 20) for _ in range(2)]
    assert runs[0] == runs[1]


class TestSettings:
    def test_defaults_are_gp_and_bayesian(self) -> None:
        members = validate_optimizer_settings("portfolio", {}).members
        assert [m.optimizer for m in members] == ["gp", "Bayesian"]
        assert members[1].settings["n_candidates"] == 1000

    def test_member_names_are_matched_loosely_and_settings_filled(self) -> None:
        members = validate_optimizer_settings(
            "portfolio", {"members": ["optuna-tpe", {"optimizer": "hill-climbing"}]}
        ).members
        assert [m.optimizer for m in members] == ["tpe", "HillClimbing"]
        assert members[1].settings["epsilon"] == 0.03

    def test_bad_members_are_rejected(self) -> None:
        with pytest.raises(ValidationError, match="cannot be a member"):
            validate_optimizer_settings("portfolio", {"members": ["portfolio", "tpe"]})
        with pytest.raises(ValidationError, match="at least two members"):
            validate_optimizer_settings("portfolio", {"members": ["tpe"]})
        with pytest.raises(ValidationError, match="foo"):
            validate_optimizer_settings(
                "portfolio", {"members": ["tpe", {"optimizer": "cmaes", "settings": {"foo": 1}}]}
            )
        with pytest.raises(ValidationError, match="did you mean 'tpe'"):
            validate_optimizer_settings("portfolio", {"members": ["tpex", "cmaes"]})
