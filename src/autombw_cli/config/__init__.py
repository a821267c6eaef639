"""The YAML search config: pydantic v2 models, loading, path resolution and redaction.

`load_config(path)` reads a YAML file into a `SearchConfig` with six sections: ``models``,
``instances``, ``payloads``, ``scorer``, ``search`` and ``outputs`` (and, for a chained merge,
``chain``: the steps after ``models``). Every model forbids unknown
keys; every error names the file, the line and the field path (see `autombw_cli.yamlio`).
Relative paths resolve against the config file's folder. Secrets never enter the config: basic
auth names the *environment variables* that hold them, resolved only when a client is built.

The loaded value is fully resolved: block names are canonical (``in5`` -> ``IN05``),
``search.blocks`` lists exactly the searched slots, ``search.frozen`` holds a value for every
other slot, each pass has its early-stopping settings and every path is absolute.

Modules: `fields` (strict base model, resolved paths), `sections` (models, instances, payloads,
outputs), `search_section` (search), and this one (the whole config, loading, redaction).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, model_validator

from autombw_cli.blocks import Weights
from autombw_cli.config.chain_section import ChainStep, check_chain
from autombw_cli.config.fields import (
    StrictModel,
    not_found,
    parse_duration,
    resolve_path,
    validation_context,
)
from autombw_cli.config.passes import EarlyStoppingConfig, PassConfig
from autombw_cli.config.search_section import InitialConfig, SchedulerConfig, SearchSettings
from autombw_cli.config.sections import (
    BasicAuthConfig,
    Instances,
    ModelsConfig,
    OutputsConfig,
    PayloadsConfig,
    SimulatedInstances,
    WebUIInstance,
    check_unique_instances,
)
from autombw_cli.errors import AutombwError, ConfigError
from autombw_cli.recipe import Formula
from autombw_cli.scoring.settings import ScorerConfig, ScorerPaths
from autombw_cli.yamlio import FieldError, raise_validation_error, read_document

__all__ = [
    "BasicAuthConfig",
    "ChainStep",
    "ConfigError",
    "EarlyStoppingConfig",
    "InitialConfig",
    "ModelsConfig",
    "OutputsConfig",
    "PassConfig",
    "PayloadsConfig",
    "SchedulerConfig",
    "ScorerConfig",
    "SearchConfig",
    "SearchSettings",
    "SimulatedInstances",
    "WebUIInstance",
    "config_json_schema",
    "load_config",
    "parse_duration",
]

_SECRET_KEY = re.compile(
    r"(^|_)(pass|passwd|password|secret|token|api_?key|credentials?)($|_)", re.IGNORECASE
)


# --- the whole config -------------------------------------------------------------------
class SearchConfig(StrictModel):
    """A complete search: what to merge, where to render, how to score, how to search."""

    models: ModelsConfig
    instances: Instances
    payloads: PayloadsConfig
    scorer: ScorerConfig = Field(default_factory=ScorerConfig)
    search: SearchSettings = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    outputs: OutputsConfig = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    chain: list[ChainStep] | None = Field(
        None,
        min_length=1,
        description="A chained merge: the steps after models (step 1), each merging the "
        "previous step's result (as A) with its own model B",
    )

    _source: Path | None = PrivateAttr(None)
    _initial: Weights | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> SearchConfig:
        """Cross-section checks and resolution (block names need ``models.arch``).

        The sections are frozen, so resolved copies replace them here, once, while the model
        is being built; nothing changes it afterwards.
        """
        arch = self.models.arch
        object.__setattr__(self, "scorer", _resolve_scorer_paths(self.scorer, info))
        if isinstance(self.instances, SimulatedInstances):
            sim_arch = self.instances.arch or arch
            if sim_arch is not arch:
                raise FieldError(
                    ("instances", "arch"),
                    f"simulated arch {sim_arch.value} differs from models.arch {arch.value}",
                )
            object.__setattr__(self, "instances", self.instances.model_copy(update={"arch": arch}))
        else:
            check_unique_instances(self.instances)
        search = self.search
        initial = search.initial.parse(arch, search.extrapolation) if search.initial else None
        self._initial = initial
        lora = self.models.formula is Formula.LORA
        object.__setattr__(self, "search", self.search.resolve_slots(arch, initial, lora=lora))
        o = self.outputs
        if (
            o.final_merge
            and o.merge_via == "offline"
            and not (self.models.a_file and self.models.b_file)
        ):
            raise FieldError(
                ("outputs", "merge_via"),
                "an offline final merge needs models.a_file and models.b_file",
            )
        if o.final_merge and o.merge_via == "offline" and self.models.c and not self.models.c_file:
            raise FieldError(
                ("outputs", "merge_via"),
                "an offline final add-difference merge needs models.c_file too",
            )
        if self.chain is not None:
            check_chain(
                self.models,
                self.chain,
                offline_final_merge=o.final_merge and o.merge_via == "offline",
                arch=arch,
                extrapolation=search.extrapolation,
            )
        return self

    # --- reading ------------------------------------------------------------------------
    @property
    def source(self) -> Path | None:
        """The file this config was loaded from (None when built in code)."""
        return self._source

    @property
    def simulated(self) -> bool:
        return isinstance(self.instances, SimulatedInstances)

    def initial_weights(self) -> Weights | None:
        """``search.initial`` parsed into `Weights` (None when not given)."""
        return self._initial

    def warnings(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Things that are valid but probably not what the user wants."""
        out: list[str] = []
        if not self.simulated:
            for inst in self.instances:  # type: ignore[union-attr]
                if inst.auth and inst.auth.missing(environ):
                    out.append(
                        f"instance {inst.name}: environment variable(s) "
                        f"{', '.join(inst.auth.missing(environ))} not set (needed at run time)"
                    )
        budgets = [p.max_evaluations for p in self.search.passes if p.max_evaluations]
        given = "passes" in self.search.model_fields_set  # not the default passes' caps
        if given and budgets and sum(budgets) > self.search.max_evaluations:
            out.append(
                f"the passes' max_evaluations add up to {sum(budgets)}, more than "
                f"search.max_evaluations ({self.search.max_evaluations}); the total wins"
            )
        names = [name for p in self.search.passes for name in _optimizer_names(p)]
        modelled = [name for name in names if name in _WORSE_WITH_PRUNING]
        if self.search.pruning is not None and modelled:
            out.append(
                f"search.pruning with {' and '.join(dict.fromkeys(modelled))} passes: these "
                "Gaussian processes learn from a pruned candidate's estimated score, and the "
                "best merge after an hour was worse with pruning than without on noisy scores "
                "and no better on quiet ones (BENCHMARKS.md, 'Pruning and top-k validation'); "
                "pruning suits cmaes"
            )
        slow = self._slow_pass_past(_LONG_SEARCH)
        if slow:
            out.append(
                f"search.max_evaluations is {self.search.max_evaluations} and the pass running "
                f"past evaluation {_LONG_SEARCH} uses {slow}, which refits a Gaussian process on "
                "every ask: on one CPU core about 9 s per ask at 1000 evaluations and 46 s "
                "(Bayesian) at 2000 (BENCHMARKS.md, 'Ask cost'), so the WebUIs wait once an ask "
                "outlasts an evaluation; end with a cheap pass, e.g. passes: [{optimizer: gp, "
                "max_evaluations: 100}, {optimizer: portfolio, max_evaluations: 900}, "
                "{optimizer: HillClimbing}]"
            )
        return out

    def _slow_pass_past(self, n: int) -> str:
        """The Gaussian-process optimizers of the pass that runs evaluation ``n + 1`` ("gp and
        Bayesian"), or "" when the search ends sooner or that pass asks cheaply."""
        if self.search.max_evaluations <= n:
            return ""
        start = 0
        for p in self.search.passes:
            if p.max_evaluations is None or start + p.max_evaluations > n:
                slow = [name for name in _optimizer_names(p) if name in _REFIT_EVERY_ASK]
                return " and ".join(slow)
            start += p.max_evaluations
        return ""

    def redacted_dump(self) -> dict[str, Any]:
        """JSON-able resolved config with anything secret-looking replaced (for run folders)."""
        data = self.model_dump(mode="json")
        if data.get("chain") is None:  # a config without a chain dumps as it always did
            data.pop("chain", None)
        return _redact(data)

    def redacted_yaml(self) -> str:
        return yaml.safe_dump(self.redacted_dump(), sort_keys=False, allow_unicode=True)


