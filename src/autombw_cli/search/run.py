"""`Run`: one search, from a config to a finished run folder.

The run owns everything a search needs (clients, simulators, scorer, campaign, journal) and
nothing lives in module globals. ``Run.create(config)`` makes ``runs/<name>-<timestamp>/`` with
the resolved config (secrets redacted), the expanded prompts and seeds, the journal and a log
file; ``Run.resume(run_dir)`` reopens one, rebuilding the optimizer from the journal.
``await run.execute(emit)`` does preflight, the search and the wrap-up (best recipe, summary,
plots, best images, final merge) and returns a `RunResult`.

Ctrl-C (SIGINT): the first press stops handing out candidates, finishes the evaluations in
flight and wraps up; the second aborts at once (the journal is fsynced row by row).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from autombw_cli.atomic import atomic_write_text
from autombw_cli.blocks import Weights
from autombw_cli.errors import AutombwError, ConfigError, JournalError
from autombw_cli.search import records as rec
from autombw_cli.search.campaign import Campaign, PassPlan, Scored
from autombw_cli.search.events import (
    EventSink,
    Notice,
    OutputWritten,
    RunFinished,
    RunStarted,
    RunWarning,
    StopReason,
)
from autombw_cli.search.scheduler import (
    Instance,
    Outcome,
    PromptSpec,
    Scheduler,
    SchedulerSettings,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
PROMPTS_FILE = "prompts.json"
LOG_FILE = "run.log"

EXIT_OK = 0
EXIT_ALL_DOWN = 3
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    reason: StopReason
    done: int
    best: Scored | None
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.reason is StopReason.ALL_DOWN:
            return EXIT_ALL_DOWN
        if self.reason is StopReason.INTERRUPTED:
            return EXIT_INTERRUPTED
        if self.reason is StopReason.FAILED:
            return 1  # the error raised afterwards decides the process's code
        return EXIT_OK


class Run:
    """One search run (see the module docstring)."""

    def __init__(
        self,
        config: Any,
        run_dir: Path,
        prompts: Sequence[PromptSpec],
        *,
        max_evaluations: int | None = None,
        warm_start: Path | None = None,
        resumed: bool = False,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.prompts = list(prompts)
        self.arch = config.models.arch
        self.resumed = resumed
        self.warm_start_path = warm_start
        budget = config.search.max_evaluations
        self.budget = budget if max_evaluations is None else min(budget, max_evaluations)
        self.journal = rec.open_journal(run_dir, self.arch)
        self.records: dict[int, rec.Record] = {r.number: r for r in self.journal_records()}
        self.failed = 0
        self._best_images: list[Any] = []
        # the journal's best (resume): a worse evaluation must not replace its saved images
        self._best_score: float | None = max((r.score for r in self.records.values()), default=None)
        self._scheduler: Scheduler | None = None
        self._sigints = 0
        self._log_handler: logging.Handler | None = None
        self._started = time.monotonic()
        self.scheduler_settings: SchedulerSettings = settings_from_config(config)

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        config: Any,
        *,
        max_evaluations: int | None = None,
        warm_start: Path | None = None,
        now: datetime | None = None,
    ) -> Run:
        """A new run folder ``<outputs.run_dir>/<name>-<timestamp>/``."""
        name = config.outputs.run_name or config.models.output
        stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
        root = Path(config.outputs.run_dir)
        run_dir = root / f"{name}-{stamp}"
        n = 1
        while run_dir.exists():
            n += 1
            run_dir = root / f"{name}-{stamp}-{n}"
        prompts = expand_prompts(config)
        run_dir.mkdir(parents=True)
        atomic_write_text(run_dir / CONFIG_FILE, config.redacted_yaml())
        atomic_write_text(run_dir / PROMPTS_FILE, prompts_json(prompts))
        return cls(config, run_dir, prompts, max_evaluations=max_evaluations, warm_start=warm_start)

    @classmethod
    def resume(cls, run_dir: Path, *, max_evaluations: int | None = None) -> Run:
        """Reopen ``run_dir``: same config, same prompts, the journal's evaluations counted."""
        from autombw_cli.config import load_config

        run_dir = Path(run_dir)
        cfg_path = run_dir / CONFIG_FILE
        if not cfg_path.is_file():
            raise ConfigError(
                f"{run_dir} is not an autombw run folder (no {CONFIG_FILE})",
                hint="pass a folder under runs/ that an earlier `autombw search` created",
            )
        config = load_config(cfg_path, check_paths=False)  # prompts come from prompts.json
        prompts = read_prompts(run_dir / PROMPTS_FILE)
        return cls(config, run_dir, prompts, max_evaluations=max_evaluations, resumed=True)

    def journal_records(self) -> list[rec.Record]:
        return rec.read_records(self.journal, self.arch)

    # --- the search -------------------------------------------------------------------------
    async def execute(self, emit: EventSink, *, handle_signals: bool = True) -> RunResult:
        self._attach_log()
        try:
            return await self._execute(emit, handle_signals)
        except AutombwError:
            if not self.resumed and not self.records and self._scheduler is None:
                self._detach_log()
                self._discard_empty_run()  # failed before the first evaluation (preflight)
            raise
        finally:
            self._detach_log()

    def _discard_empty_run(self) -> None:
        import shutil

        if not (self.run_dir / "history.csv").exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)

    async def _execute(self, emit: EventSink, handle_signals: bool) -> RunResult:
        from autombw_cli.search import instances as inst_mod

        cfg = self.config
        async with contextlib.AsyncExitStack() as stack:
            if cfg.simulated:
                emit(Notice(message=f"starting {cfg.instances.simulate} simulated WebUI(s)"))
            endpoints = await inst_mod.open_instances(cfg, stack, run_dir=self.run_dir)
            emit(
                Notice(
                    message=f"preflight: checking {len(endpoints)} instance(s), loading the "
                    f"{cfg.scorer.name} scorer"
                )
            )
            scorer = await inst_mod.preflight_and_scorer(cfg, endpoints, self.prompts)
            instances = [Instance(label=e.label, client=e.client) for e in endpoints]
            campaign = self._campaign(emit)
            settings = self.scheduler_settings
            self._scheduler = Scheduler(
                instances,
                scorer,
                self.prompts,
                model_a=cfg.models.a,
                model_b=cfg.models.b,
                emit=emit,
                settings=settings,
            )
            emit(
                RunStarted(
                    run_dir=self.run_dir,
                    name=self.run_dir.name,
                    budget=self.budget,
                    instances=tuple(e.label for e in endpoints),
                    already_done=len(self.records),
                    max_time_s=cfg.search.max_time,
                )
            )
            self._started = time.monotonic()
            if handle_signals:
                self._install_sigint(emit)
            try:
                reason = await self._scheduler.run(campaign)
            except AutombwError as exc:  # e.g. the scorer failed: keep what was found, then fail
                emit(RunWarning(message=f"the search failed: {exc.message}; writing the outputs"))
                with contextlib.suppress(Exception):
                    await self._wrap_up(StopReason.FAILED, instances, endpoints, emit)
                raise
            finally:
                if handle_signals:
                    self._remove_sigint()
            reason = reason or campaign.stop_reason or StopReason.BUDGET
            if self._sigints and reason is not StopReason.ALL_DOWN:
                reason = StopReason.INTERRUPTED
            if handle_signals:
                self._install_sigint(emit)  # a Ctrl-C during the wrap-up aborts it
            try:
                outputs = await self._wrap_up(reason, instances, endpoints, emit)
            finally:
                if handle_signals:
                    self._remove_sigint()
        best = campaign.best
        result = RunResult(self.run_dir, reason, len(self.records), best, outputs)
        emit(
            RunFinished(
                reason=reason,
                done=len(self.records),
                best_score=None if best is None else best.score,
                best_number=None if best is None else best.number,
                run_dir=self.run_dir,
                elapsed_s=time.monotonic() - self._started,
            )
        )
        return result

    def _campaign(self, emit: EventSink) -> Campaign:
        from autombw_cli.search.space import SearchSpace

        cfg = self.config
        s = cfg.search
        initial = cfg.initial_weights()
        space = SearchSpace.build(
            self.arch,
            searched=list(s.blocks),
            frozen=dict(s.frozen),
            clamps={k: tuple(v) for k, v in s.clamps.items()},
            groups=[list(g) for g in s.groups],
            intervals=None if s.continuous else s.intervals,
            extrapolation=s.extrapolation,
            base=initial,
            text_encoder=None if initial is None else initial.text_encoder,
        )
        plans = [
            PassPlan(
                index=i + 1,
                optimizer=p.optimizer,
                settings=dict(p.settings),
                max_evaluations=p.max_evaluations,
                early_stopping=p.early_stopping,
            )
            for i, p in enumerate(s.passes)
        ]

        def make_optimizer(plan: PassPlan) -> Any:
            from autombw_cli.search.optimizers import create_optimizer

            return create_optimizer(plan.optimizer, plan.settings, space, s.seed + plan.index - 1)

        history = [
            Scored(r.number, r.pass_index, r.weights, r.score)
            for r in sorted(self.records.values(), key=lambda r: r.number)
        ]
        warm = []
        if self.warm_start_path is not None:
            warm = rec.read_warm_start(self.warm_start_path, self.arch)
            log.info("warm start: %d evaluations from %s", len(warm), self.warm_start_path)
        starts = [space.project(initial)] if initial is not None else []
        return Campaign(
            passes=plans,
            total_budget=self.budget,
            tally=self._tally,
            make_optimizer=make_optimizer,
            record=self._record,
            emit=emit,
            max_time_s=s.max_time,
            history=history,
            initial=starts,
            warm_start=warm,
        )

    def _tally(self, outcome: Outcome) -> tuple[float, dict[str, float]]:
        return tally_outcome(outcome, self.config.scorer.tally, self.config.scorer.sigmoid)

    def _record(self, outcome: Outcome, score: float, per_payload: dict[str, float]) -> None:
        """Journal one evaluation (fsync) and keep what the report needs."""
        record = rec.Record.from_outcome(outcome, score, per_payload)
        rec.append(self.journal, record, outcome)
        self.records[record.number] = record
        log.info(
            "evaluation #%d (pass %d) on %s: score %.6g in %.2fs (merge %.2fs, render %.2fs)",
            record.number,
            record.pass_index,
            record.instance,
            score,
            record.duration_s,
            record.merge_s,
            record.generate_s,
        )
        out = self.config.outputs
        if out.save_images == "all":
            from autombw_cli.report.summary import write_best_images

            folder = self.run_dir / "images" / f"{record.number:05d}"
            write_best_images(rec.best_images(outcome), folder, image_format=out.image_format)
        if self._best_score is None or score > self._best_score:
            self._best_score = score
            self._best_images = rec.best_images(outcome)
            if out.save_images != "none":
                from autombw_cli.report.summary import BEST_IMAGES_DIR, write_best_images

                write_best_images(
                    self._best_images,
                    self.run_dir / BEST_IMAGES_DIR,
                    image_format=out.image_format,
                )

    # --- signals ------------------------------------------------------------------------
    def _install_sigint(self, emit: EventSink) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_sigint() -> None:
            self._sigints += 1
            if self._sigints == 1 and self._scheduler is not None:
                emit(
                    RunWarning(
                        message="Ctrl-C: finishing the evaluations in flight, then writing the "
                        "outputs; press Ctrl-C again to abort at once"
                    )
                )
                self._scheduler.request_stop(StopReason.INTERRUPTED)
            elif task is not None:
                task.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, on_sigint)

    def _remove_sigint(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    # --- wrap-up ------------------------------------------------------------------------
    async def _wrap_up(
        self, reason: StopReason, instances: list[Instance], endpoints: list[Any], emit: EventSink
    ) -> dict[str, str]:
        from autombw_cli.report import summary as sm

        cfg = self.config
        outputs: dict[str, str] = {}
        records = [r.as_report() for r in self.records.values()]

        def wrote(what: str, path: Path) -> None:
            outputs[what] = str(path)
            emit(OutputWritten(path=path, what=what))

        best = sm.top_k(records, 1)
        if best:
            recipe = sm.best_recipe(
                best[0], model_a=cfg.models.a, model_b=cfg.models.b, output=cfg.models.output
            )
            txt, js = sm.write_best_recipe(recipe, self.run_dir)
            wrote("recipe", txt)
            wrote("recipe_json", js)
            if (self.run_dir / sm.BEST_IMAGES_DIR).is_dir():
                wrote("best_images", self.run_dir / sm.BEST_IMAGES_DIR)
            try:
                plots = await asyncio.to_thread(sm.write_plots, records, self.arch, self.run_dir)
                for path in plots:
                    wrote(f"plot_{path.stem}", path)
            except Exception as exc:  # a plotting bug must not lose the run's other outputs
                log.exception("plots failed")
                emit(RunWarning(message=f"could not draw the plots: {exc}"))
            finished = reason not in (StopReason.INTERRUPTED, StopReason.FAILED)
            if cfg.outputs.final_merge and finished:
                path = await self._final_merge(recipe, endpoints, emit)
                if path:
                    wrote("checkpoint", Path(path))
        busy = self._scheduler.busy_fractions() if self._scheduler else {}
        summary = sm.build_summary(
            name=self.run_dir.name,
            run_dir=self.run_dir,
            reason=reason.value,
            exit_code=RunResult(self.run_dir, reason, 0, None).exit_code,
            records=records,
            budget=self.budget,
            elapsed_s=time.monotonic() - self._started,
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
            arch=self.arch,
            outputs=outputs,
            passes=[
                {"index": i + 1, "optimizer": p.optimizer, "max_evaluations": p.max_evaluations}
                for i, p in enumerate(cfg.search.passes)
            ],
        )
        wrote("summary", sm.write_summary(summary, self.run_dir))
        return outputs

    async def _final_merge(self, recipe: Any, endpoints: list[Any], emit: EventSink) -> str | None:
        cfg = self.config
        try:
            if cfg.outputs.merge_via == "offline":
                from autombw_cli.merging.offline import merge_checkpoints

                out = self.run_dir / f"{recipe.output_name}.safetensors"
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
                        recipe.output_name, recipe.weights, dtype=cfg.outputs.dtype, overwrite=True
                    )
                except AutombwError as exc:
                    log.warning("%s: saving the merge failed: %s", e.label, exc)
                    continue
                if e.simulated:  # the simulator's folder vanishes with it: keep a copy
                    return str(await asyncio.to_thread(_copy_into, Path(saved.path), self.run_dir))
                return f"{e.label}:{saved.path}"
            emit(RunWarning(message="no instance could save the final merge"))
        except AutombwError as exc:
            emit(RunWarning(message=f"the final merge failed: {exc.message}"))
        return None

    # --- logging ------------------------------------------------------------------------
    def _attach_log(self) -> None:
        handler = logging.FileHandler(self.run_dir / LOG_FILE, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        root = logging.getLogger()
        for h in root.handlers:  # keep the console as quiet as it was
            if h.level == logging.NOTSET:
                h.setLevel(root.level)
        pkg = logging.getLogger("autombw_cli")
        if pkg.level == logging.NOTSET or pkg.level > logging.INFO:
            pkg.setLevel(logging.INFO)
        pkg.addHandler(handler)
        self._log_handler = handler
        log.info("run %s (%s)", self.run_dir.name, "resumed" if self.resumed else "new")

    def _detach_log(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("autombw_cli").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


# --- prompts ------------------------------------------------------------------------------
def expand_prompts(config: Any) -> list[PromptSpec]:
    from autombw_cli.payloads import expand_payloads, load_payloads

    payloads = load_payloads(config.payloads.files)
    expanded = expand_payloads(payloads, config.payloads.wildcards, config.search.seed)
    return [
        PromptSpec(
            payload_name=e.payload_name,
            index=e.index,
            prompt=e.prompt,
            negative_prompt=e.negative_prompt,
            seed=e.seed,
            body=e.txt2img_body(),
            score_weight=e.score_weight,
            reverse_scoring=e.reverse_scoring,
        )
        for e in expanded
    ]


def prompts_json(prompts: Sequence[PromptSpec]) -> str:
    return (
        json.dumps(
            [
                {
                    "payload": p.payload_name,
                    "index": p.index,
                    "prompt": p.prompt,
                    "negative_prompt": p.negative_prompt,
                    "seed": p.seed,
                    "score_weight": p.score_weight,
                    "reverse_scoring": p.reverse_scoring,
                    "txt2img": p.body,
                }
                for p in prompts
            ],
            indent=2,
        )
        + "\n"
    )


def read_prompts(path: Path) -> list[PromptSpec]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [
            PromptSpec(
                payload_name=d["payload"],
                index=int(d["index"]),
                prompt=d["prompt"],
                negative_prompt=d["negative_prompt"],
                seed=int(d["seed"]),
                body=dict(d["txt2img"]),
                score_weight=float(d["score_weight"]),
                reverse_scoring=bool(d["reverse_scoring"]),
            )
            for d in data
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JournalError(
            f"{path}: cannot read the run's expanded prompts ({exc})",
            hint="the run folder is damaged; start a new run with the same config",
        ) from exc


def tally_outcome(outcome: Outcome, kind: str, sigmoid: bool) -> tuple[float, dict[str, float]]:
    """The evaluation's score (reverse scoring, optional sigmoid, the tally) and, the same way,
    one score per payload."""
    from autombw_cli.scoring.tally import evaluation_score

    specs = [ri.spec for ri in outcome.images]

    def score_of(idx: list[int]) -> float:
        return evaluation_score(
            [outcome.raw_scores[i] for i in idx],
            kind=kind,
            weights=[specs[i].score_weight for i in idx],
            reverse=[specs[i].reverse_scoring for i in idx],
            apply_sigmoid=sigmoid,
        )

    total = score_of(list(range(len(specs))))
    per_payload: dict[str, float] = {}
    for name in dict.fromkeys(s.payload_name for s in specs):
        idx = [i for i, s in enumerate(specs) if s.payload_name == name]
        if any(specs[i].score_weight > 0 for i in idx):
            per_payload[name] = score_of(idx)
    return total, per_payload


def settings_from_config(config: Any) -> SchedulerSettings:
    """Scheduler knobs from the config (``search.scheduler`` when present) and the scorer."""
    knobs = getattr(config.search, "scheduler", None)
    values: dict[str, Any] = {"scorer_batch_size": config.scorer.batch_size}
    if knobs is not None:
        data = knobs if isinstance(knobs, dict) else knobs.model_dump()
        for key in ("max_attempts", "park_after", "all_down_after", "probe_backoff_max"):
            if data.get(key) is not None:
                name = {
                    "all_down_after": "all_down_after_s",
                    "probe_backoff_max": "probe_backoff_max_s",
                }.get(key, key)
                values[name] = data[key]
    return SchedulerSettings(**values)


def _copy_into(path: Path, folder: Path) -> Path:
    """Copy a checkpoint into ``folder``, atomically (its recipe files are already there)."""
    import shutil

    from autombw_cli.atomic import atomic_path

    target = folder / path.name
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    return target


def weights_or_none(w: Weights | None) -> dict[str, float] | None:
    return None if w is None else w.to_dict()
