"""autombw: find the best block-weighted merge of two Stable Diffusion checkpoints."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("autombw")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
