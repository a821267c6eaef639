"""The wrap-up of a run: best recipe, plots, best images, the final merge and ``summary.json``.

Called once the scheduler has stopped (also after Ctrl-C, when every instance is down, or before
a fatal error is raised); everything it writes is atomic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autombw_cli.errors import AutombwError
from autombw_cli.search.events import EventSink, OutputWritten, RunWarning, StopReason
from autombw_cli.search.work import Instance

if TYPE_CHECKING:
    from autombw_cli.search.records import RecordBook

log = logging.getLogger(__name__)

_EXIT = {StopReason.ALL_DOWN: 3, StopReason.INTERRUPTED: 130, StopReason.FAILED: 1}


async def write_outputs(
    *,
    config: Any,
    run_dir: Path,
    reason: StopReason,
    records: RecordBook,
    instances: Sequence[Instance],
    endpoints: Sequence[Any],
    busy: dict[str, float],
    budget: int | None,
    started: float,
    emit: EventSink,
) -> dict[str, str]:
    """Write every output of a run; returns {what: path}. ``records`` holds the best
    evaluations in full and every evaluation's number and score (the rest is in the journal)."""
    from autombw_cli.report import summary as sm

    cfg = config
    arch = cfg.models.arch
    outputs: dict[str, str] = {}
    report = [r.as_report() for r in records.top()]
    trace = records.trace()

    def wrote(what: str, path: Path) -> None:
        outputs[what] = str(path)
        emit(OutputWritten(path=path, what=what))

    best = sm.top_k(report, 1)
    if best:
        recipe = sm.best_recipe(
            best[0], model_a=cfg.models.a, model_b=cfg.models.b, output=cfg.models.output
        )
        txt, js = sm.write_best_recipe(recipe, run_dir)
        wrote("recipe", txt)
        wrote("recipe_json", js)
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
            path = await final_merge(cfg, recipe, endpoints, run_dir, emit)
            if path:
                wrote("checkpoint", Path(path))
    summary = sm.build_summary(
        name=run_dir.name,
        run_dir=run_dir,
        reason=reason.value,
        exit_code=_EXIT.get(reason, 0),
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
        arch=arch,
        outputs=outputs,
        passes=[
            {"index": i + 1, "optimizer": p.optimizer, "max_evaluations": p.max_evaluations}
            for i, p in enumerate(cfg.search.passes)
        ],
    )
    wrote("summary", sm.write_summary(summary, run_dir))
    return outputs


async def final_merge(
    cfg: Any, recipe: Any, endpoints: Sequence[Any], run_dir: Path, emit: EventSink
) -> str | None:
    """The best merge as a checkpoint: through the bridge's save (the first instance that
    manages), or the offline merge into the run folder. Failures are warnings."""
    try:
        if cfg.outputs.merge_via == "offline":
            from autombw_cli.merging.offline import merge_checkpoints

            out = run_dir / f"{recipe.output_name}.{cfg.outputs.format}"
            await asyncio.to_thread(
                merge_checkpoints,
                cfg.models.a_file,
                cfg.models.b_file,
                recipe,
                out,
                dtype=cfg.outputs.dtype,
                force=True,
            )
            return str(out)
        for e in endpoints:
            try:
                saved = await e.client.bridge_save(
                    recipe.output_name,
                    recipe.weights,
                    dtype=cfg.outputs.dtype,
                    overwrite=True,
                    fmt=cfg.outputs.format,
                )
            except AutombwError as exc:
                log.warning("%s: saving the merge failed: %s", e.label, exc)
                continue
            if e.simulated:  # the simulator's folder vanishes with it: keep a copy
                return str(await asyncio.to_thread(_copy_into, Path(saved.path), run_dir))
            return f"{e.label}:{saved.path}"
        emit(RunWarning(message="no instance could save the final merge"))
    except AutombwError as exc:
        emit(RunWarning(message=f"the final merge failed: {exc.message}"))
    return None


def _copy_into(path: Path, folder: Path) -> Path:
    """Copy a checkpoint into ``folder``, atomically (its recipe files are already there)."""
    import shutil

    from autombw_cli.atomic import atomic_path

    target = folder / path.name
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    return target
