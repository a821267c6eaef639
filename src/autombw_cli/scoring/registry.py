"""Scorer names → factories: the built-ins plus the ``autombw.scorers`` entry-point group.

Built-ins (imported only when asked for, so ``import autombw_cli.scoring`` stays light):

=============  ================================================================
imagereward    `autombw_cli.scoring.imagereward.ImageRewardScorer` (default)
laion          `autombw_cli.scoring.aesthetic.AestheticScorer`, LAION aesthetic v2 head
               (alias ``aesthetic``)
chad           the same model with the SD-Chad head
sim            ``autombw_cli.sim.scorer.SimScorer`` (closeness to the simulator's hidden target)
ensemble       `autombw_cli.scoring.ensemble.EnsembleScorer` over ``scorer.ensemble``
=============  ================================================================

A third-party package adds a scorer with an entry point::

    [project.entry-points."autombw.scorers"]
    myscore = "mypackage.scoring:MyScorer"

The object it names is called as ``obj.from_spec(spec)`` when it has a ``from_spec`` attribute
(``spec`` is the `ScorerSpec`: device, batch size, paths, options), otherwise as
``obj(**spec.options)``; either way it must return something with ``name`` and
``score(images, prompts) -> list[float]``. One without ``close()`` gets a no-op one here, so
what the registry returns is always a full `autombw_cli.scoring.protocol.Scorer`.
Built-in names win over entry points of the same name.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from autombw_cli.errors import ConfigError, ScorerError
from autombw_cli.scoring.ensemble import EnsembleScorer, Member
from autombw_cli.scoring.protocol import Scorer
from autombw_cli.scoring.settings import ScorerConfig, ScorerSpec

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["ENTRY_POINT_GROUP", "create_scorer", "known_scorer_names"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "autombw.scorers"

BUILTIN_SCORERS: dict[str, str] = {
    "imagereward": "autombw_cli.scoring.imagereward:ImageRewardScorer",
    "laion": "autombw_cli.scoring.aesthetic:AestheticScorer",
    "aesthetic": "autombw_cli.scoring.aesthetic:AestheticScorer",
    "chad": "autombw_cli.scoring.aesthetic:AestheticScorer",
    "sim": "autombw_cli.sim.scorer:SimScorer",
}


def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        name = ep.name.strip().lower()
        if name in BUILTIN_SCORERS or name == "ensemble":
            log.warning(
                "ignoring entry point %s (%s): %r is a built-in scorer", ep.name, ep.value, name
            )
            continue
        found[name] = ep
    return found


def known_scorer_names() -> list[str]:
    """Every name ``scorer.name`` accepts, built-ins first."""
    return [*BUILTIN_SCORERS, "ensemble", *sorted(_entry_points())]


def _load_target(name: str) -> Any:
    if name in BUILTIN_SCORERS:
        module_name, _, attr = BUILTIN_SCORERS[name].partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except ImportError as exc:
            raise ScorerError(
                f"scorer {name!r} cannot be imported: {exc}",
                hint='the model scorers need: pip install "autombw[imagereward]"',
            ) from exc
    ep = _entry_points().get(name)
    if ep is None:
        raise ConfigError(
            f"unknown scorer {name!r}",
            hint=f"scorer.name must be one of: {', '.join(known_scorer_names())} "
            f"(or a package's {ENTRY_POINT_GROUP!r} entry point)",
        )
    try:
        return ep.load()
    except Exception as exc:
        raise ScorerError(
            f"scorer {name!r} (entry point {ep.value}) cannot be loaded: {exc}"
        ) from exc


@runtime_checkable
class _Scores(Protocol):
    """The least an entry point's object must be: ``name`` and ``score``."""

    name: str

    def score(self, images: Sequence[Image], prompts: Sequence[str]) -> list[float]: ...


class _NothingToClose:
    """A `Scorer` around one that has no ``close()`` (the simulator's, most plugins)."""

    def __init__(self, inner: _Scores) -> None:
        self.inner = inner
        self.name = inner.name

    def score(self, images: Sequence[Image], prompts: Sequence[str]) -> list[float]:
        return self.inner.score(images, prompts)

    def close(self) -> None:
        """Nothing to free."""


def _build(spec: ScorerSpec) -> Scorer:
    target = _load_target(spec.name)
    factory: Callable[..., Any] | None = getattr(target, "from_spec", None)
    built = factory(spec) if callable(factory) else target(**spec.options)
    if isinstance(built, Scorer):
        return built
    if isinstance(built, _Scores):
        return _NothingToClose(built)
    raise ScorerError(
        f"scorer {spec.name!r} built a {type(built).__name__}, which lacks "
        "name / score(images, prompts)"
    )


def create_scorer(config: ScorerConfig | ScorerSpec) -> Scorer:
    """Build the scorer the config names (an `EnsembleScorer` for ``name: ensemble``)."""
    if isinstance(config, ScorerConfig) and config.name == "ensemble":
        members: list[Member] = []
        try:
            for spec in config.member_specs():
                members.append(Member(_build(spec), spec.weight, spec.normalize))
        except BaseException:
            for m in members:
                m.scorer.close()
            raise
        return EnsembleScorer(members, zscore_warmup=config.zscore_warmup)
    if config.name == "ensemble":
        raise ConfigError("an ensemble needs a full ScorerConfig with its member list")
    return _build(config)
