"""Reading weights (and their scores) back out of history CSVs, console logs and recipes.

Sources (`SourceKind`, auto-detected by `detect_kind`, or forced):

- ``history``: autombw's own history CSV: a header naming block slots (``IN00``..), a ``score``
  column, optionally ``state`` (rows whose state is not complete are skipped), ``number``,
  ``arch`` and a ``BASE``/``text_encoder`` column.
- ``mbwrt-csv``: auto-MBW-rt's history CSV: header ``0,1,...,26,score,eval_times,iter_times``
  (nat order; 22 columns for SDXL, our extension).
- ``log``: an auto-MBW-rt console log: ``testweights: <nat values>`` / ``test score: <x>`` line
  pairs and Hyperactive's ``Results`` block (``Best score:`` + ``Best parameter set:`` with
  ``'k'  : v`` lines, k the nat index). Progress bars on the same line, ``\\r``, CRLF, a
  truncated tail and incomplete evaluations are tolerated: what cannot be used is skipped with a
  warning; a log with no usable evaluation is an error.
- ``recipe``: a ``.recipe.txt`` (anything below the weights line is ignored) or recipe JSON.
- ``checkpoint``: a merged ``.safetensors`` whose metadata carries the recipe (``autombw_recipe``
  or runtime-block-merge's ``sd_mbwrt_recipe``); only the header is read.

Ranking: higher score first; **ties go to the earliest evaluation in the file** (lowest line),
so the answer does not depend on sort stability or on later duplicates. A Results-block entry
whose weights and score equal an evaluation already read from ``testweights``/``test score``
lines is the same evaluation and is not listed twice.

CSV files must be well formed: a short, long or non-numeric row is an error naming the row and
line, except a torn last line (no line end, as left by a crash mid-write), which is skipped with
a warning.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from autombw_cli.blocks import Arch, Weights, layout
from autombw_cli.errors import JournalError
from autombw_cli.recipe import Recipe
from autombw_cli.recover.checkpoint import parse_checkpoint, read_safetensors_metadata
from autombw_cli.recover.console_log import parse_console_log
from autombw_cli.recover.csv_sources import parse_history_csv, parse_mbwrt_csv
from autombw_cli.recover.outputs import (
    OutputPlan,
    check_merge_options,
    check_recipe_outputs,
    plan_outputs,
    recipe_for,
    recipe_paths,
    recipe_stem,
    write_outputs,
    write_recovered_recipe,
)
from autombw_cli.recover.text import LOG_MARKERS, detect_kind, read_source_text
from autombw_cli.recover.values import (
    RecoveredSource,
    SourceKind,
    order_line,
)
from autombw_cli.search.evaluation import Evaluation

__all__ = [
    "OutputPlan",
    "RecoveredSource",
    "SourceKind",
    "check_merge_options",
    "check_recipe_outputs",
    "detect_kind",
    "order_line",
    "parse_checkpoint",
    "parse_console_log",
    "parse_history_csv",
    "parse_mbwrt_csv",
    "parse_recipe",
    "parse_source",
    "plan_outputs",
    "read_source_text",
    "recipe_for",
    "recipe_paths",
    "recipe_stem",
    "recover",
    "write_outputs",
    "write_recovered_recipe",
]


def recover(
    path: Path | str,
    *,
    kind: SourceKind | str | None = None,
    arch: Arch | str | None = None,
    upstream: bool = False,
) -> RecoveredSource:
    """Read every evaluation (or the recipe) from ``path``; errors name the file and line."""
    if kind is not None and SourceKind(kind) is SourceKind.CHECKPOINT:
        return parse_checkpoint(path)
    if kind is None and _looks_like_safetensors(path):
        return parse_checkpoint(path)
    text, warnings = read_source_text(path)
    source = str(path)
    chosen = SourceKind(kind) if kind is not None else detect_kind(text, source=source)
    arch_ = Arch(arch) if arch is not None else None
    result = parse_source(text, chosen, source=source, arch=arch_, upstream=upstream)
    if kind is None and chosen is SourceKind.RECIPE and LOG_MARKERS.search(text):
        warnings = [
            *warnings,
            f"{source} also holds an auto-MBW-rt console log; this read its recipe lines. "
            "--kind log reads the logged evaluations and their scores instead",
        ]
    if warnings:
        result = RecoveredSource(
            result.source,
            result.kind,
            result.evaluations,
            (*warnings, *result.warnings),
            result.recipe,
        )
    return result


def _looks_like_safetensors(path: Path | str) -> bool:
    try:
        return read_safetensors_metadata(path) is not None
    except (OSError, JournalError):  # read_source_text / parse_checkpoint say what is wrong
        return Path(path).suffix.lower() == ".safetensors" and Path(path).is_file()


def parse_source(
    text: str,
    kind: SourceKind,
    *,
    source: str = "source",
    arch: Arch | None = None,
    upstream: bool = False,
) -> RecoveredSource:
    if kind is SourceKind.RECIPE:
        return parse_recipe(text, source=source, arch=arch, upstream=upstream)
    if kind is SourceKind.MBWRT_CSV:
        return parse_mbwrt_csv(text, source=source, arch=arch)
    if kind is SourceKind.HISTORY:
        return parse_history_csv(text, source=source, arch=arch)
    if kind is SourceKind.CHECKPOINT:
        raise JournalError(f"{source}: a checkpoint's recipe is read from the file, not from text")
    return parse_console_log(text, source=source, arch=arch)


# --- recipes ------------------------------------------------------------------------------
def parse_recipe(
    text: str, *, source: str = "recipe", arch: Arch | None = None, upstream: bool = False
) -> RecoveredSource:
    if text.lstrip().startswith("{"):
        recipe = Recipe.from_json(text, source=source)
    else:
        recipe = Recipe.from_text(text, source=source, upstream=upstream)
    if arch is not None and arch is not recipe.arch:
        if len(layout(arch).slots) != len(layout(recipe.arch).slots):
            raise JournalError(
                f"{source}: the recipe has {len(recipe.weights)} weights ({recipe.arch.value}), "
                f"which does not fit --arch {arch.value}"
            )
        w = recipe.weights
        recipe = dataclasses.replace(recipe, weights=Weights(arch, dict(w.items()), w.text_encoder))
    evaluation = Evaluation(weights=recipe.weights, score=None, location="recipe weights line")
    return RecoveredSource(source, SourceKind.RECIPE, (evaluation,), recipe=recipe)
