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
import logging
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from autombw_cli.app import instances as inst_mod
from autombw_cli.app import records as rec
from autombw_cli.app.instances import Endpoint
from autombw_cli.app.optimize import pass_plans, search_space
from autombw_cli.app.prompts import expand_prompts, prompts_json, read_prompts, tally_outcome
from autombw_cli.app.validate import ValidationReport, validate
from autombw_cli.app.wrapup import exit_code_for, write_outputs
from autombw_cli.atomic import atomic_write_text
from autombw_cli.blocks import Weights
from autombw_cli.config import SearchConfig, load_config
from autombw_cli.errors import AutombwError, ConfigError, JournalError
from autombw_cli.folderlock import FolderLock
from autombw_cli.recipe import Formula
from autombw_cli.report.summary import BEST_IMAGES_DIR, BestImage, write_best_images
from autombw_cli.scoring.protocol import MemberScorer, Scorer
from autombw_cli.search.campaign import Campaign, PassEndReason, optimizer_factory
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.events import (
    EventSink,
    Notice,
    RunFinished,
    RunStarted,
    RunWarning,
    StopReason,
)
from autombw_cli.search.journal import (
    Journal,
    RunLogHandler,
    describe_os_error,
    is_file_system_error,
    read_warm_start,
)
from autombw_cli.search.prompt import PromptSpec
from autombw_cli.search.pruning import PruningRule
from autombw_cli.search.scheduler import (
    Instance,
    Outcome,
    Scheduler,
    SchedulerSettings,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
PROMPTS_FILE = "prompts.json"
LOG_FILE = "run.log"


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    reason: StopReason
    done: int
    best: Evaluation | None
    outputs: dict[str, str] = field(default_factory=dict)
    validation: ValidationReport | None = None  # outputs.validation: who the recipe is

    @property
    def exit_code(self) -> int:
        """FAILED gives 1, but the error raised afterwards decides the process's code."""
        return exit_code_for(self.reason)


class Run:
    """One search run (see the module docstring)."""

    def __init__(
        self,
        config: SearchConfig,
        run_dir: Path,
        prompts: Sequence[PromptSpec],
        *,
        max_evaluations: int | None = None,
        warm_start: Path | None = None,
        resumed: bool = False,
        lock: FolderLock | None = None,
    ) -> None:
        # one process per run folder: a second --resume would journal every number twice
        self._lock = lock if lock is not None else FolderLock.acquire(run_dir)
        try:
            self._open(config, run_dir, prompts, max_evaluations, warm_start, resumed)
        except BaseException:
            self._lock.release()
            raise

    def _open(
        self,
        config: SearchConfig,
        run_dir: Path,
        prompts: Sequence[PromptSpec],
        max_evaluations: int | None,
        warm_start: Path | None,
        resumed: bool,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.prompts = list(prompts)
        self.arch = config.models.arch
        self.resumed = resumed
        self.warm_start_path = warm_start
        budget = config.search.max_evaluations
        if max_evaluations is None:
            self.budget = budget
        elif resumed:  # a resumed run may be extended past its config's budget (or cut short)
            self.budget = max_evaluations
        else:
            self.budget = min(budget, max_evaluations)
        self.journal = Journal(run_dir, self.arch)
        # the one read of the journal's rows: its complete and pruned evaluations, each number
        # once (a pruned one used the budget and was told to the optimizer: not run again)
        journaled = [e for e in self.journal.read() if e.counted]
        # bounded: the best records and (number, score) per evaluation; the journal has the rest
        self.records = rec.RecordBook(journaled)
        # what the campaign starts from (resume): every evaluation's number, pass, weights, score
        self._history = sorted(journaled, key=lambda e: e.number)
        self.failed = 0
        self._best_images: list[BestImage] = []
        # the journal's best (resume): a worse evaluation must not replace its saved images
        best = self.records.best
        self._best_score: float | None = None if best is None else best.score
        self._scheduler: Scheduler | None = None  # the search's, then the validation's
        self._busy: dict[str, float] | None = None  # the search's busy fractions, once validating
        self._validation: ValidationReport | None = None
        self._sigints = 0
        self._log_handler: logging.Handler | None = None
        self._started = time.monotonic()
        self._created_root: Path | None = None  # the outermost folder create() had to make
        self.scheduler_settings: SchedulerSettings = settings_from_config(config)
        # WebUI instances opened by the caller (a chain keeps them across its steps); None:
        # the run opens (and closes) its own
        self.endpoints: list[Endpoint] | None = None

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        config: SearchConfig,
        *,
        max_evaluations: int | None = None,
        warm_start: Path | None = None,
        now: datetime | None = None,
        folder: Path | None = None,
    ) -> Run:
        """A new run folder ``<outputs.run_dir>/<name>-<timestamp>/`` (or exactly ``folder``,
        which must not exist yet: a chain's step)."""
        prompts = expand_prompts(config)
        if folder is not None:
            run_dir, created_root = _new_step_folder(Path(folder))
        else:
            name = config.outputs.run_name or config.models.output
            stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
            root = Path(config.outputs.run_dir)
            run_dir, created_root = new_run_folder(root, f"{name}-{stamp}")
        lock = FolderLock.acquire(run_dir)
        try:
            atomic_write_text(run_dir / CONFIG_FILE, config.redacted_yaml())
            atomic_write_text(run_dir / PROMPTS_FILE, prompts_json(prompts))
            run = cls(
                config,
                run_dir,
                prompts,
                max_evaluations=max_evaluations,
                warm_start=warm_start,
                lock=lock,
            )
        except BaseException as exc:  # e.g. a full disk: leave nothing behind
            lock.release()
            remove_new_folder(run_dir, created_root)
            if isinstance(exc, OSError):
                raise _io_error(exc, f"cannot start the run in {run_dir}") from exc
            raise
        run._created_root = created_root
        return run

    @classmethod
    def resume(cls, run_dir: Path, *, max_evaluations: int | None = None) -> Run:
        """Reopen ``run_dir``: same config, same prompts, the journal's evaluations counted."""
        run_dir = Path(run_dir)
        cfg_path = run_dir / CONFIG_FILE
        if not run_dir.is_dir():
            raise ConfigError(
                f"{run_dir}: no such run folder" + (" (it is a file)" if run_dir.exists() else ""),
                hint="pass a folder under runs/ that an earlier `autombw search` created "
                "(its path is printed when a run starts and in the resume hint)",
            )
        if not cfg_path.is_file():
            raise ConfigError(
                f"{run_dir} is not an autombw run folder (no {CONFIG_FILE})",
                hint="pass a folder under runs/ that an earlier `autombw search` created",
            )
        config = load_config(cfg_path, check_paths=False)  # prompts come from prompts.json
        prompts = read_prompts(run_dir / PROMPTS_FILE)
        return cls(config, run_dir, prompts, max_evaluations=max_evaluations, resumed=True)

    # --- the search -------------------------------------------------------------------------
    async def execute(self, emit: EventSink, *, handle_signals: bool = True) -> RunResult:
        try:
            self._attach_log()
            try:
                return await self._execute(emit, handle_signals)
            except OSError as exc:
                if not is_file_system_error(exc):
                    raise
                # the run folder cannot be written (disk full, read-only): exit 6, no traceback
                raise _io_error(exc, f"cannot write the run folder {self.run_dir}") from exc
        except AutombwError:
            if not self.resumed and not self.records and self._scheduler is None:
                self._detach_log()
                self._lock.release()
                self._discard_empty_run()  # failed before the first evaluation (preflight)
            raise
        finally:
            self._detach_log()
            self._lock.release()

    def _discard_empty_run(self) -> None:
        if (self.run_dir / "history.csv").exists():
            return
        shutil.rmtree(self.run_dir, ignore_errors=True)
        remove_new_folder(self.run_dir, self._created_root)

    async def _execute(self, emit: EventSink, handle_signals: bool) -> RunResult:
        cfg = self.config
        async with contextlib.AsyncExitStack() as stack:
            if handle_signals:  # SIGTERM aborts like a second Ctrl-C (the stack still unwinds)
                self._install_sigterm(emit)
                stack.callback(self._remove_sigterm)
            if self.endpoints is not None:
                endpoints = list(self.endpoints)
            else:
                if cfg.simulated:
                    emit(Notice(message=f"starting {cfg.instances.simulate} simulated WebUI(s)"))
                endpoints = await inst_mod.open_instances(cfg, stack)
            if not cfg.outputs.keep_merge_loaded:
                # however the run ends (budget, Ctrl-C, SIGTERM, an error), after the final
                # merge: plain model A back in every WebUI, the bridge's caches freed
                stack.push_async_callback(inst_mod.restore_instances, endpoints, emit)
            emit(
                Notice(
                    message=f"preflight: checking {len(endpoints)} instance(s), loading the "
                    f"{cfg.scorer.name} scorer"
                )
            )
            checked, scorer = await inst_mod.preflight_and_scorer(cfg, endpoints, self.prompts)
            stack.callback(scorer.close)
            if self.resumed:
                self._restore_scorer_stats(scorer)
            for r in checked.instances:
                emit(
                    Notice(
                        message=f"{r.label}: WebUI {r.webui_version or 'version unknown'}, "
                        f"bridge {r.bridge_version}, GPU {r.gpu_memory or '-'}, "
                        f"models {r.models_found}"
                    )
                )
            versions = {r.label: r.webui_version for r in checked.instances}
            instances = [
                Instance(label=e.label, client=e.client, webui_version=versions.get(e.label))
                for e in endpoints
            ]
            settings = self.scheduler_settings
            # one instance: results are told in number order, so a resumed run proposes
            # exactly what an uninterrupted one does (campaign.py, "lockstep")
            lockstep = (1 if settings.prefetch else 0) if len(instances) == 1 else None
            campaign = self._campaign(emit, lockstep=lockstep)
            self._scheduler = Scheduler(
                instances,
                scorer,
                self.prompts,
                model_a=cfg.models.a,
                model_b=cfg.models.b,
                emit=emit,
                settings=settings,
                model_c=cfg.models.c,
                lora=cfg.models.formula is Formula.LORA,
            )
            done_before = len(self.records)
            if self.resumed and self.budget > max(cfg.search.max_evaluations, done_before):
                emit(
                    Notice(
                        message=f"extending the run to {self.budget} evaluations "
                        f"({done_before} done; the config says {cfg.search.max_evaluations})"
                    )
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
            if reason not in _NO_VALIDATION:
                reason = await self._validate(reason, instances, scorer, emit, handle_signals)
            if handle_signals:
                self._install_sigint(emit)  # a Ctrl-C during the wrap-up aborts it
            try:
                outputs = await self._wrap_up(reason, instances, endpoints, emit)
            finally:
                if handle_signals:
                    self._remove_sigint()
        if self.resumed and len(self.records) == done_before < self.budget:
            emit(
                RunWarning(
                    message=f"nothing was added to the run ({reason.value}): "
                    + _why_nothing_new(campaign)
                )
            )
        best = campaign.best
        result = RunResult(self.run_dir, reason, len(self.records), best, outputs, self._validation)
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

    async def _validate(
        self,
        reason: StopReason,
        instances: list[Instance],
        scorer: Scorer,
        emit: EventSink,
        handle_signals: bool,
    ) -> StopReason:
        """The validation stage (``app/validate.py``); Ctrl-C stops it like the search."""
        assert self._scheduler is not None
        self._busy = self._scheduler.busy_fractions()  # the search's, for the summary

        def use(scheduler: Scheduler) -> None:
            self._scheduler = scheduler

        if handle_signals:
            self._install_sigint(emit)
        try:
            self._validation = await validate(
                config=self.config,
                run_dir=self.run_dir,
                records=self.records,
                prompts=self.prompts,
                instances=instances,
                scorer=scorer,
                settings=self.scheduler_settings,
                tally=self._tally,
                emit=emit,
                on_scheduler=use,
            )
        except AutombwError as exc:
            emit(RunWarning(message=f"the validation failed: {exc.message}; writing the outputs"))
            with contextlib.suppress(Exception):
                await self._wrap_up(StopReason.FAILED, instances, [], emit)
            raise
        finally:
            if handle_signals:
                self._remove_sigint()
        return StopReason.INTERRUPTED if self._sigints else reason

    def _campaign(self, emit: EventSink, *, lockstep: int | None = None) -> Campaign:
        cfg = self.config
        s = cfg.search
        initial = cfg.initial_weights()
        space = search_space(s, self.arch, initial)
        warm: list[tuple[Weights, float]] = []
        if self.warm_start_path is not None:
            warm = list(read_warm_start(self.warm_start_path, self.arch))
            log.info("warm start: %d evaluations from %s", len(warm), self.warm_start_path)
        starts = [space.project(initial)] if initial is not None else []
        return Campaign(
            passes=pass_plans(s),
            total_budget=self.budget,
            tally=self._tally,
            make_optimizer=optimizer_factory(space, s.seed),
            record=self._record,
            emit=emit,
            max_time_s=s.max_time,
            history=list(self._history),
            initial=starts,
            warm_start=warm,
            lockstep=lockstep,
            pruning=pruning_rule(cfg),
        )

    def _restore_scorer_stats(self, scorer: Scorer) -> None:
        """An ensemble's z-score statistics, rebuilt from the journal's member scores: a
        resumed run freezes the same mean/std as an uninterrupted one and scores on its scale."""
        if isinstance(scorer, MemberScorer):
            n = scorer.restore_stats(self.journal.member_scores_in_order())
            log.info("scorer statistics rebuilt from %d journaled evaluations", n)

    def _tally(self, outcome: Outcome) -> tuple[float, dict[str, float]]:
        return tally_outcome(outcome, self.config.scorer.tally, self.config.scorer.sigmoid)

    def _record(self, record: Evaluation, outcome: Outcome) -> None:
        """Journal one evaluation (fsync) and keep what the report needs."""
        self.journal.append(record)
        self.records.add(record)
        score = record.score
        log.info(
            "evaluation #%d (pass %d) on %s: %s %.6g in %.2fs (merge %.2fs, render %.2fs)",
            record.number,
            record.pass_index,
            record.instance,
            f"pruned after {len(record.raw_scores)} image(s), estimate"
            if record.pruned
            else "score",
            score,
            record.timings["total_s"],
            record.timings["merge_s"],
            record.timings["generate_s"],
        )
        out = self.config.outputs
        if out.save_images == "all":
            folder = self.run_dir / "images" / f"{record.number:05d}"
            write_best_images(rec.best_images(outcome), folder, image_format=out.image_format)
        if record.ok and (self._best_score is None or score > self._best_score):
            self._best_score = score
            self._best_images = rec.best_images(outcome)
            if out.save_images != "none":
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

    def _install_sigterm(self, emit: EventSink) -> None:
        task = asyncio.current_task()

        def on_sigterm() -> None:
            emit(RunWarning(message="SIGTERM: aborting; the journal is intact"))
            if task is not None:
                task.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)

    def _remove_sigterm(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)

    # --- wrap-up ------------------------------------------------------------------------
    async def _wrap_up(
        self,
        reason: StopReason,
        instances: list[Instance],
        endpoints: list[Endpoint],
        emit: EventSink,
    ) -> dict[str, str]:
        return await write_outputs(
            config=self.config,
            run_dir=self.run_dir,
            reason=reason,
            records=self.records,
            instances=instances,
            endpoints=endpoints,
            busy=self._busy if self._busy is not None else self._scheduler_busy(),
            budget=self.budget,
            started=self._started,
            emit=emit,
            validation=self._validation,
        )

    def _scheduler_busy(self) -> dict[str, float]:
        return self._scheduler.busy_fractions() if self._scheduler else {}

    # --- logging ------------------------------------------------------------------------
    def _attach_log(self) -> None:
        try:
            handler: logging.Handler = RunLogHandler(self.run_dir / LOG_FILE)
        except OSError as exc:
            raise _io_error(exc, f"cannot open {self.run_dir / LOG_FILE}") from exc
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
        self.journal.replay_warnings(handler)  # found while opening the journal, before the log

    def _detach_log(self) -> None:
        if self._log_handler is not None:
            logging.getLogger("autombw_cli").removeHandler(self._log_handler)
            with contextlib.suppress(OSError):  # a full disk must not mask the run's own error
                self._log_handler.close()
            self._log_handler = None


# a run that ended this way is not validated (the final merge is not made either)
_NO_VALIDATION = (StopReason.INTERRUPTED, StopReason.FAILED, StopReason.ALL_DOWN)


def new_run_folder(root: Path, base: str) -> tuple[Path, Path]:
    """Make a fresh ``root/base`` (``base-2``... when taken, also by a run started in the same
    second): (the folder, the outermost folder made for it, for the clean-up)."""
    outer: Path | None = None  # the outermost missing folder above the run folder
    folder = root
    while not folder.exists():
        outer, folder = folder, folder.parent
    run_dir = root / base
    try:
        root.mkdir(parents=True, exist_ok=True)
        n = 1
        while True:
            try:
                run_dir.mkdir()  # exclusive: never two runs in one folder
                break
            except FileExistsError:
                n += 1
                run_dir = root / f"{base}-{n}"
    except OSError as exc:
        if outer is not None:
            remove_new_folder(root, outer)
        raise _io_error(exc, f"cannot create the run folder {run_dir}") from exc
    return run_dir, (outer if outer is not None else run_dir)


def _new_step_folder(run_dir: Path) -> tuple[Path, Path]:
    """Make exactly ``run_dir`` (its parent exists): (the folder, the folder to clean up)."""
    try:
        run_dir.mkdir()  # exclusive: never two runs in one folder
    except OSError as exc:
        raise _io_error(exc, f"cannot create the run folder {run_dir}") from exc
    return run_dir, run_dir


def _why_nothing_new(campaign: Campaign) -> str:
    """Why a resumed run with budget left added nothing (said instead of a silent no-op)."""
    search_on = (
        "A resumed run continues only a pass with room left; to search on from here, start a "
        "new run with --warm-start RUN_DIR/history.csv"
    )
    ends = campaign.pass_ends
    if ends and ends[-1].reason is PassEndReason.EXHAUSTED:
        return "every point of the search space was evaluated"
    if ends and ends[-1].reason in (PassEndReason.PASS_BUDGET, PassEndReason.EARLY_STOP):
        return f"{ends[-1]} and no pass is left. {search_on}"
    budgets = [p.max_evaluations for p in campaign.passes]
    if budgets and all(b is not None for b in budgets):
        listed = ", ".join(f"pass {p.index}: {p.max_evaluations}" for p in campaign.passes)
        return f"every pass has used its own max_evaluations ({listed}). {search_on}"
    return "see run.log"


def remove_new_folder(run_dir: Path, created_root: Path | None) -> None:
    """Remove ``run_dir`` and the (now empty) parents made for it, up to ``created_root``."""
    shutil.rmtree(run_dir, ignore_errors=True)
    folder = run_dir
    while created_root is not None and folder != created_root:
        folder = folder.parent
        try:
            folder.rmdir()
        except OSError:  # not empty (another run) or already gone
            break


def _io_error(exc: OSError, what: str) -> JournalError:
    """A file-system failure as the user reads it: which file, why, what to do (exit 6)."""
    return JournalError(
        f"{what}: {describe_os_error(exc)}",
        hint="free disk space or fix the folder's permissions; the journal is fsynced row by "
        "row, so `autombw search --resume RUN_DIR` continues a started run",
    )


def settings_from_config(config: SearchConfig) -> SchedulerSettings:
    """Scheduler knobs from ``search.scheduler`` (unset: the scheduler's defaults) and the
    scorer's batch size."""
    knobs = config.search.scheduler
    values: dict[str, Any] = {"scorer_batch_size": config.scorer.batch_size}
    if knobs.max_attempts is not None:
        values["max_attempts"] = knobs.max_attempts
    if knobs.park_after is not None:
        values["park_after"] = knobs.park_after
    if knobs.all_down_after is not None:
        values["all_down_after_s"] = knobs.all_down_after
    if knobs.probe_backoff_max is not None:
        values["probe_backoff_max_s"] = knobs.probe_backoff_max
    if config.search.pruning is not None:
        values["prune_after"] = config.search.pruning.after
    return SchedulerSettings(**values)


def pruning_rule(config: SearchConfig) -> PruningRule | None:
    """``search.pruning`` as the campaign's rule (None: off)."""
    p = config.search.pruning
    if p is None:
        return None
    return PruningRule(after=p.after, confidence=p.confidence, min_evaluations=p.min_evaluations)
