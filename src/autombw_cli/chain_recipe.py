"""`ChainRecipe`: the recipe of a chained merge and its file form (JSON, ``autombw-chain/1``).

A chain is a list of ordinary `Recipe` steps: step 1 merges A and B, and each later step's
model A is the previous step's result (its ``model_a`` is the previous step's
``output_name``, the name that result was saved under). ``intermediate_dtype`` is the dtype
every result but the last was saved in (the search saved them through the WebUI bridge with
``outputs.dtype``), so an offline replay rounds where the search rounded::

    {"format": "autombw-chain/1", "intermediate_dtype": "fp16",
     "steps": [<recipe JSON>, <recipe JSON>, ...]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autombw_cli.atomic import atomic_write_text
from autombw_cli.errors import JournalError
from autombw_cli.recipe import Recipe, read_recipe_text

CHAIN_FORMAT = "autombw-chain/1"
INTERMEDIATE_DTYPES = ("fp16", "bf16", "fp32")


@dataclass(frozen=True)
class ChainRecipe:
    steps: tuple[Recipe, ...]
    intermediate_dtype: str = "fp16"

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a chain recipe needs at least one step")
        if self.intermediate_dtype not in INTERMEDIATE_DTYPES:
            raise ValueError(f"unknown intermediate dtype {self.intermediate_dtype!r}")
        for k in range(1, len(self.steps)):
            before, step = self.steps[k - 1], self.steps[k]
            if step.model_a != before.output_name:
                raise ValueError(
                    f"step {k + 1}'s model A is {step.model_a!r}, but step {k} saved its "
                    f"result as {before.output_name!r}"
                )
            if step.arch is not before.arch:
                raise ValueError(f"step {k + 1} is {step.arch.value}, step {k} {before.arch.value}")

    @property
    def output_name(self) -> str:
        return self.steps[-1].output_name

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHAIN_FORMAT,
            "intermediate_dtype": self.intermediate_dtype,
            "steps": [s.to_dict() for s in self.steps],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "chain recipe") -> ChainRecipe:
        if data.get("format") != CHAIN_FORMAT:
            raise JournalError(f"{source}: not a chain recipe (format {CHAIN_FORMAT!r})")
        steps = data.get("steps")
        if not isinstance(steps, list) or not steps:
            raise JournalError(f"{source}: 'steps' must be a non-empty list of recipes")
        recipes = []
        for k, step in enumerate(steps, start=1):
            if not isinstance(step, dict):
                raise JournalError(f"{source}: step {k} is not a recipe object")
            recipes.append(Recipe.from_dict(step, source=f"{source}, step {k}"))
        dtype = data.get("intermediate_dtype", "fp16")
        try:
            return cls(tuple(recipes), intermediate_dtype=dtype)
        except ValueError as exc:
            raise JournalError(f"{source}: {exc}") from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "chain recipe") -> ChainRecipe:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            raise JournalError(f"{source}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise JournalError(f"{source}: expected a JSON object")
        return cls.from_dict(data, source=source)


def is_chain_file(path: Path) -> bool:
    """Whether ``path`` holds a chain recipe (a JSON object whose format is ``autombw-chain/1``);
    False for anything unreadable (the recipe reader then says what is wrong)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return False
    if not text.lstrip().startswith("{") or CHAIN_FORMAT not in text:
        return False
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == CHAIN_FORMAT


def read_chain_recipe(path: Path | str) -> ChainRecipe:
    p = Path(path)
    return ChainRecipe.from_json(read_recipe_text(p), source=str(p))


def write_chain_recipe(chain: ChainRecipe, path: Path) -> Path:
    atomic_write_text(path, chain.to_json())
    return path
