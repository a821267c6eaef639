"""Search passes: optimizer names and settings, early stopping and pruning.

Optimizer names and settings are checked by the optimizer registry
(`autombw_cli.search.optimizers.registry`, the one table of names), so a config that loads
names an optimizer that exists, with settings it accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from autombw_cli.config.fields import StrictModel
from autombw_cli.errors import AutombwError
from autombw_cli.search.optimizers import registry
from autombw_cli.search.optimizers.registry import DEFAULT_OPTIMIZER
from autombw_cli.yamlio import FieldError, error_text


def validate_optimizer(name: str, settings: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Check an optimizer name and settings with the optimizer registry.

    Returns the canonical name and the settings with the optimizer's defaults filled in.
    """
    try:
        entry = registry.lookup(name)
        result = registry.validate_optimizer_settings(name, settings)
    except AutombwError as exc:
        raise FieldError(("optimizer",), error_text(exc)) from None
    except ValidationError as exc:
        loc, message = registry.settings_error(entry, exc)
        raise FieldError(("settings", *loc), message) from None
    return entry.name, result.model_dump(mode="json")


class EarlyStoppingConfig(StrictModel):
    """Stop a pass after ``patience`` evaluations without an improvement (search-wide default:
    off, ``patience: null``; ``early_stopping: true`` or any mapping without ``patience`` means
    27, auto-MBW-rt's value)."""

    patience: int | None = Field(
        27, ge=1, description="Evaluations without improvement before a pass stops (null: never)"
    )
    min_delta_abs: float = Field(0.0, ge=0, description="An improvement must exceed this")
    min_delta_rel: float = Field(0.0, ge=0, description="... and this fraction of |best|")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if data is False:
            return {"patience": None}
        if data is True:
            return {}
        if isinstance(data, int):
            return {"patience": data}
        return data


class PruningConfig(StrictModel):
    """Stop rendering a candidate whose first images are clearly worse than the best's
    (``search/pruning.py``: a paired upper confidence bound below zero)."""

    after: int = Field(2, ge=1, description="Images rendered and scored before the one look")
    confidence: float = Field(
        0.95, ge=0.5, lt=1.0, description="One-sided confidence that the candidate is worse"
    )
    min_evaluations: int = Field(
        5, ge=2, description="Complete evaluations before anything is pruned (the spread)"
    )


# The default search (BENCHMARKS.md "Optimizer quality"): Optuna's Gaussian-process sampler for
# the first 100 evaluations, then a portfolio in which it takes turns with GFO's Bayesian
# optimizer (1000 candidates per ask) to the budget, both warm-started from every evaluation
# before it and each told every result.
DEFAULT_PASSES: tuple[dict[str, Any], ...] = (
    {"optimizer": "gp", "max_evaluations": 100},
    {"optimizer": "portfolio"},
)


class PassConfig(StrictModel):
    """One search pass; pass 2 and 3 start from the previous pass's best."""

    optimizer: str = Field(DEFAULT_OPTIMIZER, description="Optimizer (cmaes, tpe, Bayesian...)")
    settings: dict[str, Any] = Field(default_factory=dict, description="Optimizer options")
    max_evaluations: int | None = Field(None, ge=1, description="Cap for this pass")
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="Default: search.early_stopping"
    )

    @model_validator(mode="before")
    @classmethod
    def _check_optimizer(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"optimizer": data}
        if not isinstance(data, dict):
            return data
        name = data.get("optimizer", DEFAULT_OPTIMIZER)
        settings = data.get("settings") or {}
        if isinstance(name, str) and isinstance(settings, dict):
            name, settings = validate_optimizer(name, settings)
            data = {**data, "optimizer": name, "settings": settings}
        return data


def default_passes() -> list[PassConfig]:
    """The passes a search runs when the config names none (`DEFAULT_PASSES`)."""
    return [PassConfig.model_validate(p) for p in DEFAULT_PASSES]


def default_early_stopping() -> EarlyStoppingConfig:
    """Search-wide early stopping when the config says nothing: off (the run uses its budget)."""
    return EarlyStoppingConfig(patience=None)
