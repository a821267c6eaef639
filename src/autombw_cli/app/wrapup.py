"""The wrap-up of a run: best recipe, plots, best images, the final merge and ``summary.json``.

The recipe and the final merge are the search's best, or the validated winner when the run was
validated (``app/validate.py``); ``summary.json`` then has a ``validation`` section.

Called once the scheduler has stopped (also after Ctrl-C, when every instance is down, or before
a fatal error is raised); everything it writes is atomic.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from autombw_cli import exit_codes
from autombw_cli.app.instances import Endpoint
from autombw_cli.app.records import RecordBook
from autombw_cli.app.validate import ValidationReport
from autombw_cli.atomic import atomic_path
from autombw_cli.config import SearchConfig
from autombw_cli.errors import AutombwError, OutputExistsError, WeightsError
from autombw_cli.recipe import Formula, Recipe
from autombw_cli.report import summary as sm
from autombw_cli.search.events import EventSink, OutputWritten, RunWarning, StopReason
from autombw_cli.search.work import Instance
from autombw_cli.webui.errors import WebUIHTTPError
from autombw_cli.webui.models import SaveResult

log = logging.getLogger(__name__)

# how a search that raised no error ends (the others end with 0, or with a failed final
# merge's code)
_STOP_EXIT = {
    StopReason.ALL_DOWN: exit_codes.WEBUI,
    StopReason.INTERRUPTED: exit_codes.INTERRUPTED,
    StopReason.FAILED: exit_codes.FAILED,
}


def exit_code_for(reason: StopReason) -> int:
    """The process's exit code for a search that ended for ``reason``."""
    return _STOP_EXIT.get(reason, exit_codes.OK)


async def write_outputs(
    *,
    config: SearchConfig,
    run_dir: Path,
    reason: StopReason,
    records: RecordBook,
    instances: Sequence[Instance],
    endpoints: Sequence[Endpoint],
    busy: dict[str, float],
    budget: int | None,
    started: float,
    emit: EventSink,
    validation: ValidationReport | None = None,
) -> dict[str, str]:
    """Write every output of a run; returns {what: path}. ``records`` holds the best
    evaluations in full and every evaluation's number and score (the rest is in the journal).
    With a ``validation``, the recipe and the final merge are its winner's."""
    cfg = config
    arch = cfg.models.arch
    lora = cfg.models.formula is Formula.LORA
    outputs: dict[str, str] = {}
    merge_error: AutombwError | None = None
    report = records.top()
    trace = records.trace()

    def wrote(what: str, path: Path) -> None:
        outputs[what] = str(path)
        emit(OutputWritten(path=path, what=what))

    best = sm.top_k(report, 1)
    if best and validation is not None:
        best = [validation.winner]
    if best:
        recipe = sm.best_recipe(
            best[0],
            model_a=cfg.models.a,
            model_b=cfg.models.b,
            output=cfg.models.output,
            model_c=cfg.models.c,
            lora=lora,
        )
        txt, js = sm.write_best_recipe(recipe, run_dir)
        wrote("recipe", txt)
        wrote("recipe_json", js)
        if lora:
            try:
                wrote("lbw_preset", sm.write_lbw_line(recipe, run_dir))
            except WeightsError as exc:  # e.g. OUT held at 0.5: no LBW vector can say it
                emit(RunWarning(message=f"no LBW preset line: {exc.message}"))
        if (run_dir / sm.BEST_IMAGES_DIR).is_dir():
            wrote("best_images", run_dir / sm.BEST_IMAGES_DIR)
        try:
            plots = await asyncio.to_thread(sm.write_plots, report, arch, run_dir, trace)
            for path in plots:
                wrote(f"plot_{path.stem}", path)
        except Exception as exc:  # a plotting bug must not lose the run's other outputs
            log.exception("plots failed")
            emit(RunWarning(message=f"could not draw the plots: {exc}"))
        finished = reason not in (StopReason.INTERRUPTED, StopReason.FAILED)
        if cfg.outputs.final_merge and finished:
            path, merge_error = await final_merge(cfg, recipe, endpoints, run_dir, emit)
            if path:
                wrote("checkpoint", Path(path))
    summary = sm.build_summary(
        name=run_dir.name,
        run_dir=run_dir,
        reason=reason.value,
        exit_code=exit_code_for(reason) or (merge_error.exit_code if merge_error else 0),
        records=report,
        trace=trace,
        budget=budget,
        elapsed_s=time.monotonic() - started,
        failed=sum(i.failures for i in instances),
        instances={
            i.label: {
                "evaluations": i.evaluations,
                "failures": i.failures,
                "busy_fraction": round(busy.get(i.label, 0.0), 4),
                "state": i.state.value,
                "last_error": i.last_error,
                "webui_version": i.webui_version,
            }
            for i in instances
        },
        model_a=cfg.models.a,
        model_b=cfg.models.b,
        model_c=cfg.models.c,
        lora=lora,
        arch=arch,
        outputs=outputs,
        passes=[
            {"index": i + 1, "optimizer": p.optimizer, "max_evaluations": p.max_evaluations}
            for i, p in enumerate(cfg.search.passes)
        ],
    )
    if validation is not None:
        summary["validation"] = validation.to_dict()
    wrote("summary", sm.write_summary(summary, run_dir))
    if merge_error is not None and not exit_code_for(reason):  # else the run fails already
        raise _final_merge_failed(merge_error, outputs)
    return outputs