_SCORER_FILES = ("checkpoint", "med_config", "clip", "head")
# optimizers whose best merge after an hour was worse with pruning than without on noisy scores
# (they model score values, and learn a pruned candidate's low estimate):
# benchmarks/pruning_validation.py
_WORSE_WITH_PRUNING = ("gp", "Bayesian")
# optimizers whose ask refits a Gaussian process on the whole history (benchmarks/ask_cost.py),
# and the length past which that takes seconds per ask
_REFIT_EVERY_ASK = ("gp", "Bayesian")
_LONG_SEARCH = 1000


def _optimizer_names(p: PassConfig) -> list[str]:
    """A pass's optimizer, or a portfolio's members, each once."""
    members = (m["optimizer"] for m in p.settings.get("members", ()))
    return list(dict.fromkeys([p.optimizer, *members]))


def _resolve_paths(paths: ScorerPaths, info: ValidationInfo, where: tuple) -> ScorerPaths:
    """Scorer weight paths against the config folder; the ones that are set must exist."""
    check = validation_context(info).get("check_paths", True)
    update: dict[str, Path] = {}
    for key in type(paths).model_fields:
        value = getattr(paths, key)
        if value is None:
            continue
        resolved = resolve_path(value, info)
        if check and key in _SCORER_FILES and not resolved.is_file():
            raise FieldError((*where, key), not_found("file", resolved))
        if check and key == "tokenizer" and not resolved.exists():
            raise FieldError((*where, key), not_found("tokenizer folder or vocab.txt", resolved))
        update[key] = resolved
    return paths.model_copy(update=update)


