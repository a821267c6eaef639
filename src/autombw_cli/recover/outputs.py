"""Turning a recovered evaluation into a Recipe and writing it (never over a file unasked)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autombw_cli.errors import ConfigError, OutputExistsError
from autombw_cli.recipe import Formula, Recipe, write_recipe_files
from autombw_cli.recover.values import RecoveredSource
from autombw_cli.search.evaluation import Evaluation


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
    evaluation: Evaluation,
    *,
    model_a: str,
    model_b: str,
    output_name: str,
    base: Recipe | None = None,
    model_c: str = "",
) -> Recipe:
    """A Recipe for a recovered evaluation (model names from ``base`` where not given). An
    add-difference (or LoRA) ``base`` keeps its formula and C; ``model_c`` makes the recipe
    an add difference (refused for a ``base`` that says otherwise: the source knows better)."""
    if base is not None and model_c and not base.formula.needs_c:
        what = "a LoRA bake" if base.formula is Formula.LORA else "a weighted sum of A and B"
        raise ConfigError(
            f"--model-c was given but the source's recipe is {what}",
            hint="drop --model-c; a history CSV or log of an add-difference search takes it",
        )
    c = model_c or (base.model_c if base is not None else None) or None
    formula = Formula.WEIGHTED_SUM if c is None else Formula.ADD_DIFFERENCE
    if base is not None and base.formula is Formula.LORA:
        formula = Formula.LORA
    if base is not None:
        return Recipe(
            model_a or base.model_a,
            model_b or base.model_b,
            output_name or base.output_name,
            evaluation.weights,
            base.position_id_fix,
            base.output_mode,
            model_c=c,
            formula=formula,
        )
    return Recipe(model_a, model_b, output_name, evaluation.weights, model_c=c, formula=formula)


def write_recovered_recipe(recipe: Recipe, path: Path | str, *, force: bool) -> tuple[Path, Path]:
    stem = check_recipe_outputs(path, force=force)
    return write_recipe_files(recipe, stem)


MERGE_DTYPES = ("fp16", "bf16", "fp32")


@dataclass(frozen=True)
class OutputPlan:
    """What `autombw recover` will write: checked up front so an error writes nothing."""

    recipe: Recipe
    recipe_stem: Path | None = None  # --out
    merge_inputs: tuple[Path, Path] | None = None  # --merge A B
    merge_output: Path | None = None  # -o
    dtype: str | None = None
    force: bool = False
    merge_c: Path | None = None  # --model-c with --merge: C's file (add difference)

    def warnings(self) -> list[str]:
        """What the user may not expect of the files it writes."""
        empty = [
            role for role, name in (("A", self.recipe.model_a), ("B", self.recipe.model_b))
            if not name
        ]  # fmt: skip
        if self.recipe_stem is None or not empty:
            return []
        flags = " and ".join(f"--model-{role.lower()}" for role in empty)
        return [
            f"the recipe's model{'s' if len(empty) > 1 else ''} {' and '.join(empty)} "
            f"{'are' if len(empty) > 1 else 'is'} empty (the source does not name "
            f"{'them' if len(empty) > 1 else 'it'}): pass {flags} FILE.safetensors, or fill in "
            "the model lines before merging with the recipe"
        ]


def check_merge_options(
    merge: tuple[Path, Path] | None, output: Path | None, dtype: str | None
) -> None:
    if merge is not None and output is None:
        raise ConfigError("--merge A B needs -o OUT (the merged checkpoint to write)")
    if output is not None and merge is None:
        raise ConfigError("-o OUT is the merged checkpoint of --merge A B; pass --merge too")
    if dtype is not None and dtype not in MERGE_DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(MERGE_DTYPES)}")


def plan_outputs(
    result: RecoveredSource,
    *,
    out: Path | None = None,
    merge: tuple[Path, Path] | None = None,
    output: Path | None = None,
    dtype: str | None = None,
    force: bool = False,
    model_a: str = "",
    model_b: str = "",
    name: str = "",
    model_c: str = "",
) -> OutputPlan:
    """The recipe for the best evaluation and where it goes; refuses existing files unless
    ``force``. Model names default to the source recipe's, then to the --merge file names; the
    output name to --name, the merged file's stem, the source recipe's, then --out's stem."""
    check_merge_options(merge, output, dtype)
    stem = check_recipe_outputs(out, force=force) if out is not None else None
    if output is not None and output.exists() and not force:
        raise OutputExistsError(f"{output} already exists", hint="pass --force to overwrite it")
    recipe = recipe_for(
        result.best(),
        model_a=model_a or (merge[0].name if merge else ""),
        model_b=model_b or (merge[1].name if merge else ""),
        output_name=name or (output.stem if output else ""),
        base=result.recipe,
        model_c=Path(model_c).name if model_c else "",
    )
    if not recipe.output_name and stem is not None:
        recipe = dataclasses.replace(recipe, output_name=stem.name)
    merge_c = None
    if merge is not None and recipe.formula.needs_c:
        if not model_c:
            raise ConfigError(
                f"the recovered recipe is an add-difference merge (C = {recipe.model_c}): "
                "--merge A B needs model C's file too",
                hint=f"add --model-c PATH/TO/{recipe.model_c}",
            )
        merge_c = Path(model_c)
    return OutputPlan(recipe, stem, merge, output, dtype, force, merge_c)


def write_outputs(plan: OutputPlan, report: Callable[[str], None] = lambda _: None) -> None:
    """Merge first (the long, fallible step), then the recipe files."""
    if plan.merge_inputs is not None and plan.merge_output is not None:
        from autombw_cli.merging.offline import merge_checkpoints  # heavy: torch

        a, b = plan.merge_inputs
        merge_checkpoints(
            a,
            b,
            plan.recipe,
            plan.merge_output,
            model_c=plan.merge_c,
            dtype=plan.dtype,
            force=plan.force,
        )
        inputs = f"{a.name} + {b.name}"
        if plan.merge_c is not None:
            inputs = f"{a.name} + ({b.name} - {plan.merge_c.name})"
        report(f"merged {inputs} -> {plan.merge_output}")
    if plan.recipe_stem is not None:
        txt, js = write_recipe_files(plan.recipe, plan.recipe_stem)
        report(f"wrote {txt} and {js}")
