"""Turning a run's events into something to watch: a rich live display, plain lines, JSON lines.

Each class here is an ``EventSink`` (a callable taking one event). ``search/`` never imports
this module; the CLI builds the sinks it wants and hands them to the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from autombw_cli.search.events import (
    EvaluationDone,
    EvaluationFailed,
    Event,
    InstanceStateChanged,
    Notice,
    OutputWritten,
    PassStarted,
    RunFinished,
    RunStarted,
    RunWarning,
    ScorerQueue,
    WorkerState,
)

log = logging.getLogger(__name__)

MAX_WARNINGS_KEPT = 50  # RunView keeps the latest warnings only (a long run may have thousands)

_STATE_STYLE = {
    WorkerState.STARTING: "dim",
    WorkerState.IDLE: "dim",
    WorkerState.MERGING: "cyan",
    WorkerState.GENERATING: "green",
    WorkerState.SCORING: "magenta",
    WorkerState.DOWN: "bold red",
    WorkerState.DONE: "dim",
}


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


@dataclass
class _InstanceView:
    state: WorkerState = WorkerState.STARTING
    detail: str = ""
    evaluations: int = 0
    last_eval_s: float | None = None
    last_eval_at: float | None = None


@dataclass
class RunView:
    """What the displays know about a run, updated from events (pure; no terminal)."""

    clock: Callable[[], float] = time.monotonic
    name: str = ""
    run_dir: Path | None = None
    budget: int | None = None
    done: int = 0
    done_at_start: int = 0
    started: float | None = None
    best_score: float | None = None
    best_number: int | None = None
    best_found_at: float | None = None
    pass_label: str = ""
    queue_depth: int = 0
    instances: dict[str, _InstanceView] = field(default_factory=dict)
    warnings: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_WARNINGS_KEPT))
    warning_count: int = 0  # every warning so far; ``warnings`` keeps the latest few
    finished: RunFinished | None = None

    def update(self, event: Event) -> None:
        now = self.clock()
        if isinstance(event, RunStarted):
            self.name = event.name
            self.run_dir = event.run_dir
            self.budget = event.budget
            self.done = self.done_at_start = event.already_done
            self.started = now
            for label in event.instances:
                self.instances.setdefault(label, _InstanceView())
        elif isinstance(event, PassStarted):
            budget = "" if event.budget is None else f", {event.budget} evaluations"
            self.pass_label = f"pass {event.index}: {event.optimizer}{budget}"
        elif isinstance(event, InstanceStateChanged):
            view = self.instances.setdefault(event.instance, _InstanceView())
            view.state = event.state
            view.detail = event.detail
        elif isinstance(event, EvaluationDone):
            self.done = event.done
            self.budget = event.budget
            view = self.instances.setdefault(event.evaluation.instance, _InstanceView())
            view.evaluations += 1
            view.last_eval_s = event.evaluation.duration_s
            view.last_eval_at = now
            if event.is_best or self.best_score is None:
                self.best_score = event.best_score
                self.best_number = event.best_number
                self.best_found_at = now
        elif isinstance(event, ScorerQueue):
            self.queue_depth = event.depth
        elif isinstance(event, RunWarning):
            self.warnings.append(event.message)
            self.warning_count += 1
        elif isinstance(event, RunFinished):
            self.finished = event

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    @property
    def eta(self) -> float | None:
        new = self.done - self.done_at_start
        if self.budget is None or new <= 0:
            return None
        return max(0.0, (self.budget - self.done) * self.elapsed / new)


class LiveDisplay:
    """A rich live display on a terminal: overall bar, best score, one line per instance."""

    def __init__(self, console: Console) -> None:
        self.view = RunView()
        self.console = console
        self._lock = threading.Lock()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[timing]}"),
            console=console,
            auto_refresh=False,
        )
        self._task = self._progress.add_task("evaluations", total=None, timing="")
        self._live = Live(
            get_renderable=self._render, console=console, refresh_per_second=4, transient=False
        )
        self._started = False

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.view.update(event)
        if isinstance(event, RunStarted) and not self._started:
            self._started = True
            self._live.start()
        if isinstance(event, Notice):
            self.console.print(f"[dim]{escape(event.message)}[/]")
        elif isinstance(event, RunWarning):
            self.console.print(f"[bold yellow]warning:[/] {escape(event.message)}")
        elif isinstance(event, OutputWritten):
            self.console.print(f"[dim]wrote {escape(event.what)}: {escape(str(event.path))}[/]")
        elif isinstance(event, RunFinished):
            self.close()

    def close(self) -> None:
        if self._started:
            self._started = False
            self._live.refresh()
            self._live.stop()

    def _render(self) -> RenderableType:
        with self._lock:
            v = self.view
            self._progress.update(
                self._task,
                total=v.budget,
                completed=v.done,
                timing=f"elapsed {format_duration(v.elapsed)}  ETA {format_duration(v.eta)}",
            )
            best = Text("best: ")
            if v.best_score is None:
                best.append("none yet", style="dim")
            else:
                ago = self.view.clock() - (v.best_found_at or 0.0)
                best.append(f"{v.best_score:.4f}", style="bold green")
                best.append(f"  (evaluation #{v.best_number}, {format_duration(ago)} ago)")
            best.append(f"   scorer queue: {v.queue_depth}")
            if v.pass_label:
                best.append(f"   {v.pass_label}", style="dim")
            table = Table(box=None, padding=(0, 2), show_edge=False)
            table.add_column("instance")
            table.add_column("state")
            table.add_column("evals", justify="right")
            table.add_column("last", justify="right")
            table.add_column("")
            for label, iv in list(v.instances.items()):
                last = "-" if iv.last_eval_s is None else f"{iv.last_eval_s:.1f}s"
                table.add_row(
                    label,
                    Text(iv.state.value, style=_STATE_STYLE.get(iv.state, "")),
                    str(iv.evaluations),
                    last,
                    Text(iv.detail[:60], style="dim"),
                )
            folder = Text(f"run folder: {v.run_dir}", style="dim") if v.run_dir else Text("")
            return Group(self._progress.get_renderable(), best, table, folder)


class PlainPrinter:
    """One line per evaluation (and per notable event), for logs and non-terminals."""

    def __init__(self, out: IO[str]) -> None:
        self.out: IO[str] | None = out
        self.view = RunView()

    def __call__(self, event: Event) -> None:
        self.view.update(event)
        line = self._line(event)
        if line and self.out is not None:
            try:
                print(line, file=self.out, flush=True)
            except BrokenPipeError:  # `autombw search ... --plain | head`: the reader left
                self._reader_gone()

    def _reader_gone(self) -> None:
        """Stop printing, keep searching: a closed pipe must not end a week-long run (the
        journal and run.log have everything)."""
        log.warning("standard output was closed; the search goes on without printing")
        with contextlib.suppress(OSError, ValueError):  # no failed flush at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno() if self.out is not None else 1)
        self.out = None

    def _line(self, event: Event) -> str | None:
        v = self.view
        if isinstance(event, RunStarted):
            budget = "?" if event.budget is None else str(event.budget)
            resumed = f", {event.already_done} already done" if event.already_done else ""
            return (
                f"run {event.name}: {budget} evaluations on {len(event.instances)} "
                f"instance(s){resumed}; writing to {event.run_dir}"
            )
        if isinstance(event, PassStarted):
            return v.pass_label
        if isinstance(event, EvaluationDone):
            width = len(str(event.budget or event.done))
            budget = "?" if event.budget is None else str(event.budget)
            mark = " *" if event.is_best else ""
            e = event.evaluation
            what = (
                f"pruned after {len(e.raw_scores)} image(s), estimate {e.score:.4f}"
                if e.pruned
                else f"score {e.score:.4f}"
            )
            return (
                f"[{event.done:>{width}}/{budget}] #{e.number} {what} "
                f"best {event.best_score:.4f} (#{event.best_number}) {e.instance} "
                f"{e.duration_s:.1f}s ETA {format_duration(v.eta)}{mark}"
            )
        if isinstance(event, EvaluationFailed):
            again = "retrying elsewhere" if event.will_retry else "giving up on it"
            return f"evaluation #{event.number} failed on {event.instance}: {event.error} ({again})"
        if isinstance(event, InstanceStateChanged) and event.state is WorkerState.DOWN:
            return f"{event.instance} is down: {event.detail}"
        if isinstance(event, InstanceStateChanged) and event.detail == "rejoined":
            return f"{event.instance} is back"
        if isinstance(event, Notice):
            return event.message
        if isinstance(event, RunWarning):
            return f"WARNING: {event.message}"
        if isinstance(event, OutputWritten):
            return f"wrote {event.what}: {event.path}"
        if isinstance(event, RunFinished):
            best = "none" if event.best_score is None else f"{event.best_score:.4f}"
            return (
                f"finished ({event.reason.value}): {event.done} evaluations in "
                f"{format_duration(event.elapsed_s)}, best {best}"
                + ("" if event.best_number is None else f" (#{event.best_number})")
            )
        return None


class JsonLog:
    """``--json-log FILE``: every event as one JSON line, flushed as it happens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115  closed in close()

    def __call__(self, event: Event) -> None:
        self._fh.write(json.dumps(event.to_dict(), default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
