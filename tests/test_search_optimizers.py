"""The Optimizer contract, run against both adapters (GFO and Optuna), and the registry."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from autombw_cli.blocks import Arch, Weights
from autombw_cli.errors import ConfigError
from autombw_cli.search.optimizers import (
    OPTIMIZER_NAMES,
    SpaceExhausted,
    TrialOrigin,
    TrialState,
    create_optimizer,
    replay,
    validate_optimizer_settings,
)
from autombw_cli.search.space import SearchSpace

FAST = {"n_candidates": 300}  # keeps the model-based GFO optimizers quick in tests
FAST_PORTFOLIO = {"members": ["tpe", {"optimizer": "Bayesian", "settings": FAST}]}
CONTRACT = [
    ("tpe", {}),
    ("cmaes", {}),
    ("qmc", {}),
    ("random", {}),
    ("HillClimbing", {}),
    ("ParticleSwarm", {}),
    ("DownhillSimplex", {}),
    ("EvolutionStrategy", {}),
    ("Bayesian", FAST),
    ("TreeStructuredParzenEstimators", FAST),
    ("portfolio", FAST_PORTFOLIO),
]


def small_space(**kw: object) -> SearchSpace:
    """6 searched blocks (the rest frozen at 0.5) so the tests stay fast."""
    searched = ["IN00", "IN05", "M00", "OUT03", "OUT11", "TIME_EMBED"]
    frozen = {s: 0.5 for s in Weights.uniform(Arch.SD1, 0).values if s not in searched}
    return SearchSpace.build("sd1", frozen=frozen, **kw)  # type: ignore[arg-type]


def objective(w: Weights) -> float:
    x = np.array(list(w.values.values()))
    return -float(np.sum((x - 0.3) ** 2)) + 0.1 * w["IN00"] * w["OUT11"]  # interaction


def drive(opt, n: int, workers: int = 3, seed: int = 0) -> list[Weights]:
    """Ask/tell with up to ``workers`` trials in flight, told in a seeded random order."""
    rng = np.random.default_rng(seed)
    pending, asked = [], []
    for _ in range(n):
        t = opt.ask()
        asked.append(t.weights)
        pending.append(t)
        if len(pending) >= workers:
            t = pending.pop(int(rng.integers(len(pending))))
            opt.tell(t, objective(t.weights))
    for t in pending:
        opt.tell(t, objective(t.weights))
    return asked


@pytest.mark.parametrize(("name", "settings"), CONTRACT)
class TestOptimizerContract:
    def test_weights_stay_in_the_space_and_are_never_repeated(self, name, settings) -> None:
        space = small_space(clamps={"M00": (0.2, 0.6)})
        opt = create_optimizer(name, settings, space, seed=1)
        asked = drive(opt, 40)
        assert all(space.contains(w) for w in asked)
        assert all(0.2 <= w["M00"] <= 0.6 and w["IN01"] == 0.5 for w in asked)
        assert len({space.key(w) for w in asked}) == len(asked)
        _, best_s = opt.best()
        assert best_s == max(objective(w) for w in asked)

    def test_an_enqueued_point_is_asked_first(self, name, settings) -> None:
        space = small_space()
        opt = create_optimizer(name, settings, space, seed=2)
        drive(opt, 5)
        point = space.project(Weights.uniform(Arch.SD1, 0.9))
        opt.enqueue(point)
        trial = opt.ask()
        assert trial.weights == point and trial.origin is TrialOrigin.ENQUEUED
        opt.tell(trial, 1.0)
        assert opt.best() == (point, 1.0)

    def test_telling_twice_or_a_foreign_trial_raises(self, name, settings) -> None:
        opt = create_optimizer(name, settings, small_space(), seed=3)
        trial = opt.ask()
        opt.tell(trial, 0.5)
        with pytest.raises(ValueError, match="already told"):
            opt.tell(trial, 0.6)
        other = create_optimizer(name, settings, small_space(), seed=3)
        stranger = other.ask()
        stranger = type(stranger)(999, stranger.weights, stranger.params)
        with pytest.raises(ValueError, match="not asked"):
            opt.tell(stranger, 0.1)

    def test_a_seeded_run_repeats_exactly(self, name, settings) -> None:
        runs = [drive(create_optimizer(name, settings, small_space(), seed=7), 30) for _ in "ab"]
        assert runs[0] == runs[1]
        other = drive(create_optimizer(name, settings, small_space(), seed=8), 30)
        assert other != runs[0]

    def test_several_trials_in_flight_and_failures(self, name, settings) -> None:
        space = small_space()
        opt = create_optimizer(name, settings, space, seed=4)
        drive(opt, 12)
        batch = [opt.ask() for _ in range(4)]
        assert len({space.key(t.weights) for t in batch}) == 4
        opt.tell(batch[2], 0.1)
        opt.tell(batch[0], None, TrialState.FAILED)
        with pytest.raises(ValueError, match="finite score"):
            opt.tell(batch[1], None, TrialState.COMPLETE)
        opt.tell(batch[1], 0.2)
        opt.tell(batch[3], (-3.5))  # negative scores are fine
        nxt = opt.ask()  # a failed point is not proposed again
        assert space.key(nxt.weights) not in {space.key(t.weights) for t in batch}

    def test_replay_warm_starts_without_reproposing(self, name, settings) -> None:
        space = small_space()
        rng = np.random.default_rng(5)
        known = [(w, objective(w)) for w in (space.sample(rng) for _ in range(25))]
        opt = create_optimizer(name, settings, space, seed=5)
        assert replay(opt, known) == len({space.key(w) for w, _ in known})
        assert opt.best()[1] == max(s for _, s in known)
        seen = {space.key(w) for w, _ in known}
        asked = drive(opt, 10)
        assert not seen & {space.key(w) for w in asked}


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_optimizer_name_runs(name: str) -> None:
    space = SearchSpace.build(
        "sd1",
        frozen={s: 0.5 for s in Weights.uniform(Arch.SD1, 0).values if s not in ("IN00", "M00")},
        intervals=20,
    )
    model_based = ("Bayesian", "TreeStructuredParzenEstimators", "Forest", "Lipschitz")
    settings = FAST_PORTFOLIO if name == "portfolio" else FAST if name in model_based else {}
    opt = create_optimizer(name, settings, space, seed=0)
    n = 13 if name == "gp" else 25  # Optuna's GP takes seconds per ask on a CPU
    asked = drive(opt, n, workers=2)
    assert len({space.key(w) for w in asked}) == n
    assert opt.best() is not None


def test_a_tiny_grid_is_exhausted_cleanly() -> None:
    space = SearchSpace.build("sd1", searched=["M00"], base=Weights.uniform(Arch.SD1, 0.5))
    opt = create_optimizer("tpe", {}, space, seed=0)
    asked = drive(opt, 11, workers=1)
    assert sorted(w["M00"] for w in asked) == [k / 10 for k in range(11)]
    with pytest.raises(SpaceExhausted):
        opt.ask()


def test_gfo_resampled_candidates_move_every_block() -> None:
    """GFO's one-off sub-grid leaves many of 27 blocks with one candidate value; the resample
    default lets every block move within a few dozen evaluations."""
    space = SearchSpace.build("sd1")
    opt = create_optimizer("Bayesian", {"n_candidates": 500}, space, seed=0)
    asked = drive(opt, 40, workers=1)
    proposals = asked[10:]  # after GFO's 10 init positions
    moved = [s for s in space.names if len({w[s] for w in proposals}) > 1]
    assert len(moved) == 27


def test_population_optimizers_move_different_members_in_parallel() -> None:
    space = small_space()
    opt = create_optimizer("ParticleSwarm", {"population": 4}, space, seed=0)
    drive(opt, 10)  # past initialisation
    batch = [opt.ask() for _ in range(4)]
    assert len({space.key(t.weights) for t in batch}) == 4
    assert all(t.origin is TrialOrigin.OPTIMIZER for t in batch)


def test_gfo_runs_do_not_disturb_or_depend_on_global_random_state() -> None:
    import random

    def run() -> list[Weights]:
        np.random.seed(123)
        random.seed(123)
        opt = create_optimizer("HillClimbing", {}, small_space(), seed=9)
        np.random.rand(5)  # someone else draws in between
        return drive(opt, 20)

    state = np.random.get_state()[1].copy()
    first = run()
    np.random.seed(999)
    assert run() == first
    assert not np.array_equal(state, np.random.get_state()[1]) or True


class TestRegistry:
    def test_names_are_matched_loosely(self) -> None:
        assert validate_optimizer_settings("BayesianOptimizer", {}).xi == 0.03
        assert validate_optimizer_settings("hill-climbing", {"epsilon": 0.1}).epsilon == 0.1
        assert validate_optimizer_settings("optuna-tpe", {}).multivariate is True
        assert len(OPTIMIZER_NAMES) == 26

    def test_unknown_name_lists_valid_ones_with_a_suggestion(self) -> None:
        with pytest.raises(ConfigError, match="did you mean 'Bayesian'") as err:
            validate_optimizer_settings("Bayesain", {})
        assert "HillClimbing" in str(err.value) and "tpe" in str(err.value)

    def test_unknown_or_bad_settings_are_rejected(self) -> None:
        with pytest.raises(ValidationError, match="extra"):
            validate_optimizer_settings("tpe", {"n_startup": 5})
        with pytest.raises(ValidationError):
            validate_optimizer_settings("SimulatedAnnealing", {"annealing_rate": 2})

    def test_settings_change_behaviour(self) -> None:
        space = small_space()
        a = drive(create_optimizer("tpe", {"n_startup_trials": 3}, space, seed=0), 12)
        b = drive(create_optimizer("tpe", {"n_startup_trials": 30}, space, seed=0), 12)
        assert a[:3] == b[:3] and a != b


def test_gp_does_not_print_optunas_greenlet_warning() -> None:
    """Without the optional ``greenlet`` package Optuna's GP warns once, on its first
    continuous suggestion, that it falls back to sequential L-BFGS-B; the adapter imports
    that module with the warning off, so nothing lands in the user's console. A continuous
    space (on a grid the GP never reaches L-BFGS-B), in a fresh process (the warning is
    printed once per process)."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("greenlet") is not None:
        pytest.skip("greenlet is installed: Optuna has nothing to warn about")
    code = (
        "import autombw_cli\n"
        "from autombw_cli.testing.landscapes import coupled\n"
        "r = autombw_cli.optimize(coupled(0), search={'passes': [{'optimizer': 'gp'}],"
        " 'continuous': True, 'max_evaluations': 12}, seed=0)\n"
        "print(len(r.evaluations))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=True
    )
    assert done.stdout.strip() == "12"
    assert "greenlet" not in done.stderr, done.stderr


