"""Architectures, block slots, the key→slot mapping, every legacy ordering and the `Weights` value.

Layouts are data: one frozen `Layout` per architecture (DOMAIN.md §2). Inside autombw weights
are always *named* (`Weights`); positional lists exist only where files are read or written, and
each one is labelled with an `Ordering` (DOMAIN.md §3):

- ``nat``: auto-MBW-rt history CSV / ``testweights:`` / "Best parameter set":
  IN00..IN11, M00, OUT, OUT00..OUT11, TIME_EMBED (SDXL: IN00..IN08, M00, OUT, OUT00..OUT08,
  TIME_EMBED, LABEL_EMB; auto-MBW-rt itself never supported SDXL, this is our extension).
- ``recipe``: runtime-block-merge ``.recipe.txt`` (6DammK9 fork) and our canonical order:
  IN.., M00, OUT.., OUT, TIME_EMBED (SDXL adds LABEL_EMB last).
- ``upstream``: the upstream (Xynonners) UI, OUT and TIME_EMBED swapped. Read only.
- ``blocks``: supermerger / sd-meh / bayesian-merger / ``preset.tsv``:
  [BASE,] IN.., M00, OUT.. (SD1: 25 or 26 values; SDXL: 19 or 20). On import TIME_EMBED (and
  SDXL's LABEL_EMB) take IN00's value and OUT takes the last OUT block's value, as those tools do.

This module must not import torch.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from autombw_cli.errors import ModelMismatchError, WeightsError

UNET_PREFIX = "model.diffusion_model."
SDXL_DETECTION_KEY = "conditioner.embedders.1.model.ln_final.weight"
SD1_TEXT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model."
SD2_TEXT_ENCODER_PREFIX = "cond_stage_model.model."
SDXL_TEXT_ENCODER_PREFIXES = (
    "conditioner.embedders.0.transformer.text_model.",
    "conditioner.embedders.1.model.",
)
VAE_PREFIX = "first_stage_model."
BASE = "BASE"  # the text-encoder slot of 26-value lists

WEIGHT_RANGE = (0.0, 1.0)
EXTRAPOLATION_RANGE = (-1.0, 2.0)


class Arch(StrEnum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"


class Ordering(StrEnum):
    NAT = "nat"
    RECIPE = "recipe"
    UPSTREAM = "upstream"
    BLOCKS = "blocks"


@dataclass(frozen=True)
class Layout:
    """The block slots of one architecture, in canonical (recipe) order."""

    arch: Arch
    n_in: int
    n_out: int
    extra_slots: tuple[str, ...]  # after the OUTnn blocks: OUT, TIME_EMBED[, LABEL_EMB]
    slots: tuple[str, ...] = field(init=False)
    _prefix_to_slot: Mapping[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ins = tuple(f"IN{i:02d}" for i in range(self.n_in))
        outs = tuple(f"OUT{i:02d}" for i in range(self.n_out))
        slots = (*ins, "M00", *outs, *self.extra_slots)
        prefixes = {f"input_blocks.{i}.": f"IN{i:02d}" for i in range(self.n_in)}
        prefixes["middle_block."] = "M00"
        prefixes.update({f"output_blocks.{i}.": f"OUT{i:02d}" for i in range(self.n_out)})
        prefixes.update({"out.": "OUT", "time_embed.": "TIME_EMBED", "label_emb.": "LABEL_EMB"})
        prefixes = {p: s for p, s in prefixes.items() if s in slots}
        object.__setattr__(self, "slots", slots)
        object.__setattr__(self, "_prefix_to_slot", MappingProxyType(prefixes))

    @property
    def in_slots(self) -> tuple[str, ...]:
        return self.slots[: self.n_in]

    @property
    def out_slots(self) -> tuple[str, ...]:
        return self.slots[self.n_in + 1 : self.n_in + 1 + self.n_out]

    def slot_prefix(self, slot: str) -> str:
        """The full checkpoint-key prefix of a slot, e.g. ``model.diffusion_model.out.``."""
        for prefix, s in self._prefix_to_slot.items():
            if s == slot:
                return UNET_PREFIX + prefix
        raise KeyError(slot)

    def slot_of(self, key: str) -> str | None:
        """The slot a checkpoint key belongs to, or None for keys outside the merged UNet."""
        if not key.startswith(UNET_PREFIX):
            return None
        rest = key[len(UNET_PREFIX) :]
        head = rest.split(".", 1)[0] + "."
        if head in ("input_blocks.", "output_blocks."):
            parts = rest.split(".", 2)
            head = f"{parts[0]}.{parts[1]}." if len(parts) > 1 else head
        return self._prefix_to_slot.get(head)

    def order(self, ordering: Ordering) -> tuple[str, ...]:
        """Slot names in a legacy positional order (``blocks`` excludes BASE)."""
        ins, outs = self.in_slots, self.out_slots
        tail = tuple(s for s in self.extra_slots if s not in ("OUT", "TIME_EMBED"))
        if ordering is Ordering.NAT:
            return (*ins, "M00", "OUT", *outs, "TIME_EMBED", *tail)
        if ordering is Ordering.RECIPE:
            return self.slots
        if ordering is Ordering.UPSTREAM:
            return (*ins, "M00", *outs, "TIME_EMBED", "OUT", *tail)
        if ordering is Ordering.BLOCKS:
            return (*ins, "M00", *outs)
        raise ValueError(ordering)


LAYOUTS: Mapping[Arch, Layout] = MappingProxyType(
    {
        Arch.SD1: Layout(Arch.SD1, 12, 12, ("OUT", "TIME_EMBED")),
        Arch.SD2: Layout(Arch.SD2, 12, 12, ("OUT", "TIME_EMBED")),
        Arch.SDXL: Layout(Arch.SDXL, 9, 9, ("OUT", "TIME_EMBED", "LABEL_EMB")),
    }
)


def layout(arch: Arch | str) -> Layout:
    return LAYOUTS[Arch(arch)]


def text_encoder_prefixes(arch: Arch) -> tuple[str, ...]:
    if arch is Arch.SDXL:
        return SDXL_TEXT_ENCODER_PREFIXES
    if arch is Arch.SD2:
        return (SD2_TEXT_ENCODER_PREFIX,)
    return (SD1_TEXT_ENCODER_PREFIX,)


def is_text_encoder_key(key: str, arch: Arch) -> bool:
    return key.startswith(text_encoder_prefixes(arch))


def detect_arch(shapes: Mapping[str, Sequence[int]], *, source: str = "checkpoint") -> Arch:
    """Detect the architecture from a checkpoint's key → shape mapping (DOMAIN.md §2)."""
    if SDXL_DETECTION_KEY in shapes:
        return Arch.SDXL
    if not any(k.startswith(UNET_PREFIX) for k in shapes):
        raise ModelMismatchError(
            f"{source}: no UNet keys (model.diffusion_model.*) found; "
            "this is not a Stable Diffusion checkpoint",
            hint="pass a full SD1/SD2/SDXL checkpoint (.safetensors or .ckpt)",
        )
    if any(k.startswith(SD2_TEXT_ENCODER_PREFIX) for k in shapes):
        return Arch.SD2
    final_ln = SD1_TEXT_ENCODER_PREFIX + "final_layer_norm.weight"
    if final_ln in shapes and list(shapes[final_ln])[-1:] == [1024]:
        return Arch.SD2
    return Arch.SD1