def _resolve_scorer_paths(scorer: ScorerConfig, info: ValidationInfo) -> ScorerConfig:
    members = [
        m.model_copy(
            update={"paths": _resolve_paths(m.paths, info, ("scorer", "ensemble", i, "paths"))}
        )
        for i, m in enumerate(scorer.ensemble)
    ]
    paths = _resolve_paths(scorer.paths, info, ("scorer", "paths"))
    return scorer.model_copy(update={"paths": paths, "ensemble": members})


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if isinstance(value, str) and _SECRET_KEY.search(key) and not key.endswith("_env"):
        return "***"
    return value


# --- loading ----------------------------------------------------------------------------
def load_config(path: Path | str, *, check_paths: bool = True) -> SearchConfig:
    """Read and validate a YAML search config (ConfigError naming file, line and field)."""
    p = Path(path)
    doc = read_document(p, what="config")
    if doc.data is None:
        raise ConfigError(
            f"{p}: the config file is empty", hint="start from configs/quickstart.yaml"
        )
    if not isinstance(doc.data, dict):
        raise ConfigError(
            f"{p}: expected a mapping of sections (models, instances, payloads, ...), "
            f"got {type(doc.data).__name__}"
        )
    context = {"base_dir": p.resolve().parent, "check_paths": check_paths}
    try:
        cfg = SearchConfig.model_validate(doc.data, context=context)
    except ValidationError as exc:
        raise_validation_error(exc, doc, SearchConfig)
    except AutombwError as exc:  # raised by a library call outside a validator's FieldError
        raise ConfigError(f"{p}: {exc.message}", hint=exc.hint) from None
    cfg._source = p
    return cfg


def config_json_schema() -> dict[str, Any]:
    """The JSON schema of the config file (for editor completion)."""
    schema = SearchConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "autombw search config"
    return schema
