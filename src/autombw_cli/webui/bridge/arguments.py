"""The bridge engine's arguments, checked once the pair is known: the weights (they need the
pair's architecture), the formula with its model C, and the choice fields. Each refusal is a
422 `ValidationError`. The routes check only a request's shape (``routes.py``); these checks
need the engine. Standard library only (copied into the WebUI extension).
"""

from __future__ import annotations

from collections.abc import Mapping

from autombw_cli.blocks import Arch, Weights
from autombw_cli.errors import WeightsError
from autombw_cli.recipe import Formula
from autombw_cli.webui.bridge.errors import ValidationError

CACHE_DEVICES = ("auto", "cuda", "cpu")
FORMULAS = [f.value for f in Formula]


def requested_weights(
    arch: Arch, weights: object, text_encoder_weight: object, extrapolation: bool
) -> Weights:
    """A request's ``weights`` (+ ``text_encoder_weight``) as `Weights` for ``arch``, checked by
    `Weights.from_mapping` (names, numbers, a slot named twice, the range); 422 if not."""
    if not isinstance(weights, Mapping) or not weights:
        raise ValidationError("weights must be an object {slot: weight}")
    try:
        return Weights.from_mapping(
            arch,
            weights,
            text_encoder=text_encoder_weight,
            extrapolation=extrapolation,
            source="weights",
        )
    except WeightsError as exc:
        raise ValidationError(exc.message, hint=exc.hint) from None


def requested_formula(formula: object, model_c: object) -> Formula:
    """A request's ``formula`` (None: weighted sum) checked against its ``model_c``: add
    difference needs C, a weighted sum refuses one (422 either way, never a silent weighted
    sum)."""
    if formula is None:
        formula = Formula.WEIGHTED_SUM.value
    check_choice("formula", formula, FORMULAS)
    how = Formula(formula)
    if how.needs_c and model_c is None:
        raise ValidationError(
            "formula add_difference needs model_c (B's base model)",
            hint="A + (B - C) * w: name model C, e.g. the SD1.5 checkpoint B was trained from",
        )
    if not how.needs_c and model_c is not None:
        raise ValidationError(
            f"model_c is given but the formula is {how.value}",
            hint="send formula: add_difference with model_c, or leave model_c out",
        )
    return how


def check_choice(name: str, value: object, options: list[str]) -> None:
    if value not in options:
        raise ValidationError(f"{name} must be one of {', '.join(options)}, not {value!r}")
