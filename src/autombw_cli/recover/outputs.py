"""Turning a recovered evaluation into a Recipe and writing it (never over a file unasked)."""

from __future__ import annotations

from pathlib import Path

from autombw_cli.errors import OutputExistsError
from autombw_cli.recipe import Recipe, write_recipe_files
from autombw_cli.recover.values import RecoveredEvaluation


def recipe_stem(path: Path | str) -> Path:
    """``best.recipe.txt``/``best.recipe.json``/``best.txt``/``best`` -> ``best``."""
    p = Path(path)
    name = p.name
    for suffix in (".recipe.txt", ".recipe.json", ".txt", ".json"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return p.with_name(name[: -len(suffix)])
    return p


def recipe_paths(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + ".recipe.txt"), stem.with_name(stem.name + ".recipe.json")


def check_recipe_outputs(path: Path | str, *, force: bool) -> Path:
    """The stem to write; refuses existing files without ``force``."""
    stem = recipe_stem(path)
    if not force:
        existing = [p for p in recipe_paths(stem) if p.exists()]
        if existing:
            raise OutputExistsError(
                f"{existing[0]} already exists", hint="pass --force to overwrite it"
            )
    return stem


def recipe_for(
    evaluation: RecoveredEvaluation,
    *,
    model_a: str,
    model_b: str,
    output_name: str,
    base: Recipe | None = None,
) -> Recipe:
    """A Recipe for a recovered evaluation (model names from ``base`` where not given)."""
    if base is not None:
        return Recipe(
            model_a or base.model_a,
            model_b or base.model_b,
            output_name or base.output_name,
            evaluation.weights,
            base.position_id_fix,
            base.output_mode,
        )
    return Recipe(model_a, model_b, output_name, evaluation.weights)


def write_recovered_recipe(recipe: Recipe, path: Path | str, *, force: bool) -> tuple[Path, Path]:
    stem = check_recipe_outputs(path, force=force)
    return write_recipe_files(recipe, stem)
