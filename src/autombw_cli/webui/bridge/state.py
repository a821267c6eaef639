"""What the bridge knows about the live model, as one immutable value replaced whole.

`LiveState` answers: which pair (A, B, arch, and C for an add-difference merge) the caches
belong to; whether the bridge knows
what the live model holds (``model_id``: the ``id()`` of the model object it last verified,
None when unknown); what weight each slot holds (``applied``: NaN when unknown, so that slot is
always rewritten); and the current merge (``merge_id``, ``weights``) with whether it is still
live or why it was lost. Every change is a method returning a new value, so a reader (status,
another thread's `mark_lost`) never sees half an update. Standard library only (copied into the
WebUI extension).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from autombw_cli.blocks import BASE, Arch, Weights
from autombw_cli.recipe import Formula
from autombw_cli.webui.bridge.names import CheckpointRef

UNKNOWN = math.nan  # "the live model holds something else for this slot": always rewritten


@dataclass(frozen=True)
class Pair:
    """The models of the current merge: A and B, and C for ``A + (B - C) * w`` (None: the
    weighted sum ``A + (B - A) * w``); with ``lora`` B is a LoRA file and the merge
    ``A + w * delta(B)``."""

    a: CheckpointRef
    b: CheckpointRef
    arch: Arch
    c: CheckpointRef | None = None
    lora: bool = False

    @property
    def formula(self) -> Formula:
        if self.lora:
            return Formula.LORA
        return Formula.WEIGHTED_SUM if self.c is None else Formula.ADD_DIFFERENCE


@dataclass(frozen=True)
class LiveState:
    pair: Pair | None = None
    model_id: int | None = None  # the live model `applied` describes; None: unknown
    applied: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    merge_id: str | None = None
    weights: Weights | None = None
    live: bool = False
    lost_reason: str | None = None

    def knows(self, model: object) -> bool:
        """Whether `applied` describes ``model`` (the object the WebUI holds now)."""
        return model is not None and self.model_id is not None and id(model) == self.model_id

    def held(self, slot: str) -> float:
        """The weight ``slot`` holds in the live model (BASE: 0.0 unless merged)."""
        return self.applied.get(slot, 0.0 if slot == BASE else UNKNOWN)

    # --- transitions ----------------------------------------------------------------------
    def with_pair(self, pair: Pair) -> LiveState:
        """The same files under the names this request used."""
        return dataclasses.replace(self, pair=pair)

    def new_pair(self, pair: Pair) -> LiveState:
        """Another A: nothing is known about the live model until it is checked again."""
        return dataclasses.replace(self, pair=pair, model_id=None, applied=MappingProxyType({}))

    def verified(self, model: object, applied: Mapping[str, float]) -> LiveState:
        return dataclasses.replace(
            self, model_id=id(model), applied=MappingProxyType(dict(applied))
        )

    def unknown(self) -> LiveState:
        """The live model is no longer known to hold A + `applied`."""
        return dataclasses.replace(self, model_id=None)

    def with_applied(self, slot: str, weight: float) -> LiveState:
        return dataclasses.replace(self, applied=MappingProxyType({**self.applied, slot: weight}))

    def b_changed(self) -> LiveState:
        """A new B (or C, or formula) with the same A: every slot holding some of the old B is
        stale."""
        stale = {s: (0.0 if v == 0.0 else UNKNOWN) for s, v in self.applied.items()}
        return dataclasses.replace(self, applied=MappingProxyType(stale))

    def merging(self) -> LiveState:
        """A merge started: the previous one is gone (whatever happens next)."""
        return dataclasses.replace(self, merge_id=None, live=False)

    def merged(self, merge_id: str, weights: Weights) -> LiveState:
        return dataclasses.replace(
            self, merge_id=merge_id, weights=weights, live=True, lost_reason=None
        )

    def restored(self) -> LiveState:
        return dataclasses.replace(self, merge_id=None, weights=None, live=False, lost_reason=None)

    def lost(self, reason: str) -> LiveState:
        """The host reloaded a model: the live model is unknown and the merge (if any) lost."""
        if self.merge_id is not None and self.live:
            return dataclasses.replace(self, model_id=None, live=False, lost_reason=reason)
        return self.unknown()
