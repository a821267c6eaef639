"""The ``search`` section of the config: blocks, clamps, groups, grid, initial weights, passes.

Block names are resolved against the architecture by `SearchSettings.resolve_slots`, which the
top-level `autombw_cli.config.SearchConfig` calls once ``models.arch`` is known. Errors raised
there are `FieldError`s with the absolute field path so the user sees file, line and field.
"""

from __future__ import annotations

import difflib
import math
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from autombw_cli.blocks import (
    BASE,
    EXTRAPOLATION_RANGE,
    WEIGHT_RANGE,
    Arch,
    Ordering,
    Weights,
    canonical_slot,
    format_weight,
    layout,
    parse_weights,
)
from autombw_cli.config.fields import Duration, ExistingFile, StrictModel, switch_shorthand
from autombw_cli.config.passes import (
    EarlyStoppingConfig,
    PassConfig,
    PruningConfig,
    default_early_stopping,
    default_passes,
)
from autombw_cli.errors import AutombwError
from autombw_cli.lbw import LBW_LENGTHS, LBW_ORDERS, UNPLACED_SLOTS
from autombw_cli.yamlio import FieldError, error_text, format_path

MAX_PASSES = 3


class SchedulerConfig(StrictModel):
    """How the run treats failing instances (unset: the scheduler's defaults, shown)."""

    max_attempts: int | None = Field(
        None, ge=1, description="Tries per evaluation across instances (default 3)"
    )
    park_after: int | None = Field(
        None, ge=1, description="Consecutive failures that park an instance (default 3)"
    )
    all_down_after: Duration = Field(
        None, gt=0, description="Stop when every instance is down this long (default 60 s)"
    )
    probe_backoff_max: Duration = Field(
        None, gt=0, description="Longest wait between probes of a parked instance (default 30 s)"
    )


