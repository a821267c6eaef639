"""Optimizer names → adapters, and one pydantic settings model per algorithm (extra="forbid").

Names are matched case-insensitively, ignoring ``-``/``_``/spaces and a trailing ``Optimizer``
(``BayesianOptimizer``, ``bayesian`` and ``Bayesian`` are the same). The gradient-free-optimizers
names are the ones auto-MBW-rt users know (DOMAIN.md §4); the Optuna samplers are ``tpe``,
``gp``, ``cmaes``, ``qmc`` and ``random``; ``portfolio`` lets several of them take turns.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autombw_cli.errors import ConfigError
from autombw_cli.search.optimizers.base import Optimizer
from autombw_cli.search.space import SearchSpace

# a pass that names no optimizer (the default search, two passes, is config/passes.py's)
DEFAULT_OPTIMIZER = "cmaes"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- gradient-free-optimizers ---------------------------------------------------------------
Distribution = Literal["normal", "laplace", "logistic", "gumbel"]


class GfoSettings(Settings):
    initialize: dict[Literal["grid", "random", "vertices"], int] = Field(
        default_factory=lambda: {"grid": 4, "random": 2, "vertices": 4},
        description="GFO init positions handed out first (skipped when warm-started)",
    )
    rand_rest_p: float = Field(0.0, ge=0, le=1, description="Chance of a random jump")


class LocalSettings(GfoSettings):
    epsilon: float = Field(0.03, gt=0, description="Step size relative to each range")
    distribution: Distribution = "normal"
    n_neighbours: int = Field(3, ge=1)


class HillClimbingSettings(LocalSettings):
    pass


class StochasticHillClimbingSettings(LocalSettings):
    p_accept: float = Field(0.5, ge=0, le=1)


class RepulsingHillClimbingSettings(LocalSettings):
    repulsion_factor: float = Field(5.0, gt=0)


class SimulatedAnnealingSettings(LocalSettings):
    annealing_rate: float = Field(0.97, gt=0, le=1)
    start_temp: float = Field(1.0, gt=0)


class RandomRestartHillClimbingSettings(LocalSettings):
    n_iter_restart: int = Field(10, ge=1)


class RandomAnnealingSettings(LocalSettings):
    annealing_rate: float = Field(0.98, gt=0, le=1)
    start_temp: float = Field(10.0, gt=0)


class PowellsMethodSettings(LocalSettings):
    iters_p_dim: int = Field(10, ge=1)
    line_search: Literal["grid", "golden", "hill_climb"] = "grid"
    convergence_threshold: float = Field(1e-8, ge=0)


class DownhillSimplexSettings(GfoSettings):
    alpha: float = 1.0
    gamma: float = 2.0
    beta: float = 0.5
    sigma: float = 0.5


class RandomSearchSettings(GfoSettings):
    pass


class GridSearchSettings(GfoSettings):
    step_size: int = Field(1, ge=1)
    direction: Literal["diagonal", "orthogonal"] = "diagonal"
    resolution: int = Field(100, ge=1)


class PatternSearchSettings(GfoSettings):
    n_positions: int = Field(4, ge=1)
    pattern_size: float = Field(0.25, gt=0)
    reduction: float = Field(0.9, gt=0, le=1)


class ParallelTemperingSettings(GfoSettings):
    population: int = Field(5, ge=1)
    n_iter_swap: int = Field(5, ge=1)


class ParticleSwarmSettings(GfoSettings):
    population: int = Field(10, ge=1)
    inertia: float = 0.5
    cognitive_weight: float = 0.5
    social_weight: float = 0.5
    temp_weight: float = 0.2


class SpiralOptimizationSettings(GfoSettings):
    population: int = Field(10, ge=1)
    decay_rate: float = Field(0.99, gt=0)


class EvolutionStrategySettings(GfoSettings):
    population: int = Field(10, ge=1)
    offspring: int = Field(20, ge=1)
    replace_parents: bool = False
    mutation_rate: float = Field(0.7, ge=0, le=1)
    crossover_rate: float = Field(0.3, ge=0, le=1)


class SmboSettings(GfoSettings):
    candidates: Literal["resample", "subgrid"] = Field(
        "resample",
        description="resample: fresh acquisition candidates every ask (random + mutations of the "
        "best); subgrid: GFO's one-off random sub-grid (many blocks never move on 27 blocks)",
    )
    n_candidates: int = Field(4000, ge=10, description="Candidates per ask (resample)")
    local_fraction: float = Field(0.5, ge=0, le=1, description="Share of mutated-best candidates")
    max_sample_size: int = Field(10_000_000, ge=1, description="GFO sub-grid size (subgrid)")
    sampling: dict[Literal["random"], int] | Literal[False] | None = None
    replacement: bool = True


class LipschitzSettings(SmboSettings):
    pass


class BayesianSettings(SmboSettings):
    xi: float = Field(0.03, ge=0, description="Expected-improvement exploration")


class TreeStructuredParzenEstimatorsSettings(SmboSettings):
    gamma_tpe: float = Field(0.2, gt=0, lt=1)


class ForestSettings(SmboSettings):
    tree_regressor: Literal["extra_tree", "random_forest", "gradient_boost"] = "extra_tree"
    tree_para: dict[str, Any] | None = None
    xi: float = Field(0.03, ge=0)


class DirectAlgorithmSettings(GfoSettings):
    resolution: int = Field(100, ge=1)
    max_sample_size: int = Field(10_000_000, ge=1)
    sampling: dict[Literal["random"], int] | Literal[False] | None = None
    replacement: bool = True


# --- Optuna ---------------------------------------------------------------------------------
class TpeSettings(Settings):
    n_startup_trials: int = Field(10, ge=0, description="Random trials before the model")
    n_ei_candidates: int = Field(24, ge=1)
    multivariate: bool = Field(True, description="Model the blocks jointly (interactions)")
    group: bool = False
    constant_liar: bool = Field(True, description="Count running trials as bad while in flight")


class GpSettings(Settings):
    n_startup_trials: int = Field(10, ge=0)
    deterministic_objective: bool = False


class CmaEsSettings(Settings):
    n_startup_trials: int = Field(1, ge=0)
    sigma0: float | None = Field(None, gt=0)
    popsize: int | None = Field(None, ge=2)
    restart_strategy: Literal["ipop", "bipop"] | None = None
    use_separable_cma: bool = False
    with_margin: bool = Field(True, description="Keep discrete (grid) parameters from freezing")
    lr_adapt: bool = False


class QmcSettings(Settings):
    qmc_type: Literal["sobol", "halton"] = "sobol"
    scramble: bool = True


class RandomSettings(Settings):
    pass


# --- a portfolio of the above ---------------------------------------------------------------
class MemberSettings(Settings):
    """One member of a portfolio: an optimizer name (any but ``portfolio``) and its settings."""

    optimizer: str
    settings: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"optimizer": data}
        if not isinstance(data, dict) or not isinstance(data.get("optimizer"), str):
            return data
        try:
            entry = lookup(data["optimizer"])
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if entry.backend == "portfolio":
            raise ValueError("a portfolio cannot be a member of a portfolio")
        try:
            settings = entry.settings.model_validate(dict(data.get("settings") or {}))
        except ValidationError as exc:
            loc, message = settings_error(entry, exc)
            where = ".".join(str(part) for part in ("settings", *loc))
            raise ValueError(f"{where}: {message}") from None
        return {**data, "optimizer": entry.name, "settings": settings.model_dump()}


class PortfolioSettings(Settings):
    members: tuple[MemberSettings, ...] = Field(
        default_factory=lambda: (
            MemberSettings(optimizer="gp"),
            MemberSettings(optimizer="Bayesian", settings={"n_candidates": 1000}),
        ),
        description="Optimizers that take turns proposing; each learns every result",
    )

    @field_validator("members")
    @classmethod
    def _at_least_two(cls, members: tuple[MemberSettings, ...]) -> tuple[MemberSettings, ...]:
        if len(members) < 2:
            raise ValueError(
                f"a portfolio needs at least two members, got {len(members)}; "
                "e.g. members: [gp, Bayesian]"
            )
        return members


# --- the map --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    name: str  # canonical
    backend: Literal["gfo", "optuna", "portfolio"]
    target: str  # GFO class name or Optuna sampler class name
    settings: type[Settings]


_ENTRIES: tuple[Entry, ...] = (
    Entry("tpe", "optuna", "TPESampler", TpeSettings),
    Entry("gp", "optuna", "GPSampler", GpSettings),
    Entry("cmaes", "optuna", "CmaEsSampler", CmaEsSettings),
    Entry("qmc", "optuna", "QMCSampler", QmcSettings),
    Entry("random", "optuna", "RandomSampler", RandomSettings),
    Entry("HillClimbing", "gfo", "HillClimbingOptimizer", HillClimbingSettings),
    Entry(
        "StochasticHillClimbing",
        "gfo",
        "StochasticHillClimbingOptimizer",
        StochasticHillClimbingSettings,
    ),
    Entry(
        "RepulsingHillClimbing",
        "gfo",
        "RepulsingHillClimbingOptimizer",
        RepulsingHillClimbingSettings,
    ),
    Entry("SimulatedAnnealing", "gfo", "SimulatedAnnealingOptimizer", SimulatedAnnealingSettings),
    Entry("DownhillSimplex", "gfo", "DownhillSimplexOptimizer", DownhillSimplexSettings),
    Entry("RandomSearch", "gfo", "RandomSearchOptimizer", RandomSearchSettings),
    Entry("GridSearch", "gfo", "GridSearchOptimizer", GridSearchSettings),
    Entry(
        "RandomRestartHillClimbing",
        "gfo",
        "RandomRestartHillClimbingOptimizer",
        RandomRestartHillClimbingSettings,
    ),
    Entry("RandomAnnealing", "gfo", "RandomAnnealingOptimizer", RandomAnnealingSettings),
    Entry("PowellsMethod", "gfo", "PowellsMethod", PowellsMethodSettings),
    Entry("PatternSearch", "gfo", "PatternSearch", PatternSearchSettings),
    Entry("ParallelTempering", "gfo", "ParallelTemperingOptimizer", ParallelTemperingSettings),
    Entry("ParticleSwarm", "gfo", "ParticleSwarmOptimizer", ParticleSwarmSettings),
    Entry("SpiralOptimization", "gfo", "SpiralOptimization", SpiralOptimizationSettings),
    Entry("EvolutionStrategy", "gfo", "EvolutionStrategyOptimizer", EvolutionStrategySettings),
    Entry("Lipschitz", "gfo", "LipschitzOptimizer", LipschitzSettings),
    Entry("DirectAlgorithm", "gfo", "DirectAlgorithm", DirectAlgorithmSettings),
    Entry("Bayesian", "gfo", "BayesianOptimizer", BayesianSettings),
    Entry(
        "TreeStructuredParzenEstimators",
        "gfo",
        "TreeStructuredParzenEstimators",
        TreeStructuredParzenEstimatorsSettings,
    ),
    Entry("Forest", "gfo", "ForestOptimizer", ForestSettings),
    Entry("portfolio", "portfolio", "PortfolioOptimizer", PortfolioSettings),
)
OPTIMIZER_NAMES: tuple[str, ...] = tuple(e.name for e in _ENTRIES)


def _norm(name: str) -> str:
    s = re.sub(r"[^a-z0-9]", "", name.lower())
    if s.endswith("optimizer") and s != "optimizer":
        s = s[: -len("optimizer")]
    return s.removeprefix("optuna") if s.startswith("optuna") and len(s) > 6 else s


_BY_NORM: Mapping[str, Entry] = {_norm(e.name): e for e in _ENTRIES}


def lookup(name: str) -> Entry:
    """The registry entry of an optimizer name; ConfigError listing the valid names otherwise."""
    entry = _BY_NORM.get(_norm(name))
    if entry is not None:
        return entry
    close = difflib.get_close_matches(name, OPTIMIZER_NAMES, n=1, cutoff=0.5)
    if not close:
        by_norm = difflib.get_close_matches(_norm(name), list(_BY_NORM), n=1, cutoff=0.5)
        close = [_BY_NORM[by_norm[0]].name] if by_norm else []
    raise ConfigError(
        f"unknown optimizer {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""),
        hint=f"valid names: {', '.join(OPTIMIZER_NAMES)}",
    )


def settings_error(entry: Entry, exc: ValidationError) -> tuple[tuple[Any, ...], str]:
    """Where in an optimizer's settings validation failed, and what to tell the user (an
    unknown setting: the closest valid name and the list of them)."""
    err = exc.errors(include_url=False)[0]
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        known = sorted(entry.settings.model_fields)
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        message = f"unknown setting for {entry.name}" + (
            f"; did you mean {close[0]!r}?" if close else ""
        )
        message += f" (settings: {', '.join(known)})" if known else ""
    return tuple(err["loc"]), message


def validate_optimizer_settings(name: str, settings: Mapping[str, Any] | None) -> Settings:
    """Check a name and its settings (config loading). Raises ConfigError for an unknown name
    and pydantic's ValidationError for a bad or unknown setting."""
    entry = lookup(name)
    return entry.settings.model_validate(dict(settings or {}))


