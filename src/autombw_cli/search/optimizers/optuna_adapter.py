"""Optuna samplers (TPE, GP, CMA-ES, QMC, random) behind the ask/tell seam.

Optuna's study is asynchronous by design: every `ask` creates a RUNNING trial, any number may be
outstanding and they are told in any order. TPE runs with ``constant_liar`` (running trials count
as bad results while in flight) so N free workers get N different candidates. On a grid each
parameter is an integer index into its grid values, so enqueued points round-trip exactly.
The study lives in memory: the journal (history.csv) is the persistent record and a resumed run
replays it (`replay`). The GP sampler asks on one compute thread (`one_compute_thread`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from autombw_cli.blocks import Weights
from autombw_cli.search.optimizers.base import AdapterBase
from autombw_cli.search.optimizers.compute_threads import one_compute_thread
from autombw_cli.search.space import SearchSpace

log = logging.getLogger(__name__)


class OptunaOptimizer(AdapterBase):
    """An Optuna sampler driven through ``study.ask``/``study.tell``."""

    def __init__(self, name: str, sampler: Any, space: SearchSpace, seed: int) -> None:
        super().__init__(space, seed)
        import optuna  # lazily: only the Optuna optimizers pay for importing it

        self.name = name
        self._optuna = optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # the GP sampler fits its model with torch on every ask: on one thread (see the module)
        self._ask_threads = contextlib.nullcontext
        if isinstance(sampler, optuna.samplers.GPSampler):
            _import_gp_quietly(optuna)
            import torch  # noqa: F401  (loaded now, so the thread limit sees its OpenMP pool)

            self._ask_threads = one_compute_thread
        self._study = optuna.create_study(direction="maximize", sampler=sampler)
        self._distributions: dict[str, Any] = {}
        for p in space.params:
            if space.is_grid:
                grid = space.grid(p)
                self._distributions[p.name] = optuna.distributions.IntDistribution(
                    0, int(grid.size) - 1
                )
            else:
                self._distributions[p.name] = optuna.distributions.FloatDistribution(p.low, p.high)

    def _params_of(self, trial: Any) -> dict[str, float]:
        """The trial's weights-space params (the study sampled them in ``_ask``)."""
        params: dict[str, float] = {}
        for p in self.space.params:
            value = trial.params[p.name]
            if self.space.is_grid:
                params[p.name] = float(self.space.grid(p)[int(value)])
            else:
                params[p.name] = float(value)
        return params

    def _ask(self) -> Any:
        # ``fixed_distributions`` samples every parameter in order, exactly as suggest_* would,
        # but every stored trial shares our distribution objects instead of getting its own
        # (suggest_* builds a new one per parameter per trial: ~4 KB per evaluation kept in
        # the in-memory study; BENCHMARKS.md "Soak")
        with self._ask_threads():
            return self._study.ask(fixed_distributions=self._distributions)

    def _backend_ask(self) -> tuple[dict[str, float], Any] | None:
        trial = self._ask()
        return self._params_of(trial), trial

    def _backend_ask_fixed(self, weights: Weights) -> Any:
        params = self.space.to_params(weights)
        fixed: dict[str, Any] = {}
        for p in self.space.params:
            if self.space.is_grid:
                fixed[p.name] = int(list(self.space.grid(p)).index(params[p.name]))
            else:
                fixed[p.name] = params[p.name]
        self._study.enqueue_trial(fixed, skip_if_exists=False)
        return self._ask()

    def _backend_tell(self, token: Any, score: float | None) -> None:
        states = self._optuna.trial.TrialState
        if score is None:
            self._study.tell(token, state=states.FAIL)
        else:
            self._study.tell(token, score)

    def _backend_duplicate(self, token: Any, score: float | None) -> None:
        self._backend_tell(token, score)


def _import_gp_quietly(optuna: Any) -> None:
    """Import the GP sampler's L-BFGS-B module now, with Optuna's warnings off: without the
    optional ``greenlet`` package it warns, once, on a run's first GP suggestion in a
    continuous space (``search.continuous``; on a grid the GP searches its acquisition
    discretely and never imports it), that it falls back to sequential L-BFGS-B. That costs
    some speed, not results, and a line of Optuna's log in the middle of the progress
    display helps nobody."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        import optuna._gp.batched_lbfgsb  # a private module: it may move
    except ImportError:
        pass
    finally:
        optuna.logging.set_verbosity(verbosity)