def _weights_text(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


class InitialConfig(StrictModel):
    """Where the search starts: a weights text, a .recipe.txt, or a named preset."""

    weights: Annotated[str | None, BeforeValidator(_weights_text)] = Field(
        None, description="Any weights form autombw reads (named, 27 values, 25/26, preset name)"
    )
    recipe: ExistingFile | None = Field(None, description="A .recipe.txt or recipe .json")
    preset: str | None = Field(None, description="A preset name (built-in or presets_file)")
    presets_file: ExistingFile | None = Field(None, description="A preset.tsv adding presets")
    order: Literal["recipe", "nat", "upstream"] = Field(
        "recipe", description="Order of a 27-value weights list"
    )

    @model_validator(mode="after")
    def _one_source(self) -> InitialConfig:
        given = [k for k in ("weights", "recipe", "preset") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of weights, recipe, preset"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    def parse(self, arch: Arch, extrapolation: bool) -> Weights:
        from autombw_cli.presets import find_preset, load_presets

        where = ("search", "initial")
        try:
            if self.recipe is not None:
                from autombw_cli.recipe import read_recipe_file

                weights = read_recipe_file(self.recipe).weights
                if weights.arch is not arch:
                    raise FieldError(
                        (*where, "recipe"),
                        f"{self.recipe} is an {weights.arch.value} recipe, models.arch is "
                        f"{arch.value}",
                    )
                return weights.check_range(extrapolation=extrapolation, source=str(self.recipe))
            presets = load_presets(self.presets_file)
            if self.preset is not None:
                found = find_preset(presets, self.preset)
                if found is None:
                    close = difflib.get_close_matches(self.preset, list(presets), n=1)
                    raise FieldError(
                        (*where, "preset"),
                        f"no preset named {self.preset!r}"
                        + (f"; did you mean {close[0]!r}?" if close else "")
                        + f" (known: {', '.join(presets)})",
                    )
                name, values = found
                return Weights.from_list(
                    arch, values, Ordering.BLOCKS, source=f"preset {name}"
                ).check_range(extrapolation=extrapolation, source=f"preset {name}")
            assert self.weights is not None
            ordering = Ordering(self.order)
            return parse_weights(
                self.weights,
                arch,
                ordering=ordering,
                allow_upstream=ordering is Ordering.UPSTREAM,
                presets=presets,
                extrapolation=extrapolation,
                source="weights",
            )
        except FieldError:
            raise
        except AutombwError as exc:
            field = "recipe" if self.recipe else "preset" if self.preset else "weights"
            raise FieldError((*where, field), error_text(exc).removeprefix("weights: ")) from None


Clamp = tuple[float, float]


class SearchSettings(StrictModel):
    """What is searched and how long."""

    blocks: Literal["all"] | list[str] = Field(
        "all", description="Blocks to search (names like IN00, M00, OUT11, OUT, TIME_EMBED)"
    )
    frozen: dict[str, float] = Field(default_factory=dict, description="Blocks held at a value")
    clamps: dict[str, Clamp] = Field(
        default_factory=dict, description="Per-block [min, max] the search stays within"
    )
    groups: list[list[str]] = Field(
        default_factory=list, description="Groups of blocks that share one value"
    )
    intervals: int = Field(10, ge=1, le=1000, description="Grid: intervals+1 values per block")
    continuous: bool = Field(False, description="Search continuous values instead of a grid")
    extrapolation: bool = Field(False, description="Allow weights in -1..2 instead of 0..1")
    initial: InitialConfig | None = None
    passes: list[PassConfig] = Field(
        default_factory=default_passes, min_length=1, max_length=MAX_PASSES
    )
    early_stopping: EarlyStoppingConfig = Field(default_factory=default_early_stopping)
    max_evaluations: int = Field(270, ge=1, description="Evaluation budget over all passes")
    max_time: Duration = Field(None, gt=0, description="Time budget in seconds (or 90m, 2h, 1h30m)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of optimizers and payload seeds")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    pruning: Annotated[PruningConfig | None, BeforeValidator(switch_shorthand("after"))] = Field(
        None,
        description="Stop hopeless candidates after their first images (off by default; "
        "true, a number of images, or {after, confidence, min_evaluations})",
    )

    @model_validator(mode="after")
    def _pass_defaults(self) -> SearchSettings:
        passes = [
            p if p.early_stopping else p.model_copy(update={"early_stopping": self.early_stopping})
            for p in self.passes
        ]
        object.__setattr__(self, "passes", passes)
        return self

    @property
    def grid_intervals(self) -> int | None:
        """``intervals`` on a grid, None when ``continuous`` (as `SearchSpace.build` takes it)."""
        return None if self.continuous else self.intervals

    def weight_range(self) -> tuple[float, float]:
        return EXTRAPOLATION_RANGE if self.extrapolation else WEIGHT_RANGE

    def resolve_slots(
        self, arch: Arch, initial: Weights | None, *, lora: bool = False
    ) -> SearchSettings:
        """Canonical block names; every slot either searched (``blocks``) or ``frozen``.

        ``lora`` (a LoRA block-weight search): ``blocks: all`` means the blocks of LBW's short
        vector (SD1 16, SDXL 11: where a plain LoRA has modules); the other blocks not frozen
        in the config are held as LBW holds them: 0, and OUT/TIME_EMBED/LABEL_EMB 1."""
        lay = layout(arch)
        lo, hi = self.weight_range()
        root = ("search",)

        def slot(name: str, path: tuple) -> str:
            try:
                s = canonical_slot(name, arch)
            except AutombwError as exc:
                raise FieldError((*root, *path), error_text(exc)) from None
            if s == BASE:
                raise FieldError(
                    (*root, *path),
                    "the text-encoder weight (BASE) is not searched; set it in search.initial",
                )
            return s

        def in_range(v: float, path: tuple) -> None:
            if not lo <= v <= hi:
                hint = "" if self.extrapolation else " (turn on search.extrapolation for -1..2)"
                raise FieldError(
                    (*root, *path), f"{format_weight(v)} is outside {lo:g}..{hi:g}{hint}"
                )

        frozen: dict[str, float] = {}
        for name, v in self.frozen.items():
            s = slot(name, ("frozen", name))
            if s in frozen:
                raise FieldError((*root, "frozen", name), f"{s} is frozen twice")
            in_range(v, ("frozen", name))
            frozen[s] = v
        if self.blocks == "all" and lora:
            short = LBW_ORDERS[LBW_LENGTHS[arch][0]]
            searched = [s for s in lay.slots if s in short and s not in frozen]
            for s in lay.slots:
                if s not in short and s not in frozen:
                    frozen[s] = 1.0 if s in UNPLACED_SLOTS else 0.0
        elif self.blocks == "all":
            searched = [s for s in lay.slots if s not in frozen]
        else:
            chosen: list[str] = []
            for i, name in enumerate(self.blocks):
                s = slot(name, ("blocks", i))
                if s in chosen:
                    raise FieldError((*root, "blocks", i), f"{s} is listed twice")
                if s in frozen:
                    raise FieldError((*root, "blocks", i), f"{s} is both searched and frozen")
                chosen.append(s)
            searched = [s for s in lay.slots if s in chosen]
        rest = [s for s in lay.slots if s not in searched and s not in frozen]
        if rest and initial is None:
            raise FieldError(
                (*root, "blocks"),
                f"{', '.join(rest)} neither searched nor frozen; list them in search.blocks, "
                "give them a value in search.frozen, or set search.initial",
            )
        for s in rest:
            assert initial is not None
            frozen[s] = initial[s]
        if not searched:
            raise FieldError((*root, "blocks"), "no block left to search")
        clamps: dict[str, Clamp] = {}
        for name, (c_lo, c_hi) in self.clamps.items():
            s = slot(name, ("clamps", name))
            if s not in searched:
                raise FieldError(
                    (*root, "clamps", name), f"{s} is not searched; clamping it does nothing"
                )
            if c_lo > c_hi:
                raise FieldError((*root, "clamps", name), f"min {c_lo:g} is above max {c_hi:g}")
            in_range(c_lo, ("clamps", name))
            in_range(c_hi, ("clamps", name))
            self._check_grid(c_lo, c_hi, (*root, "clamps", name))
            clamps[s] = (c_lo, c_hi)
        groups = self._resolve_groups(slot, searched, clamps)
        return self.model_copy(
            update={
                "blocks": searched,
                "frozen": {s: frozen[s] for s in lay.slots if s in frozen},
                "clamps": clamps,
                "groups": groups,
            }
        )

    def _resolve_groups(
        self, slot: Any, searched: list[str], clamps: dict[str, Clamp]
    ) -> list[list[str]]:
        owner: dict[str, int] = {}
        groups: list[list[str]] = []
        for g, members in enumerate(self.groups):
            if len(members) < 2:
                raise FieldError(("search", "groups", g), "a group needs at least two blocks")
            group: list[str] = []
            for i, name in enumerate(members):
                s = slot(name, ("groups", g, i))
                path = ("search", "groups", g, i)
                if s not in searched:
                    raise FieldError(path, f"{s} is not searched, so it cannot be in a group")
                if s in owner:
                    raise FieldError(
                        path,
                        f"{s} is already in {format_path(('search', 'groups', owner[s]))}",
                    )
                owner[s] = g
                group.append(s)
            bounds = [clamps[s] for s in group if s in clamps]
            if bounds:
                lo, hi = max(b[0] for b in bounds), min(b[1] for b in bounds)
                if lo > hi:
                    raise FieldError(
                        ("search", "groups", g),
                        "the clamps of this group's blocks do not overlap (a group takes their "
                        "intersection)",
                    )
                self._check_grid(lo, hi, ("search", "groups", g))
            groups.append(group)
        return groups

    def _check_grid(self, lo: float, hi: float, path: tuple) -> None:
        """On a grid, a clamp must hold at least one grid value (k / intervals)."""
        if self.continuous:
            return
        k_lo = math.ceil(lo * self.intervals - 1e-9)
        k_hi = math.floor(hi * self.intervals + 1e-9)
        if k_lo > k_hi:
            raise FieldError(
                path,
                f"{lo:g}..{hi:g} holds no grid value (step {1 / self.intervals:g}); widen it, "
                "raise search.intervals or set search.continuous",
            )
