"""A portfolio: several optimizers take turns proposing, and every one learns every result.

Ask ``i`` goes to member ``i mod n``; when a result comes back, the member that proposed it is
told, and every other member has it replayed (`replay`: enqueued, asked and told).
So each member's model sees the whole search, while the proposals alternate between, e.g., a
Gaussian process that trusts its smooth fit (Optuna's ``gp``) and one that keeps sampling near
the best (GFO's ``Bayesian``): on a landscape where one of them stalls, the other one's points
still come (BENCHMARKS.md "Optimizer quality").

A member that proposes a point it already knows (a model that has settled on its best guess,
as a converged ``gp`` does) is told that point's score and gives its turn to the next member,
instead of being asked again and again: each ask of ``gp`` is a full model fit, seconds late in
a search, and ``AdapterBase.ask`` would ask up to 25 times. Only when every member repeats
itself does the portfolio hand out a random unseen point.

With several evaluations in flight one member may propose a point another one has in flight.
That proposal waits: it is told the score of the running evaluation when it comes back (a
failure if it fails), as a repeat of a scored point is told its score.
"""

from __future__ import annotations

from collections.abc import Sequence

from autombw_cli.blocks import Weights
from autombw_cli.search.evaluation import TrialState
from autombw_cli.search.optimizers.base import AdapterBase, Optimizer, Trial, replay
from autombw_cli.search.space import SearchSpace

# a token: the weights and the member trials that stand for them, one for a member's proposal,
# one per member that had not seen it for an enqueued point
_Token = tuple[Weights, list[tuple[Optimizer, Trial]]]

MEMBER_PROPOSALS = 1  # a member's proposals per turn: a repeat gives the turn to the next one


class PortfolioOptimizer(AdapterBase):
    """Members take turns at `ask`; every result is told to every member."""

    name = "portfolio"

    def __init__(self, members: Sequence[Optimizer], space: SearchSpace, seed: int) -> None:
        super().__init__(space, seed)
        if len(members) < 2:
            raise ValueError("a portfolio needs at least two members")
        self.members = tuple(members)
        self._turn = 0
        # space key -> member trials waiting for that in-flight point's result
        self._waiting: dict[bytes, list[tuple[Optimizer, Trial]]] = {}

    def _backend_ask(self) -> tuple[dict[str, float], _Token] | None:
        first = self._turn
        self._turn += 1
        for i in range(len(self.members)):
            member = self.members[(first + i) % len(self.members)]
            trial = member.propose(MEMBER_PROPOSALS)
            if trial is not None:
                return self.space.to_params(trial.weights), (trial.weights, [(member, trial)])
        return None  # every member repeated itself: `ask` hands out a random unseen point

    def _backend_ask_fixed(self, weights: Weights) -> _Token:
        trials = []
        for member in self.members:
            if not member.seen(weights):
                member.enqueue(weights)
                trials.append((member, member.ask()))
        return weights, trials

    def _backend_tell(self, token: _Token, score: float | None) -> None:
        weights, trials = token
        state = TrialState.FAILED if score is None else TrialState.COMPLETE
        trials = trials + self._waiting.pop(self.space.key(weights), [])
        for member, trial in trials:
            member.tell(trial, score, state)
        if score is None:
            return  # a failure teaches the other members nothing about the landscape
        for member in self.members:
            replay(member, [(weights, score)])  # skips a member that has seen it

    def _backend_duplicate(self, token: _Token, score: float | None) -> None:
        weights, trials = token
        if score is None and self.in_flight(weights):
            self._waiting.setdefault(self.space.key(weights), []).extend(trials)
            return
        state = TrialState.FAILED if score is None else TrialState.COMPLETE
        for member, trial in trials:
            member.tell(trial, score, state)