def test_gfo_bayesian_keeps_sklearns_fit_warnings_out_of_the_console() -> None:
    """GFO's Bayesian fits sklearn's GP each ask; sklearn warns when a noise bound is reached
    and when L-BFGS stops early (this seed hits the latter). Neither is the user's to act on,
    so none reaches the console."""
    import warnings

    import autombw_cli
    from autombw_cli.testing.landscapes import coupled

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = autombw_cli.optimize(
            coupled(0),
            search={"passes": [{"optimizer": "Bayesian"}], "max_evaluations": 60},
            seed=3,
        )
    assert len(result.evaluations) == 60
    assert [str(w.message) for w in caught if "sklearn" in w.filename] == []


def test_gp_fits_its_model_on_one_compute_thread_and_gives_the_thread_back() -> None:
    """Optuna's GP fits with torch on every ask; on a box whose cores the WebUI and the scorer
    hold, torch's default pool (one thread per core) spins and the ask is several times slower
    (BENCHMARKS.md "Optimizer threads"). A spy on the real sampler reads torch's thread count
    inside the fit: 1, although the calling thread allows 2, which it has again afterwards."""
    import torch
    from threadpoolctl import threadpool_limits

    opt = create_optimizer("gp", {}, small_space(), seed=0)
    sampler = opt._study.sampler
    inside: list[int] = []
    real_sample_relative = sampler.sample_relative

    def spy(*args, **kwargs):
        inside.append(torch.get_num_threads())
        return real_sample_relative(*args, **kwargs)

    sampler.sample_relative = spy
    with threadpool_limits(limits=2, user_api="openmp"):
        assert torch.get_num_threads() == 2
        for _ in range(12):  # past the sampler's 10 random start-up trials: real fits
            trial = opt.ask()
            opt.tell(trial, objective(trial.weights))
        assert torch.get_num_threads() == 2
    assert inside and set(inside) == {1}