def _final_merge_failed(cause: AutombwError, outputs: dict[str, str]) -> AutombwError:
    """The run searched, but its checkpoint was not written: fail with the cause's exit code
    (its family: 3 a WebUI refused or failed the save, 4 the checkpoints cannot be merged,
    7 every name was taken...), pointing at the best recipe, which was written."""
    where = outputs.get("recipe", "the run folder")
    error = AutombwError(
        f"the search finished but the final merge failed: {cause.message}",
        hint=(f"{cause.hint}; " if cause.hint else "")
        + f"the best recipe is in {where}: `autombw merge A B --recipe {where} -o OUT` "
        "makes the checkpoint offline",
    )
    error.exit_code = cause.exit_code
    error.__cause__ = cause
    return error


async def final_merge(
    cfg: SearchConfig, recipe: Recipe, endpoints: Sequence[Endpoint], run_dir: Path, emit: EventSink
) -> tuple[str | None, AutombwError | None]:
    """The best merge as a checkpoint: through the bridge's save (the first instance that
    manages), or the offline merge into the run folder. Returns (where it went, None), or
    (None, why not).

    An existing checkpoint (or recipe) of that name is replaced only with
    ``outputs.overwrite: true``; otherwise the merge takes the first free name of
    ``<output>-2``, ``<output>-3``... and says so (a week of search is never lost to a name).
    """
    overwrite = cfg.outputs.overwrite
    base = recipe.output_name
    try:
        if cfg.outputs.merge_via == "offline":
            # lazily: the offline merge needs torch, which a WebUI-side final merge does not
            from autombw_cli.merging.offline import merge_checkpoints

            name = base if overwrite else _free_offline_name(run_dir, base, cfg.outputs.format)
            _announce_rename(emit, base, name, "the run folder")
            out = run_dir / f"{name}.{cfg.outputs.format}"
            await asyncio.to_thread(
                merge_checkpoints,
                cfg.models.a_file,
                cfg.models.b_file,
                recipe,
                out,
                model_c=cfg.models.c_file,
                dtype=cfg.outputs.dtype,
                force=True,  # checked above; the recipe files beside it are this run's own
            )
            return str(out), None
        last: AutombwError | None = None
        for e in endpoints:
            try:
                saved = await _bridge_save_free_name(e, cfg, recipe, overwrite=overwrite)
            except AutombwError as exc:
                log.warning("%s: saving the merge failed: %s", e.label, exc)
                last = exc
                continue
            _announce_rename(emit, base, Path(saved.path).name.rsplit(".", 1)[0], e.label)
            if e.simulated:  # the simulator's folder vanishes with it: keep a copy
                return str(await asyncio.to_thread(_copy_into, Path(saved.path), run_dir)), None
            return f"{e.label}:{saved.path}", None
        if last is None:
            last = AutombwError("no instance to save the final merge on")
        emit(RunWarning(message=f"no instance could save the final merge: {last.message}"))
        return None, last
    except AutombwError as exc:
        emit(RunWarning(message=f"the final merge failed: {exc.message}"))
        return None, exc


MAX_NAME_TRIES = 100


def _candidate_names(base: str) -> list[str]:
    return [base, *(f"{base}-{n}" for n in range(2, MAX_NAME_TRIES + 1))]


def _free_offline_name(run_dir: Path, base: str, fmt: str) -> str:
    """The first of ``base``, ``base-2``... with no checkpoint (and, but for ``base``, whose
    recipe files this run has just written, no recipe files) in the run folder."""
    for name in _candidate_names(base):
        taken = [run_dir / f"{name}.{fmt}"]
        if name != base:
            taken += [run_dir / f"{name}.recipe.txt", run_dir / f"{name}.recipe.json"]
        if not any(p.exists() for p in taken):
            return name
    raise OutputExistsError(
        f"{run_dir}: {base}.{fmt} and {MAX_NAME_TRIES - 1} numbered names are taken",
        hint="set outputs.overwrite: true, or choose another models.output",
    )


async def _bridge_save_free_name(
    e: Endpoint, cfg: SearchConfig, recipe: Recipe, *, overwrite: bool
) -> SaveResult:
    """Save through ``e``'s bridge under the first name it does not refuse as existing."""
    names = [recipe.output_name] if overwrite else _candidate_names(recipe.output_name)
    for name in names:
        try:
            return await e.client.bridge_save(
                name,
                recipe.weights,
                dtype=cfg.outputs.dtype,
                overwrite=overwrite,
                fmt=cfg.outputs.format,
            )
        except WebUIHTTPError as exc:
            if exc.kind != "OutputExists":
                raise
    raise OutputExistsError(
        f"{e.label}: {recipe.output_name} and {MAX_NAME_TRIES - 1} numbered names are taken "
        "in the WebUI's checkpoint folder",
        hint="set outputs.overwrite: true, or choose another models.output",
    )


def _announce_rename(emit: EventSink, base: str, name: str, where: str) -> None:
    if name != base:
        emit(
            RunWarning(
                message=f"a checkpoint named {base} already exists in {where}: the final "
                f"merge is saved as {name} instead (outputs.overwrite: true replaces it)"
            )
        )


def _copy_into(path: Path, folder: Path) -> Path:
    """Copy a checkpoint into ``folder``, atomically (its recipe files are already there)."""
    target = folder / path.name
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    return target
