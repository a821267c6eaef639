"""Optimizers behind one ask/tell seam (`Optimizer`): gradient-free-optimizers and Optuna.

Backends are imported lazily, when `create_optimizer` builds one.
"""

from autombw_cli.search.optimizers.base import (
    Optimizer,
    SpaceExhausted,
    Trial,
    TrialOrigin,
    TrialState,
    replay,
)
from autombw_cli.search.optimizers.registry import (
    DEFAULT_OPTIMIZER,
    OPTIMIZER_NAMES,
    create_optimizer,
    validate_optimizer_settings,
)

__all__ = [
    "DEFAULT_OPTIMIZER",
    "OPTIMIZER_NAMES",
    "Optimizer",
    "SpaceExhausted",
    "Trial",
    "TrialOrigin",
    "TrialState",
    "create_optimizer",
    "replay",
    "validate_optimizer_settings",
]
