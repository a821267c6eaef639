"""The ``chain`` section of the config: the steps of a chained merge after the first.

``models`` is step 1 (A + B, any formula); each ``chain`` item is one more step whose model A is
the previous step's result and which names only its new model B (and C for add difference).
A step may override ``payloads`` and a few ``search`` settings (budget, passes, time, seed, the
start point); everything else (instances, scorer, the search space, outputs) is the top level's.

`check_chain` is the cross-section check `autombw_cli.config.SearchConfig` runs once the top
level is resolved; `step_models` is a step's ``models`` section once its A is known.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from autombw_cli.config.fields import Duration, ExistingFile, StrictModel
from autombw_cli.config.passes import PassConfig
from autombw_cli.config.search_section import MAX_PASSES, InitialConfig
from autombw_cli.config.sections import ModelsConfig, PayloadsConfig
from autombw_cli.recipe import Formula
from autombw_cli.webui.bridge.names import checkpoint_stem
from autombw_cli.yamlio import FieldError

if TYPE_CHECKING:
    from autombw_cli.blocks import Arch

MAX_CHAIN_STEPS = 16  # steps after the first


class StepSearch(StrictModel):
    """What a chain step may change of the top-level ``search`` (unset: the top level's)."""

    max_evaluations: int | None = Field(None, ge=1, description="This step's evaluation budget")
    max_time: Duration = Field(None, gt=0, description="This step's time budget (90m, 2h...)")
    passes: list[PassConfig] | None = Field(
        None, min_length=1, max_length=MAX_PASSES, description="This step's passes"
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="This step's seed")
    initial: InitialConfig | None = Field(
        None,
        description="This step's first candidate (default: all blocks 0, the previous "
        "step's result unchanged)",
    )


class ChainStep(StrictModel):
    """One step after the first: the previous step's result is A, this step names B."""

    b: str = Field(min_length=1, description="This step's model B (checkpoint title or name)")
    formula: Formula = Field(
        Formula.WEIGHTED_SUM,
        description="weighted_sum: A + (B - A)*w; add_difference: A + (B - C)*w (needs c)",
    )
    c: str | None = Field(None, min_length=1, description="Model C for add_difference")
    b_file: ExistingFile | None = Field(None, description="Local file of B (offline merge)")
    c_file: ExistingFile | None = Field(None, description="Local file of C (offline merge)")
    payloads: PayloadsConfig | None = Field(None, description="This step's payloads")
    search: StepSearch | None = Field(None, description="This step's budget, passes, seed")

    @model_validator(mode="before")
    @classmethod
    def _no_model_a(cls, data: Any) -> Any:
        if isinstance(data, dict) and "a" in data:
            raise FieldError(
                ("a",),
                "a chain step has no model A: its A is the previous step's result; give only "
                "b (and c for add_difference)",
            )
        return data

    @model_validator(mode="after")
    def _formula(self) -> ChainStep:
        if self.formula.needs_c:
            if self.c is None:
                raise FieldError(
                    ("c",),
                    "formula add_difference (A + (B - C)*w) needs model C: B's base model",
                )
            if self.c == self.b:
                raise FieldError(("c",), f"model C is model B ({self.b!r}): B - C would be zero")
        else:
            for name in ("c", "c_file"):
                if getattr(self, name) is not None:
                    raise FieldError(
                        (name,),
                        f"{name} is only used by formula add_difference, but this step's "
                        f"formula is {self.formula.value}",
                    )
        return self


def check_chain(
    models: ModelsConfig,
    steps: list[ChainStep],
    *,
    offline_final_merge: bool,
    arch: Arch,
    extrapolation: bool,
) -> None:
    """Cross-section checks of a chain (paths are relative to the config, e.g. ``chain.0.b``)."""
    if len(steps) > MAX_CHAIN_STEPS:
        raise FieldError(("chain",), f"at most {MAX_CHAIN_STEPS} steps after models")
    lora = [("models", "formula")] if models.formula is Formula.LORA else []
    lora += [("chain", i, "formula") for i, s in enumerate(steps) if s.formula is Formula.LORA]
    if lora:  # not built for chains yet: the LoRA search and bake work alone
        raise FieldError(
            lora[0],
            "formula lora (LoRA block weights) is not chained yet; search or bake the LoRA "
            "on its own (a search without chain:, or autombw merge A LORA --lora)",
        )
    out = checkpoint_stem(models.output)
    for i, step in enumerate(steps):
        names = [("b", step.b, step.b_file)] + ([("c", step.c, step.c_file)] if step.c else [])
        for role, name, file in names:
            stems = {checkpoint_stem(name)} | ({checkpoint_stem(file.name)} if file else set())
            if out in stems:
                raise FieldError(
                    ("chain", i, role),
                    f"model {role.upper()} of chain step {i + 2} ({name}) is models.output "
                    f"({models.output}): the final merge would overwrite it",
                )
        if offline_final_merge and step.b_file is None:
            raise FieldError(
                ("chain", i, "b_file"),
                "an offline final merge of a chain needs every step's b_file",
            )
        if offline_final_merge and step.c is not None and step.c_file is None:
            raise FieldError(
                ("chain", i, "c_file"),
                "an offline final merge of an add-difference step needs its c_file",
            )
        initial = step.search.initial if step.search else None
        if initial is not None:
            try:
                initial.parse(arch, extrapolation)
            except FieldError as exc:
                raise FieldError(("chain", i, *exc.path), exc.message) from None


def step_models(models: ModelsConfig, step: ChainStep, *, a: str, output: str) -> ModelsConfig:
    """The ``models`` section of a step: A is the previous step's result (``a``), B (and C)
    this step's, ``output`` the name its result is saved under."""
    return ModelsConfig.model_validate(
        {
            "a": a,
            "b": step.b,
            "output": output,
            "arch": models.arch,
            "b_file": step.b_file,
            "formula": step.formula,
            "c": step.c,
            "c_file": step.c_file,
        },
        context={"check_paths": False},
    )
