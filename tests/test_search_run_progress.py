"""What the run shows: the event view, plain lines, JSON lines and the live display."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from autombw_cli.blocks import Arch, Weights
from autombw_cli.report.progress import JsonLog, LiveDisplay, PlainPrinter, RunView
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.events import (
    EvaluationDone,
    EvaluationFailed,
    InstanceStateChanged,
    RunFinished,
    RunStarted,
    StopReason,
    WorkerState,
)


def _done(number: int, score: float, best: float, best_number: int, done: int) -> EvaluationDone:
    evaluation = Evaluation(
        number=number,
        weights=Weights.uniform(Arch.SD1, 0.5),
        score=score,
        payload_scores={"p": score},
        instance="gpu0",
        timings={"total_s": 2.0},
    )
    return EvaluationDone(
        evaluation=evaluation,
        done=done,
        budget=10,
        best_score=best,
        best_number=best_number,
        is_best=score == best,
    )


def _start(already: int = 0) -> RunStarted:
    return RunStarted(
        run_dir=Path("runs/x"),
        name="x",
        budget=10,
        instances=("gpu0", "gpu1"),
        already_done=already,
    )


def test_view_tracks_best_with_negative_scores_and_eta() -> None:
    now = [0.0]
    view = RunView(clock=lambda: now[0])
    view.update(_start(already=2))
    now[0] = 10.0
    view.update(_done(3, -1.5, -1.5, 3, 3))
    view.update(_done(4, -2.0, -1.5, 3, 4))
    assert view.best_score == -1.5 and view.best_number == 3
    # 2 new evaluations in 10 s, 6 left: 30 s
    assert view.eta == 30.0
    view.update(InstanceStateChanged(instance="gpu1", state=WorkerState.DOWN, detail="refused"))
    assert view.instances["gpu1"].state is WorkerState.DOWN
    assert view.instances["gpu0"].evaluations == 2


def test_plain_lines() -> None:
    out = io.StringIO()
    p = PlainPrinter(out)
    p(_start())
    p(_done(1, 0.25, 0.25, 1, 1))
    p(EvaluationFailed(number=2, instance="gpu1", attempt=1, error="HTTP 500", will_retry=True))
    p(InstanceStateChanged(instance="gpu1", state=WorkerState.GENERATING))  # not printed
    p(RunFinished(StopReason.BUDGET, 10, 0.25, 1, Path("runs/x"), 61.0))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("run x: 10 evaluations on 2 instance(s)")
    assert lines[1].startswith("[ 1/10] #1 score 0.2500 best 0.2500 (#1) gpu0 2.0s")
    assert lines[1].endswith(" *")
    assert "retrying elsewhere" in lines[2]
    assert lines[3] == "finished (budget): 10 evaluations in 01:01, best 0.2500 (#1)"
    assert len(lines) == 4


def test_json_log(tmp_path: Path) -> None:
    log = JsonLog(tmp_path / "events.jsonl")
    log(_start())
    log(_done(1, 0.25, 0.25, 1, 1))
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [r["event"] for r in rows] == ["run_started", "evaluation_done"]
    assert rows[0]["run_dir"] == "runs/x" and rows[1]["score"] == 0.25


def test_live_display_renders_instances_and_best() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    display = LiveDisplay(console)
    display(_start())
    display(InstanceStateChanged(instance="gpu1", state=WorkerState.DOWN, detail="refused"))
    display(_done(1, 0.75, 0.75, 1, 1))
    text = _text_of(display)
    display.close()
    assert "gpu0" in text and "gpu1" in text and "down" in text
    assert "0.7500" in text and "1/10" in text


def _text_of(display: LiveDisplay) -> str:
    out = io.StringIO()
    Console(file=out, width=120).print(display._render())
    return out.getvalue()