def create_optimizer(
    name: str,
    settings: Mapping[str, Any] | Settings | None,
    space: SearchSpace,
    seed: int,
) -> Optimizer:
    """A ready optimizer for ``space``; the same name, settings and seed repeat exactly."""
    entry = lookup(name)
    if isinstance(settings, Settings):
        model = entry.settings.model_validate(settings.model_dump())
    else:
        model = entry.settings.model_validate(dict(settings or {}))
    if isinstance(model, PortfolioSettings):
        from autombw_cli.search.optimizers.portfolio import PortfolioOptimizer

        members = [create_optimizer(m.optimizer, m.settings, space, seed) for m in model.members]
        return PortfolioOptimizer(members, space, seed)
    values = model.model_dump()
    # lazily: each adapter imports its backend (Optuna, gradient-free-optimizers: seconds)
    if entry.backend == "gfo":
        from autombw_cli.search.optimizers.gfo import GfoOptimizer

        return GfoOptimizer(entry.name, entry.target, space, seed, **values)
    from autombw_cli.search.optimizers.optuna_adapter import OptunaOptimizer

    return OptunaOptimizer(entry.name, _optuna_sampler(entry, values, seed), space, seed)


def _optuna_sampler(entry: Entry, values: dict[str, Any], seed: int) -> Any:
    import optuna  # lazily: a second or more to import, and only the Optuna optimizers need it

    cls = getattr(optuna.samplers, entry.target)
    with warnings.catch_warnings():  # QMC and with_margin are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _make_sampler(entry, cls, values, seed)


def _make_sampler(entry: Entry, cls: Any, values: dict[str, Any], seed: int) -> Any:
    if entry.name == "tpe":
        return cls(seed=seed, **values)
    if entry.name in ("gp", "cmaes", "qmc"):
        if entry.name == "qmc":
            values = {**values, "warn_asynchronous_seeding": False}
        return cls(seed=seed, warn_independent_sampling=False, **values)
    return cls(seed=seed)
