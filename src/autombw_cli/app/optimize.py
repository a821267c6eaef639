"""`optimize`: autombw's search core for any objective, as a Python function.

``optimize(objective, arch=..., search={...})`` runs exactly what ``autombw search`` runs
between the WebUIs and the journal: the ``search:`` section validated by the same models (the
same defaults, the same errors with the field path), the same search space, passes, early
stopping, warm starts and de-duplication (`Campaign`), with ``objective(weights)`` in place of
merge → render → score. Use it to drive your own pipeline (ComfyUI, diffusers) with autombw's
optimizer; the benchmarks and tests use it too.

`search_space` and `pass_plans` turn a resolved ``search`` section into what the campaign
takes; `Run` builds its campaign with them too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from autombw_cli.blocks import Arch, Weights
from autombw_cli.config.search_section import SearchSettings
from autombw_cli.errors import AutombwError, ConfigError
from autombw_cli.search.campaign import Campaign, PassPlan, optimizer_factory
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.objective_loop import Objective, ObjectiveLoop, SearchResult
from autombw_cli.search.space import SearchSpace
from autombw_cli.yamlio import Document, FieldError, format_path, raise_validation_error

WHERE = Path("optimize(search=...)")  # how errors name the mapping (there is no file)


def search_space(settings: SearchSettings, arch: Arch, initial: Weights | None) -> SearchSpace:
    """The space a resolved ``search`` section describes (`SearchSettings.resolve_slots`)."""
    return SearchSpace.build(
        arch,
        searched=list(settings.blocks),
        frozen=dict(settings.frozen),
        clamps={k: tuple(v) for k, v in settings.clamps.items()},
        groups=[list(g) for g in settings.groups],
        intervals=settings.grid_intervals,
        extrapolation=settings.extrapolation,
        base=initial,
        text_encoder=None if initial is None else initial.text_encoder,
    )


def pass_plans(settings: SearchSettings) -> list[PassPlan]:
    return [
        PassPlan(
            index=i + 1,
            optimizer=p.optimizer,
            settings=dict(p.settings),
            max_evaluations=p.max_evaluations,
            early_stopping=p.early_stopping,
        )
        for i, p in enumerate(settings.passes)
    ]


def resolve_search(
    search: Mapping[str, Any] | None, arch: Arch | str
) -> tuple[SearchSettings, Arch, Weights | None]:
    """Validate a ``search:`` mapping as the config does: the settings with every block
    resolved, the arch and the initial weights. Errors are `ConfigError`s naming the field
    (``search.passes[0].optimizer: ...``)."""
    try:
        arch = Arch(arch)
    except ValueError:
        raise ConfigError(
            f"unknown arch {arch!r}", hint=f"one of {', '.join(a.value for a in Arch)}"
        ) from None
    data = dict(search or {})
    try:
        settings = SearchSettings.model_validate(data)
    except ValidationError as exc:
        raise_validation_error(exc, Document(WHERE, data), SearchSettings, prefix=("search",))
    try:
        initial = settings.initial.parse(arch, settings.extrapolation) if settings.initial else None
        return settings.resolve_slots(arch, initial), arch, initial
    except FieldError as exc:
        raise ConfigError(f"{WHERE}: {format_path(exc.path)}: {exc.message}") from None
    except AutombwError as exc:
        raise ConfigError(f"{WHERE}: {exc.message}", hint=exc.hint) from None


def optimize(
    objective: Objective,
    *,
    arch: Arch | str = "sd1",
    search: Mapping[str, Any] | None = None,
    seed: int | None = None,
    workers: int = 1,
    history: Iterable[Evaluation] = (),
    on_evaluation: Callable[[Evaluation], None] | None = None,
) -> SearchResult:
    """Search block weights that maximise ``objective``.

    ``objective(weights)`` returns a score (higher is better) or None when the evaluation
    failed (it is kept in the result, not told to the optimizer, and uses no budget).
    ``search`` is shaped like the config's ``search:`` section (``passes``,
    ``max_evaluations``, ``early_stopping``, ``blocks``, ``frozen``, ...; omitted keys take
    ``autombw search``'s defaults). ``seed`` replaces ``search.seed`` when given. ``workers``
    evaluations are in flight at once, finishing in a seeded random order (as N WebUI
    instances would; 1: a seeded search repeats exactly). ``history`` continues an earlier
    search (its evaluations, e.g. a previous result's); ``on_evaluation`` is called after
    each evaluation. Returns every evaluation in the order it finished, with ``.weights`` and
    ``.score``, and ``.best``. Raises `ConfigError` for an invalid ``search``.
    """
    data = dict(search or {})
    if seed is not None:
        data["seed"] = seed
    settings, arch, initial = resolve_search(data, arch)
    space = search_space(settings, arch, initial)
    past = list(history)
    loop = ObjectiveLoop(
        objective,
        workers=workers,
        seed=settings.seed,
        history=past,
        on_evaluation=on_evaluation,
    )
    campaign = Campaign(
        passes=pass_plans(settings),
        total_budget=settings.max_evaluations,
        tally=loop.tally,
        make_optimizer=optimizer_factory(space, settings.seed),
        record=loop.record,
        emit=lambda _event: None,
        max_time_s=settings.max_time,
        clock=time.monotonic,
        history=[e for e in past if e.ok],
        initial=[space.project(initial)] if initial is not None else [],
        lockstep=loop.lockstep,
    )
    return loop.run(campaign)
