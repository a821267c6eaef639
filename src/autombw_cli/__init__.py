"""autombw: find the best block-weighted merge of two Stable Diffusion checkpoints.

``autombw_cli.optimize(objective, arch=..., search={...})`` runs autombw's search core on any
objective (`autombw_cli.app.optimize`); it is imported on first use, so ``import autombw_cli``
stays light.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autombw_cli.app.optimize import optimize

try:
    __version__ = version("autombw")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "optimize"]


def __getattr__(name: str) -> Any:
    if name == "optimize":
        from autombw_cli.app.optimize import optimize

        return optimize
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
