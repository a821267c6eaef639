"""LoRA block weights: the positional vectors of sd-webui-lora-block-weight (LBW) and our `Weights`.

LBW (hako-mikan/sd-webui-lora-block-weight, ``scripts/lora_block_weight.py``) gives a LoRA one
strength per block in one of four orders, named by their length:

- SD1/SD2: 17 values ``BASE,IN01,IN02,IN04,IN05,IN07,IN08,M00,OUT03..OUT11`` (the blocks a
  plain LoRA has modules in) or 26 values ``BASE,IN00..IN11,M00,OUT00..OUT11`` (LyCORIS/LoCon);
- SDXL: 12 values ``BASE,IN04,IN05,IN07,IN08,M00,OUT00..OUT05`` or 20 values
  ``BASE,IN00..IN08,M00,OUT00..OUT08``.

A preset line is ``NAME:v1,v2,...``. LBW expands a short vector to the 26 positions with 0 for
the blocks it omits (``to26``), and a LoRA module it cannot place in any block (``time_embed``,
``out``, SDXL's ``label_emb``) keeps strength 1 (``ratiodealer``). Inside autombw the strengths
are a `Weights` (a slot's weight is the LoRA strength of the modules in that slot, ``BASE`` is
the text encoders'), so reading a vector gives the omitted blocks 0 and OUT, TIME_EMBED and
LABEL_EMB 1, exactly as LBW applies it. Standard library only (the bridge copies it).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from types import MappingProxyType

from autombw_cli.blocks import BASE, Arch, Weights, format_weight, layout, parse_number
from autombw_cli.errors import WeightsError


def _blocks(prefix: str, numbers: range) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:02d}" for i in numbers)


LBW_ORDERS = MappingProxyType(
    {
        17: (
            BASE,
            "IN01",
            "IN02",
            "IN04",
            "IN05",
            "IN07",
            "IN08",
            "M00",
            *_blocks("OUT", range(3, 12)),
        ),
        26: (BASE, *_blocks("IN", range(12)), "M00", *_blocks("OUT", range(12))),
        12: (BASE, "IN04", "IN05", "IN07", "IN08", "M00", *_blocks("OUT", range(6))),
        20: (BASE, *_blocks("IN", range(9)), "M00", *_blocks("OUT", range(9))),
    }
)
# per architecture: (the short vector's length, the full one's)
LBW_LENGTHS = MappingProxyType({Arch.SD1: (17, 26), Arch.SD2: (17, 26), Arch.SDXL: (12, 20)})
UNPLACED_SLOTS = ("OUT", "TIME_EMBED", "LABEL_EMB")  # LBW leaves these at strength 1


def lbw_order(arch: Arch, n: int) -> tuple[str, ...]:
    """The slot names of an ``n``-value LBW vector for ``arch`` (BASE first)."""
    if n not in LBW_LENGTHS[arch]:
        short, full = LBW_LENGTHS[arch]
        raise WeightsError(
            f"an LBW vector for {arch.value} has {short} or {full} values, not {n}",
            hint=f"{short}: {','.join(LBW_ORDERS[short])}",
        )
    return LBW_ORDERS[n]


def weights_from_lbw(arch: Arch, values: Sequence[float], *, source: str = "LBW") -> Weights:
    """An LBW vector as `Weights`: the blocks it omits get 0, OUT/TIME_EMBED/LABEL_EMB 1 (as
    LBW applies it), ``BASE`` becomes the text-encoder weight."""
    try:
        order = lbw_order(arch, len(values))
    except WeightsError as exc:
        raise WeightsError(f"{source}: {exc.message}", hint=exc.hint) from None
    named = dict(zip(order, (float(v) for v in values), strict=True))
    slots = layout(arch).slots
    unet = {s: named.get(s, 1.0 if s in UNPLACED_SLOTS else 0.0) for s in slots}
    return Weights(arch, unet, named[BASE])


def parse_lbw_line(text: str, arch: Arch, *, source: str = "LBW") -> tuple[str | None, Weights]:
    """``NAME:v1,v2,...`` or ``v1,v2,...`` (17/26 values, SDXL 12/20) as (name, `Weights`)."""
    name: str | None = None
    body = text.strip()
    if ":" in body:
        name, body = (p.strip() for p in body.split(":", 1))
    parts = [p for p in re.split(r"[,\s]+", body) if p]
    values = [parse_number(p, where=f"{source}: position {i + 1}") for i, p in enumerate(parts)]
    return name or None, weights_from_lbw(arch, values, source=source)


def is_lbw_length(arch: Arch, n: int) -> bool:
    return n in LBW_LENGTHS[arch]


def lbw_vector(weights: Weights, touched: Collection[str] | None = None) -> list[float]:
    """The shortest LBW vector that says what ``weights`` do to a LoRA whose modules lie in
    the slots ``touched`` (None: every slot): the short one when the LoRA has nothing in the
    blocks it omits (or they are 0), else the full one. BASE is the text-encoder weight (0
    when the weights leave the text encoders alone).

    Raises WeightsError when no LBW vector can say it: a touched OUT/TIME_EMBED/LABEL_EMB
    slot whose strength is not 1 (LBW applies those at 1)."""
    slots = set(layout(weights.arch).slots) if touched is None else set(touched)
    for slot in UNPLACED_SLOTS:
        if slot in slots and slot in weights.values and weights[slot] != 1.0:
            raise WeightsError(
                f"{slot}={format_weight(weights[slot])}: an LBW vector has no place for {slot} "
                "(sd-webui-lora-block-weight applies it at strength 1)",
                hint=f"fix {slot} at 1 to write the strengths as an LBW preset",
            )
    short, full = LBW_LENGTHS[weights.arch]
    short_order = LBW_ORDERS[short]
    omitted = [s for s in LBW_ORDERS[full] if s not in short_order and s in slots]
    order = short_order if all(weights[s] == 0.0 for s in omitted) else LBW_ORDERS[full]
    te = 0.0 if weights.text_encoder is None else weights.text_encoder
    return [te if s == BASE else weights[s] for s in order]


def lbw_preset_line(name: str, weights: Weights, touched: Collection[str] | None = None) -> str:
    """``NAME:v1,v2,...`` for LBW's preset list (see `lbw_vector`)."""
    clean = re.sub(r"[:,\s#]+", "_", name).strip("_") or "AUTOMBW"
    return clean + ":" + ",".join(_short(v) for v in lbw_vector(weights, touched))


def _short(v: float) -> str:
    """LBW's own style: whole numbers without a decimal point (``1``, ``0``, ``0.35``)."""
    return str(int(v)) if float(v).is_integer() else format_weight(v)
