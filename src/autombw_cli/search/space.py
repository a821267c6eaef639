"""The search space: which block weights an optimizer moves and how its parameters map to Weights.

A `SearchSpace` holds, for one architecture:

- the *parameters* the optimizer sees: one per searched slot, or one per group of slots that
  share a value (``IN00+IN01+IN02``);
- *frozen* slots held at a fixed value (and every slot's value when it is not searched);
- per-parameter bounds (the weight range, narrowed by a clamp);
- a grid of ``intervals + 1`` values per unit (0, 1/intervals, ...; default 10 intervals) or
  continuous values; extrapolation widens the range from 0..1 to -1..2.

It maps optimizer parameters to `Weights` (`to_weights`) and back (`to_params`), snaps and clips
user-given starting points into the space (`project`) and gives the identity used to never
evaluate the same weights twice (`key`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from autombw_cli.blocks import EXTRAPOLATION_RANGE, WEIGHT_RANGE, Arch, Weights, layout
from autombw_cli.errors import ConfigError

GRID_DIGITS = 9  # grid values are rounded to this many digits (and so are their keys)
CONTINUOUS_DIGITS = 6  # two continuous points closer than 1e-6 in every slot count as the same


@dataclass(frozen=True)
class Param:
    """One optimizer parameter: the slots it sets and its bounds (already clamped)."""

    name: str
    slots: tuple[str, ...]
    low: float
    high: float


@dataclass(frozen=True)
class SearchSpace:
    """See the module docstring. Build one with `SearchSpace.build`."""

    arch: Arch
    params: tuple[Param, ...]
    fixed: Mapping[str, float]  # every slot that no parameter sets, with its value
    intervals: int | None  # None: continuous
    extrapolation: bool = False
    text_encoder: float | None = None

    # --- construction -------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        arch: Arch | str,
        *,
        searched: Sequence[str] | None = None,
        frozen: Mapping[str, float] | None = None,
        clamps: Mapping[str, tuple[float, float]] | None = None,
        groups: Sequence[Sequence[str]] = (),
        intervals: int | None = 10,
        extrapolation: bool = False,
        base: Weights | None = None,
        text_encoder: float | None = None,
    ) -> SearchSpace:
        """A space over canonical slot names.

        ``searched`` defaults to every slot not in ``frozen``; slots neither searched nor frozen
        take their value from ``base`` (an error without it). Each group becomes one parameter
        whose clamp is the intersection of its members' clamps.
        """
        arch = Arch(arch)
        lay = layout(arch)
        frozen = dict(frozen or {})
        clamps = dict(clamps or {})
        lo_r, hi_r = EXTRAPOLATION_RANGE if extrapolation else WEIGHT_RANGE
        if intervals is not None and intervals < 1:
            raise ConfigError(f"search intervals must be at least 1, got {intervals}")
        for slot in (*frozen, *clamps, *(s for g in groups for s in g)):
            if slot not in lay.slots:
                raise ConfigError(
                    f"unknown block {slot!r} for {arch.value}",
                    hint=f"valid names: {', '.join(lay.slots)}",
                )
        searched_set = (
            [s for s in lay.slots if s not in frozen] if searched is None else list(searched)
        )
        for s in searched_set:
            if s not in lay.slots:
                raise ConfigError(f"unknown block {s!r} for {arch.value}")
            if s in frozen:
                raise ConfigError(f"block {s} is both searched and frozen")
        if not searched_set:
            raise ConfigError("no block left to search", hint="unfreeze at least one block")
        fixed: dict[str, float] = {}
        for s in lay.slots:
            if s in searched_set:
                continue
            if s in frozen:
                fixed[s] = float(frozen[s])
            elif base is not None:
                fixed[s] = base[s]
            else:
                raise ConfigError(
                    f"block {s} is neither searched nor frozen",
                    hint="search it, freeze it, or give starting weights",
                )
        grouped: dict[str, int] = {}
        for gi, group in enumerate(groups):
            for s in group:
                if s not in searched_set:
                    raise ConfigError(f"block {s} is in a group but not searched")
                if s in grouped:
                    raise ConfigError(f"block {s} is in two groups")
                grouped[s] = gi
        params: list[Param] = []
        done_groups: set[int] = set()
        for s in lay.slots:
            if s not in searched_set:
                continue
            if s in grouped:
                gi = grouped[s]
                if gi in done_groups:
                    continue
                done_groups.add(gi)
                members = tuple(m for m in lay.slots if grouped.get(m) == gi)
            else:
                members = (s,)
            low, high = lo_r, hi_r
            for m in members:
                c_lo, c_hi = clamps.get(m, (lo_r, hi_r))
                if c_lo > c_hi:
                    raise ConfigError(f"clamp of {m}: min {c_lo:g} is above max {c_hi:g}")
                if c_lo < lo_r or c_hi > hi_r:
                    raise ConfigError(
                        f"clamp of {m} ({c_lo:g}..{c_hi:g}) leaves the range {lo_r:g}..{hi_r:g}"
                    )
                low, high = max(low, c_lo), min(high, c_hi)
            name = "+".join(members)
            if low > high:
                raise ConfigError(f"the clamps of group {name} do not overlap")
            param = Param(name, members, float(low), float(high))
            if intervals is not None and not _grid(param, intervals).size:
                raise ConfigError(
                    f"clamp {low:g}..{high:g} of {name} holds no grid value "
                    f"(step {1 / intervals:g})",
                    hint="widen the clamp or raise search.intervals",
                )
            params.append(param)
        return cls(arch, tuple(params), fixed, intervals, extrapolation, text_encoder)

    # --- reading ------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def is_grid(self) -> bool:
        return self.intervals is not None

    @property
    def dimensions(self) -> int:
        return len(self.params)

    def grid(self, param: Param | str) -> np.ndarray:
        """The grid values of one parameter (ascending). Only for grid spaces."""
        if self.intervals is None:
            raise ValueError("a continuous space has no grid")
        return _grid(self._param(param), self.intervals)

    def size(self) -> float:
        """Number of distinct points (inf for a continuous space)."""
        if self.intervals is None:
            return math.inf
        return float(np.prod([float(self.grid(p).size) for p in self.params]))

    # --- mapping ------------------------------------------------------------------------
    def to_weights(self, params: Mapping[str, float]) -> Weights:
        """Weights from optimizer parameters (values are snapped onto the space)."""
        values = dict(self.fixed)
        for p in self.params:
            v = self._snap(p, float(params[p.name]))
            for s in p.slots:
                values[s] = v
        return Weights(self.arch, values, self.text_encoder)

    def to_params(self, weights: Weights) -> dict[str, float]:
        """Optimizer parameters of weights that lie in the space (see `contains`)."""
        if not self.contains(weights):
            raise ValueError(f"weights are outside the search space: {weights.to_named_string()}")
        return {p.name: self._snap(p, weights[p.slots[0]]) for p in self.params}

    def contains(self, weights: Weights) -> bool:
        """True when the weights are a point of this space (fixed slots, groups, bounds, grid)."""
        if weights.arch is not self.arch:
            return False
        if not _same(weights.text_encoder, self.text_encoder):
            return False
        for s, v in self.fixed.items():
            if not math.isclose(weights[s], v, abs_tol=1e-9):
                return False
        for p in self.params:
            v = weights[p.slots[0]]
            if any(not math.isclose(weights[s], v, abs_tol=1e-9) for s in p.slots[1:]):
                return False
            if not p.low - 1e-9 <= v <= p.high + 1e-9:
                return False
            if not math.isclose(self._snap(p, v), v, abs_tol=1e-9):
                return False
        return True

    def project(self, weights: Weights) -> Weights:
        """The nearest point of the space: fixed slots set, a group takes its members' mean,
        values clipped into their bounds and snapped onto the grid (for starting points)."""
        params = {p.name: float(np.mean([weights[s] for s in p.slots])) for p in self.params}
        return self.to_weights(params)

    def key(self, weights: Weights) -> bytes:
        """Identity of a point at the space's resolution (grid: exact; continuous: 1e-6)."""
        return weights.key(GRID_DIGITS if self.is_grid else CONTINUOUS_DIGITS)

    def sample(self, rng: np.random.Generator) -> Weights:
        """A uniformly random point."""
        params: dict[str, float] = {}
        for p in self.params:
            if self.intervals is None:
                params[p.name] = float(rng.uniform(p.low, p.high))
            else:
                grid = self.grid(p)
                params[p.name] = float(grid[rng.integers(grid.size)])
        return self.to_weights(params)

    # --- internals ----------------------------------------------------------------------
    def _param(self, param: Param | str) -> Param:
        if isinstance(param, Param):
            return param
        for p in self.params:
            if p.name == param:
                return p
        raise KeyError(param)

    def _snap(self, p: Param, v: float) -> float:
        v = min(max(v, p.low), p.high)
        if self.intervals is None:
            return float(v)
        grid, values = self._grid_values(p)
        return values[int(np.argmin(np.abs(grid - v)))]

    def _grid_values(self, p: Param) -> tuple[np.ndarray, tuple[float, ...]]:
        """The grid of ``p`` and the same values as Python floats, built once per space: every
        snapped weight is one of these float objects, so the weights a run keeps share them
        (SD1: 27 floats, ~650 bytes per evaluation otherwise)."""
        cache = self.__dict__.setdefault("_grid_cache", {})  # a memo, not a field
        hit = cache.get(p.name)
        if hit is None:
            grid = _grid(p, self.intervals or 1)
            hit = cache[p.name] = (grid, tuple(float(x) for x in grid))
        return hit


def _grid(p: Param, intervals: int) -> np.ndarray:
    k_lo = math.ceil(p.low * intervals - 1e-9)
    k_hi = math.floor(p.high * intervals + 1e-9)
    return np.round(np.arange(k_lo, k_hi + 1) / intervals, GRID_DIGITS) + 0.0


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, abs_tol=1e-9)