def is_inpainting(shapes: Mapping[str, Sequence[int]]) -> bool:
    shape = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    return shape is not None and len(shape) > 1 and shape[1] == 9


_SLOT_ALIASES = {"BASE": BASE, "TE": BASE, "TEXT_ENCODER": BASE, "M": "M00", "MID": "M00"}


def canonical_slot(name: str, arch: Arch) -> str:
    """Normalise a user-written slot name (``in5``, ``In05``, ``time_embed``, ``base``)."""
    raw = name.strip().upper().replace("-", "_")
    raw = _SLOT_ALIASES.get(raw, raw)
    m = re.fullmatch(r"(IN|OUT|M)_?(\d{1,2})", raw)
    if m:
        raw = f"{m.group(1)}{int(m.group(2)):02d}"
    if raw == BASE or raw in layout(arch).slots:
        return raw
    raise WeightsError(
        f"unknown block name {name!r} for {arch.value}",
        hint=f"valid names: {', '.join(layout(arch).slots)}, BASE",
    )


@dataclass(frozen=True)
class Weights:
    """One value per block slot of an architecture: B's share (w=0 pure A, w=1 pure B).

    ``text_encoder`` is the optional BASE weight (None: text encoders come from A unchanged).
    """

    arch: Arch
    values: Mapping[str, float]
    text_encoder: float | None = None

    def __post_init__(self) -> None:
        lay = layout(self.arch)
        if set(self.values) != set(lay.slots):
            missing = [s for s in lay.slots if s not in self.values]
            extra = [s for s in self.values if s not in lay.slots]
            raise WeightsError(
                f"weights for {self.arch.value} need exactly the slots {', '.join(lay.slots)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(extra)}" if extra else "")
            )
        ordered = {}
        for slot in lay.slots:
            v = float(self.values[slot])
            if not math.isfinite(v):
                raise WeightsError(f"weight {slot} is {v}, expected a finite number")
            ordered[slot] = v
        object.__setattr__(self, "values", MappingProxyType(ordered))
        if self.text_encoder is not None:
            te = float(self.text_encoder)
            if not math.isfinite(te):
                raise WeightsError(f"weight BASE is {te}, expected a finite number")
            object.__setattr__(self, "text_encoder", te)

    # --- construction -------------------------------------------------------------------
    @classmethod
    def uniform(cls, arch: Arch, value: float, text_encoder: float | None = None) -> Weights:
        return cls(arch, {s: value for s in layout(arch).slots}, text_encoder)

    @classmethod
    def from_mapping(
        cls,
        arch: Arch,
        mapping: Mapping[str, object],
        *,
        text_encoder: object = None,
        extrapolation: bool | None = None,
        source: str = "weights",
    ) -> Weights:
        """From user-written names (case-insensitive, ``in5`` is IN05; ``BASE`` sets the
        text-encoder weight, as does ``text_encoder``, called ``text_encoder_weight`` in
        messages). Refuses a slot named twice in any spelling and a value that is not a number
        (JSON ``true`` included). With ``extrapolation`` given, the range is checked as by
        `check_range` (a non-finite value, or an integer too large for a float, is outside it).
        """
        values: dict[str, float] = {}
        te: float | None = None
        given: dict[str, str] = {}  # slot -> the name that gave it (IN00 and in00 are one slot)
        if text_encoder is not None:
            given[BASE] = "text_encoder_weight"
            te = _as_number(text_encoder, "text_encoder_weight")
        for name, v in mapping.items():
            slot = canonical_slot(str(name), arch)
            if slot in given:
                raise WeightsError(
                    f"{source}: {slot} given twice ({given[slot]} and {name})",
                    hint="give each block once",
                )
            given[slot] = str(name)
            number = _as_number(v, f"{source}.{name}")
            if slot == BASE:
                te = number
            else:
                values[slot] = number
        if extrapolation is not None:
            items = [*values.items(), *([(BASE, te)] if te is not None else [])]
            _check_range(items, extrapolation=extrapolation, source=source)
        return cls(arch, values, te)

    @classmethod
    def from_list(
        cls,
        arch: Arch,
        values: Sequence[float],
        ordering: Ordering,
        *,
        source: str = "weights",
    ) -> Weights:
        """From a positional list in a named legacy ordering (see the module docstring)."""
        lay = layout(arch)
        order = lay.order(ordering)
        vals = list(values)
        if ordering is Ordering.BLOCKS:
            te: float | None = None
            if len(vals) == len(order) + 1:
                te, vals = vals[0], vals[1:]
            elif len(vals) != len(order):
                raise WeightsError(
                    f"{source}: expected {len(order)} or {len(order) + 1} values in blocks "
                    f"order ([BASE,] {order[0]}..{order[-1]}), got {len(vals)}"
                )
            named = dict(zip(order, vals, strict=True))
            named["OUT"] = named[lay.out_slots[-1]]
            named["TIME_EMBED"] = named["IN00"]
            if "LABEL_EMB" in lay.slots:
                named["LABEL_EMB"] = named["IN00"]
            return cls(arch, named, te)
        if len(vals) != len(order):
            raise WeightsError(
                f"{source}: expected {len(order)} values in {ordering.value} order "
                f"({', '.join(order)}), got {len(vals)}"
            )
        return cls(arch, dict(zip(order, vals, strict=True)))

    # --- reading ------------------------------------------------------------------------
    def __getitem__(self, slot: str) -> float:
        return self.values[slot]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def items(self) -> Iterable[tuple[str, float]]:
        return self.values.items()

    @property
    def layout(self) -> Layout:
        return layout(self.arch)

    def to_list(self, ordering: Ordering) -> list[float]:
        """Positional values in a legacy ordering (``blocks`` gives 25/19 values, no BASE)."""
        if ordering is Ordering.UPSTREAM:
            raise ValueError("the upstream ordering is read-only; write recipe order instead")
        return [self.values[s] for s in self.layout.order(ordering)]

    def to_named_string(self) -> str:
        parts = [f"{s}:{format_weight(v)}" for s, v in self.values.items()]
        if self.text_encoder is not None:
            parts.insert(0, f"BASE:{format_weight(self.text_encoder)}")
        return ",".join(parts)

    def to_dict(self) -> dict[str, float]:
        return dict(self.values)

    def key(self, ndigits: int = 9) -> bytes:
        """A hashable identity (rounded) used to never evaluate the same weights twice.

        The rounded values packed as doubles (-0.0 counts as 0.0): 241 bytes for SD1, where a
        tuple of floats takes ~890, and a run keeps a key per evaluation in its sets of seen
        weights. Compare keys only with keys of the same ``ndigits``."""
        vals = [round(v, ndigits) + 0.0 for v in self.values.values()]
        if self.text_encoder is not None:
            vals.append(round(self.text_encoder, ndigits) + 0.0)
        return struct.pack(f"<{len(vals)}d", *vals)

    # --- deriving -----------------------------------------------------------------------
    def replace(self, updates: Mapping[str, float]) -> Weights:
        merged = dict(self.values)
        for slot, v in updates.items():
            if slot not in merged:
                raise WeightsError(f"unknown slot {slot} for {self.arch.value}")
            merged[slot] = float(v)
        return Weights(self.arch, merged, self.text_encoder)

    def check_range(self, *, extrapolation: bool = False, source: str = "weights") -> Weights:
        items = list(self.values.items())
        if self.text_encoder is not None:
            items.append((BASE, self.text_encoder))
        _check_range(items, extrapolation=extrapolation, source=source)
        return self


