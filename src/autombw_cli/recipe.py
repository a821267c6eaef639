"""The `Recipe` value and its file forms.

A recipe is everything needed to reproduce a merge: the formula (`Formula`: weighted sum, add
difference with a third model C, or a LoRA baked into A: then B is the LoRA file and each
weight its strength), models A, B (and C), the output name and the named
`Weights` (with the optional text-encoder weight). Forms:

- ``.recipe.txt`` (runtime-block-merge, 6DammK9 fork)::

      modelA=<file>
      modelB=<file>
      modelO=<name>
      position_id_fix=Keep Original
      output_mode=Max Precision
      <values in recipe order: IN.., M00, OUT.., OUT, TIME_EMBED[, LABEL_EMB]>

  autombw adds ``arch=sd2`` / ``text_encoder_weight=...`` lines only when they carry
  information the old format cannot hold, and for an add-difference merge ``modelC=<file>``
  and ``merge_mode=Add difference`` (supermerger's name for ``A+(B-C)*alpha``; a recipe
  without ``merge_mode`` is a weighted sum; a LoRA baked into A is ``merge_mode=LoRA`` with
  the LoRA file as ``modelB``). Anything after the weights line is ignored (users paste
  console logs below it).
- JSON (``Recipe.to_json``): our own, with named weights (``formula`` and ``model_c`` only for
  add difference, with ``format: autombw-recipe/2``).
- safetensors metadata: ``autombw_recipe`` (our JSON) and ``sd_mbwrt_recipe`` (auto-MBW-rt's;
  not written for add difference, which auto-MBW-rt cannot express).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from autombw_cli.atomic import atomic_write_text
from autombw_cli.blocks import (
    Arch,
    Ordering,
    Weights,
    format_weight,
    layout,
    parse_number,
)
from autombw_cli.errors import JournalError, WeightsError

POSITION_ID_FIX_CHOICES = ("Keep Original", "Fix")
OUTPUT_MODE_CHOICES = ("Max Precision", "Runtime Snapshot")
MBWRT_WEIGHTS_SEQ = "[*sl_INPUT, *sl_MID, *sl_OUTPUT, sl_OUT, sl_TIME_EMBED]"
METADATA_KEY = "autombw_recipe"
MBWRT_METADATA_KEY = "sd_mbwrt_recipe"
_MBWRT_METADATA_KEY_TYPO = "sd_mbwrt_receipe"  # what the 6DammK9 fork actually wrote
JSON_FORMAT = "autombw-recipe/1"
JSON_FORMAT_ADD_DIFFERENCE = "autombw-recipe/2"  # has formula and model_c


class Formula(StrEnum):
    """How a block's weight ``w`` mixes the models (``w`` is always B's share)."""

    WEIGHTED_SUM = "weighted_sum"  # A + (B - A) * w: torch.lerp(A, B, w)
    ADD_DIFFERENCE = "add_difference"  # A + (B - C) * w: C is B's base (e.g. SD1.5)
    LORA = "lora"  # A + w * delta(B): B is a LoRA file, w its strength per block (LBW)

    @property
    def label(self) -> str:
        """The name supermerger gives it (a ``.recipe.txt``'s ``merge_mode=``)."""
        return _FORMULA_LABELS[self]

    @property
    def needs_c(self) -> bool:
        return self is Formula.ADD_DIFFERENCE

    @classmethod
    def parse(cls, text: str, *, source: str = "formula") -> Formula:
        """``weighted_sum``/``add_difference``, or supermerger's ``Weight sum`` / ``Add
        difference`` (with or without its ``:A+(B-C)*alpha`` tail), in any case."""
        name = text.split(":", 1)[0].strip().lower().replace("-", " ").replace("_", " ")
        for formula, names in _FORMULA_NAMES.items():
            if name in names:
                return formula
        raise JournalError(
            f"{source}: unknown merge formula {text!r}",
            hint="use weighted_sum (Weight sum), add_difference (Add difference) or lora (LoRA)",
        )


_FORMULA_LABELS = {
    Formula.WEIGHTED_SUM: "Weight sum",
    Formula.ADD_DIFFERENCE: "Add difference",
    Formula.LORA: "LoRA",
}
_FORMULA_NAMES = {
    Formula.WEIGHTED_SUM: ("weighted sum", "weight sum"),
    Formula.ADD_DIFFERENCE: ("add difference", "add diff"),
    Formula.LORA: ("lora", "lora block weight", "lbw"),
}


@dataclass(frozen=True)
class Recipe:
    model_a: str
    model_b: str
    output_name: str
    weights: Weights
    position_id_fix: str = "Keep Original"
    output_mode: str = "Max Precision"
    model_c: str | None = None  # add difference: B's base; None for a weighted sum
    formula: Formula = Formula.WEIGHTED_SUM

    def __post_init__(self) -> None:
        if self.formula.needs_c and self.model_c is None:
            raise ValueError("an add-difference recipe needs model_c")
        if not self.formula.needs_c and self.model_c is not None:
            raise ValueError("a weighted-sum recipe has no model_c")

    @property
    def arch(self) -> Arch:
        return self.weights.arch

    # --- .recipe.txt -----------------------------------------------------------------------
    def to_text(self) -> str:
        lines = [f"modelA={self.model_a}", f"modelB={self.model_b}"]
        if self.model_c is not None:
            lines.append(f"modelC={self.model_c}")
        lines += [
            f"modelO={self.output_name}",
            f"position_id_fix={self.position_id_fix}",
            f"output_mode={self.output_mode}",
        ]
        if self.formula is not Formula.WEIGHTED_SUM:
            lines.append(f"merge_mode={self.formula.label}")
        if self.arch is Arch.SD2:
            lines.append(f"arch={self.arch.value}")
        if self.weights.text_encoder is not None:
            lines.append(f"text_encoder_weight={format_weight(self.weights.text_encoder)}")
        lines.append(",".join(format_weight(v) for v in self.weights.to_list(Ordering.RECIPE)))
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str, *, source: str = "recipe", upstream: bool = False) -> Recipe:
        """Read a ``.recipe.txt``; ``upstream=True`` reads the Xynonners UI's swapped order."""
        fields: dict[str, str] = {}
        values_line: tuple[int, str] | None = None
        for lineno, raw in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
            line = raw.strip()
            if not line:
                continue
            m = re.fullmatch(r"([A-Za-z_]+)\s*=\s*(.*)", line)
            if m:
                fields[m.group(1)] = m.group(2).strip()
                continue
            if re.fullmatch(r"[-+0-9.eE,\s]+", line):
                values_line = (lineno, line)
                break
            raise JournalError(
                f"{source}: line {lineno} is neither key=value nor the weights line: {line[:60]!r}"
            )
        if values_line is None:
            raise JournalError(
                f"{source}: no weights line (comma-separated numbers) found",
                hint="a .recipe.txt ends with one line of 27 (SD1/SD2) or 22 (SDXL) numbers",
            )
        lineno, line = values_line
        parts = [p for p in re.split(r"[,\s]+", line) if p]
        values = [
            parse_number(p, where=f"{source}: line {lineno}, position {i + 1}")
            for i, p in enumerate(parts)
        ]
        arch = _arch_for_count(len(values), fields.get("arch"), source=f"{source}: line {lineno}")
        ordering = Ordering.UPSTREAM if upstream else Ordering.RECIPE
        weights = Weights.from_list(arch, values, ordering, source=f"{source}: line {lineno}")
        if "text_encoder_weight" in fields:
            te = parse_number(fields["text_encoder_weight"], where=f"{source}: text_encoder_weight")
            weights = Weights(arch, weights.values, te)
        formula = Formula.WEIGHTED_SUM
        if "merge_mode" in fields:
            formula = Formula.parse(fields["merge_mode"], source=f"{source}: merge_mode")
        required = ("modelA", "modelB", "modelC") if formula.needs_c else ("modelA", "modelB")
        missing = [k for k in required if k not in fields]
        if missing:
            why = " (an add-difference recipe names model C)" if "modelC" in missing else ""
            raise JournalError(f"{source}: missing {' and '.join(missing)}= line{why}")
        if "modelC" in fields and not formula.needs_c:
            raise JournalError(
                f"{source}: modelC= is given but the recipe is a weighted sum",
                hint="add merge_mode=Add difference, or remove the modelC= line",
            )
        return cls(
            model_a=fields["modelA"],
            model_b=fields["modelB"],
            output_name=fields.get("modelO", ""),
            weights=weights,
            position_id_fix=fields.get("position_id_fix", "Keep Original"),
            output_mode=fields.get("output_mode", "Max Precision"),
            model_c=fields.get("modelC"),
            formula=formula,
        )

    # --- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        formula: dict[str, Any] = {}
        if self.formula is not Formula.WEIGHTED_SUM:  # old recipes stay byte for byte
            formula = {"formula": self.formula.value, "model_c": self.model_c}
        return {
            "format": JSON_FORMAT_ADD_DIFFERENCE if formula else JSON_FORMAT,
            "arch": self.arch.value,
            **formula,
            "model_a": self.model_a,
            "model_b": self.model_b,
            "output_name": self.output_name,
            "weights": {s: v for s, v in self.weights.items()},
            "text_encoder_weight": self.weights.text_encoder,
            "position_id_fix": self.position_id_fix,
            "output_mode": self.output_mode,
            "recipe_order": ",".join(
                format_weight(v) for v in self.weights.to_list(Ordering.RECIPE)
            ),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "recipe JSON") -> Recipe:
        def text_field(key: str, default: str | None = None) -> str:
            if key not in data:
                if default is None:
                    raise JournalError(f"{source}: missing field {key!r}")
                return default
            value = data[key]
            if not isinstance(value, str):
                raise JournalError(f"{source}: field {key!r} must be a string, got {value!r:.40}")
            return value

        raw_weights = data.get("weights")
        if not isinstance(raw_weights, dict):
            if "weights" not in data:
                raise JournalError(f"{source}: missing field 'weights'")
            raise JournalError(
                f"{source}: field 'weights' must be an object {{slot: number}}, "
                f"got {type(raw_weights).__name__}"
            )
        try:
            arch = Arch(data.get("arch", "sd1"))
            weights = Weights.from_mapping(arch, raw_weights)
            te = data.get("text_encoder_weight")
            if te is not None:
                weights = Weights(arch, weights.values, float(te))
            formula = Formula.parse(text_field("formula", "weighted_sum"), source=source)
            model_c = text_field("model_c") if formula.needs_c else None
            if not formula.needs_c and data.get("model_c") is not None:
                raise JournalError(
                    f"{source}: model_c is given but the formula is weighted_sum",
                    hint='add "formula": "add_difference", or remove model_c',
                )
            return cls(
                model_a=text_field("model_a"),
                model_b=text_field("model_b"),
                output_name=text_field("output_name", ""),
                weights=weights,
                position_id_fix=text_field("position_id_fix", "Keep Original"),
                output_mode=text_field("output_mode", "Max Precision"),
                model_c=model_c,
                formula=formula,
            )
        except WeightsError as exc:
            raise JournalError(f"{source}: {exc.message}", hint=exc.hint) from exc
        except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            raise JournalError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str, *, source: str = "recipe JSON") -> Recipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise JournalError(f"{source}: not valid JSON ({exc})") from None
        except (RecursionError, ValueError) as exc:  # too deeply nested / too long an integer
            raise JournalError(f"{source}: not usable JSON ({exc})") from None
        if not isinstance(data, dict):
            raise JournalError(f"{source}: expected a JSON object")
        return cls.from_dict(data, source=source)

    # --- safetensors metadata --------------------------------------------------------------
    def mbwrt_metadata(self) -> dict[str, str]:
        return {
            "type": "auto-mbw-rt",
            "modelA": self.model_a,
            "modelB": self.model_b,
            "modelO": self.output_name,
            "position_id_fix": self.position_id_fix,
            "output_mode": self.output_mode,
            "mbwrt_weights": ",".join(
                format_weight(v) for v in self.weights.to_list(Ordering.RECIPE)
            ),
            "mbwrt_weights_seq": MBWRT_WEIGHTS_SEQ,
        }

    def safetensors_metadata(self) -> dict[str, str]:
        """Metadata entries (string values, as safetensors requires) for a merged file. No
        auto-MBW-rt entry for an add-difference merge: read as one, it would be a weighted
        sum of A and B."""
        ours = {METADATA_KEY: json.dumps(self.to_dict(), separators=(",", ":"))}
        if self.formula is not Formula.WEIGHTED_SUM:
            return ours
        mbwrt = json.dumps(self.mbwrt_metadata(), separators=(",", ":"))
        return {**ours, MBWRT_METADATA_KEY: mbwrt}

    @classmethod
    def from_safetensors_metadata(
        cls, metadata: dict[str, str], *, source: str = "safetensors metadata"
    ) -> Recipe:
        if METADATA_KEY in metadata:
            return cls.from_json(metadata[METADATA_KEY], source=f"{source} {METADATA_KEY}")
        for key in (MBWRT_METADATA_KEY, _MBWRT_METADATA_KEY_TYPO):
            if key in metadata:
                try:
                    data = json.loads(metadata[key])
                except json.JSONDecodeError as exc:
                    raise JournalError(f"{source} {key}: not valid JSON ({exc})") from None
                text = "\n".join(
                    [
                        f"modelA={data.get('modelA', '')}",
                        f"modelB={data.get('modelB', '')}",
                        f"modelO={data.get('modelO', '')}",
                        f"position_id_fix={data.get('position_id_fix', 'Keep Original')}",
                        f"output_mode={data.get('output_mode', 'Max Precision')}",
                        str(data.get("mbwrt_weights", "")),
                    ]
                )
                return cls.from_text(text, source=f"{source} {key}")
        raise JournalError(f"{source}: no recipe found (no {METADATA_KEY} or {MBWRT_METADATA_KEY})")

    def content_hash(self) -> str:
        """A short stable hash of what the merge depends on (models and weights)."""
        content: dict[str, Any] = {
            "a": self.model_a,
            "b": self.model_b,
            "arch": self.arch.value,
            "w": [format_weight(v) for v in self.weights.values.values()],
            "te": self.weights.text_encoder,
        }
        if self.formula is not Formula.WEIGHTED_SUM:  # a weighted sum's hash stays as it was
            content.update(c=self.model_c, formula=self.formula.value)
        payload = json.dumps(content, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _arch_for_count(count: int, arch_field: str | None, *, source: str) -> Arch:
    if arch_field:
        try:
            arch = Arch(arch_field.strip().lower())
        except ValueError:
            raise JournalError(
                f"{source}: unknown arch={arch_field!r}",
                hint=f"one of {', '.join(a.value for a in Arch)}",
            ) from None
        expected = len(layout(arch).slots)
        if count != expected:
            raise JournalError(f"{source}: {arch.value} needs {expected} values, got {count}")
        return arch
    for arch in (Arch.SD1, Arch.SDXL):
        if count == len(layout(arch).slots):
            return arch
    raise JournalError(
        f"{source}: expected 27 values (SD1/SD2, recipe order) or 22 (SDXL), got {count}"
    )


def write_recipe_files(recipe: Recipe, stem: Path | str) -> tuple[Path, Path]:
    """Write ``<stem>.recipe.txt`` and ``<stem>.recipe.json`` atomically; return both paths."""
    stem = Path(stem)
    txt = stem.with_name(stem.name + ".recipe.txt")
    js = stem.with_name(stem.name + ".recipe.json")
    atomic_write_text(txt, recipe.to_text())
    atomic_write_text(js, recipe.to_json())
    return txt, js


def read_recipe_file(path: Path | str, *, upstream: bool = False) -> Recipe:
    """Read a ``.recipe.txt`` or a recipe ``.json`` (by content)."""
    p = Path(path)
    text = read_recipe_text(p)
    if text.lstrip().startswith("{"):
        return Recipe.from_json(text, source=str(p))
    return Recipe.from_text(text, source=str(p), upstream=upstream)


def read_recipe_text(path: Path) -> str:
    """A recipe file's text (BOM dropped); JournalError when it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise JournalError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JournalError(f"{path}: cannot read ({exc})") from None