def _check_range(items: Iterable[tuple[str, float]], *, extrapolation: bool, source: str) -> None:
    lo, hi = EXTRAPOLATION_RANGE if extrapolation else WEIGHT_RANGE
    for slot, v in items:
        if not lo <= v <= hi:  # NaN too
            raise WeightsError(
                f"{source}: {slot}={format_weight(v)} is outside {lo:g}..{hi:g}",
                hint=None
                if extrapolation
                else "values outside 0..1 need extrapolation turned on (range -1..2)",
            )


def _as_number(value: object, where: str) -> float:
    """A JSON/YAML number as a float; an integer too large for a float becomes +-inf (which a
    range check refuses; ``float()`` would raise OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WeightsError(f"{where} must be a number, not {value!r:.40}")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def format_weight(v: float) -> str:
    """Shortest text that reads back to the same float (0.3 stays '0.3', 1.0 becomes '1.0')."""
    text = repr(float(v))
    return "0.0" if text == "-0.0" else text


def parse_number(text: str, *, where: str) -> float:
    t = text.strip()
    try:
        v = float(t)
    except ValueError:
        raise WeightsError(f"{where}: {t!r} is not a number") from None
    if not math.isfinite(v):
        raise WeightsError(f"{where}: {t!r} is not a finite number")
    return v


def parse_weights(
    text: str,
    arch: Arch = Arch.SD1,
    *,
    ordering: Ordering = Ordering.RECIPE,
    allow_upstream: bool = False,
    presets: Mapping[str, Sequence[float]] | None = None,
    extrapolation: bool = False,
    source: str = "weights",
) -> Weights:
    """Parse any accepted weights text.

    Forms: a named string (``IN00:0.5,M00:1,...``, every slot named, BASE optional); a single
    number (every slot); a comma/space separated list: the full slot count in ``ordering``
    (default recipe order), or the supermerger-style ``blocks`` count (25/26 for SD1); a preset
    name from ``presets``. ``ordering=UPSTREAM`` needs ``allow_upstream=True``.
    """
    stripped = text.strip()
    if not stripped:
        raise WeightsError(f"{source}: empty weights")
    if presets is not None:
        for name, values in presets.items():
            if name.upper() == stripped.upper():
                return Weights.from_list(
                    arch, values, Ordering.BLOCKS, source=f"preset {name}"
                ).check_range(extrapolation=extrapolation, source=f"preset {name}")
    if ordering is Ordering.UPSTREAM and not allow_upstream:
        raise WeightsError(
            f"{source}: the upstream (OUT/TIME_EMBED swapped) order is read-only",
            hint="pass the explicit upstream flag if this list came from the upstream UI",
        )
    if re.search(r"[:=]", stripped):
        weights = _parse_named(stripped, arch, source)
    else:
        parts = [p for p in re.split(r"[,\s]+", stripped) if p]
        values = [parse_number(p, where=f"{source}: position {i + 1}") for i, p in enumerate(parts)]
        lay = layout(arch)
        n_slots = len(lay.slots)
        n_blocks = len(lay.order(Ordering.BLOCKS))
        if len(values) == 1:
            weights = Weights.uniform(arch, values[0])
        elif len(values) == n_slots:
            weights = Weights.from_list(arch, values, ordering, source=source)
        elif len(values) in (n_blocks, n_blocks + 1):
            weights = Weights.from_list(arch, values, Ordering.BLOCKS, source=source)
        else:
            raise WeightsError(
                f"{source}: got {len(values)} values; expected {n_slots} "
                f"({ordering.value} order: {', '.join(lay.order(ordering))}) or "
                f"{n_blocks}/{n_blocks + 1} (blocks order: [BASE,] IN00..{lay.out_slots[-1]})",
                hint="or name each block: IN00:0.5,M00:1,...",
            )
    return weights.check_range(extrapolation=extrapolation, source=source)


def _parse_named(text: str, arch: Arch, source: str) -> Weights:
    mapping: dict[str, float] = {}
    # items are separated by commas/semicolons/newlines, or by spaces before the next name
    items = (p.strip() for p in re.split(r"[,;\n]+|\s+(?=[A-Za-z_])", text))
    for i, part in enumerate(p for p in items if p):
        m = re.fullmatch(r"([A-Za-z_]+\d*)\s*[:=]\s*(.+)", part)
        if not m:
            raise WeightsError(f"{source}: item {i + 1} {part!r} is not NAME:VALUE")
        try:
            slot = canonical_slot(m.group(1), arch)
        except WeightsError as exc:
            raise WeightsError(f"{source}: {exc.message}", hint=exc.hint) from None
        if slot in mapping:
            raise WeightsError(f"{source}: block {slot} is given twice")
        mapping[slot] = parse_number(m.group(2), where=f"{source}: {slot}")
    missing = [s for s in layout(arch).slots if s not in mapping]
    if missing:
        raise WeightsError(
            f"{source}: no value for {', '.join(missing)}",
            hint="a named weights string must name every block (BASE is optional)",
        )
    return Weights.from_mapping(arch, mapping)
