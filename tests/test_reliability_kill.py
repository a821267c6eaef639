"""Reliability: the autombw process is killed with SIGKILL at random points (at least 20 across
the test: while starting, in the middle of evaluations right after a journal append, and while
writing the final outputs), then ``autombw search --resume`` continues until the run is done.

Afterwards: every evaluation number 1..N is in ``history.csv`` exactly once, no weights twice,
every row complete, and every file in the run folder parses (JSON, JSON lines, YAML, CSV,
PNG); atomic writes may leave a hidden ``.NAME.*.tmp`` behind after a kill, never a torn file.
With ONE instance and a seed the search is exact: killed several times and resumed, it ends
with the same (number, weights, score) rows as an uninterrupted run.

The WebUIs are simulators in this test process; autombw runs as a real subprocess
(``sys.executable -m autombw_cli``), so the kill is a real SIGKILL of the whole program.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from autombw_cli.sim.server import SimulatorHandle
from search_helpers import write_search_config

pytest.importorskip("autombw_cli.search.journal")

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.name != "posix", reason="SIGKILL"),
    pytest.mark.slow,
]

EVALUATIONS = 24
KILLS = 22
SECRET_SEED = 20261126


@pytest.fixture
def sims(start_sim: Callable[..., SimulatorHandle]) -> list[SimulatorHandle]:
    return [start_sim(arch="sd1", latency_per_image=0.03, stop_timeout=3) for _ in range(2)]


def _rows(run_dir: Path) -> int:
    try:
        text = (run_dir / "history.csv").read_text(encoding="utf-8")
    except FileNotFoundError:
        return 0
    return max(0, text.count("\n") - 1)


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []


class _Proc:
    """The autombw subprocess plus its stdout lines, read on a thread as they come."""

    def __init__(self, config: Path, run_dir: Path | None) -> None:
        args = ["search", "--resume", str(run_dir)] if run_dir else ["search", str(config)]
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "autombw_cli", *args, "--plain"],
            cwd=config.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self.lines.append(raw.decode("utf-8", "replace"))

    def wrote(self) -> int:
        return sum(line.startswith("wrote ") for line in self.lines)

    def output(self) -> str:
        self._reader.join(10)
        return "".join(self.lines)


def _wait_until(proc: _Proc, cond, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            return False
        if cond():
            return True
        time.sleep(0.005)
    return False


def _kill(proc: _Proc) -> bool:
    """SIGKILL; True when the process was still running (a real kill point)."""
    if proc.popen.poll() is not None:
        return False
    os.kill(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(10)
    return True


def _check_files(run_dir: Path) -> list[str]:
    """Parse every file; return the atomic-write temp files a kill left behind."""
    leftovers = []
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file():
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            leftovers.append(path.name)  # an atomic write's temp file, never renamed into place
            continue
        text_suffixes = {".json", ".jsonl", ".yaml", ".csv", ".txt", ".log"}
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".jsonl":
            data = path.read_text(encoding="utf-8")
            assert data == "" or data.endswith("\n"), f"{path.name}: torn last line"
            for line in data.splitlines():
                json.loads(line)
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text(encoding="utf-8"))
        elif path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
            assert all(len(r) == len(rows[0]) for r in rows), f"{path.name}: a short row"
        elif path.suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                im.load()
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                assert list(fh.keys())
        elif path.suffix in text_suffixes:
            path.read_text(encoding="utf-8")
    return leftovers


def test_sigkill_at_random_points_then_resume_loses_nothing(
    tmp_path: Path, sims: list[SimulatorHandle]
) -> None:
    instances = "[" + ", ".join(f"{{url: '{h.url}', label: s{i}}}" for i, h in enumerate(sims))
    config = write_search_config(
        tmp_path,
        instances=instances + "]",
        evaluations=EVALUATIONS,
        passes="[{optimizer: random, max_evaluations: 10}, {optimizer: tpe}]",
        outputs="{run_dir: runs, save_images: best, final_merge: false}",
    )
    rng = random.Random(SECRET_SEED)
    runs = tmp_path / "runs"
    kills: list[str] = []
    attempts = 0

    def enough() -> bool:
        # counts, not timing: under load each mid-run kill may add only one row, so keep
        # killing until the budget is done and the final outputs were hit twice as well
        final = sum(w.startswith("final outputs") for w in kills)
        return len(kills) >= KILLS and final >= 2 and sum(w == "mid-run" for w in kills) >= 10

    while not enough():
        attempts += 1
        assert attempts < 120, f"no progress; kills so far: {kills}"
        dirs = _run_dirs(runs)
        assert len(dirs) <= 1, f"a second run folder was started: {dirs}"
        run_dir = dirs[0] if dirs and (dirs[0] / "config.yaml").is_file() else None
        proc = _Proc(config, run_dir)
        before = _rows(run_dir) if run_dir else 0
        where = ""
        if run_dir is None or len(kills) % 7 == 0:
            time.sleep(rng.uniform(0.05, 2.5))  # while starting / preflight / anywhere
            where = "random delay"
        elif before < EVALUATIONS:
            # right after a journal append, while the next ones are in flight
            _wait_until(proc, lambda d=run_dir, b=before: _rows(d) > b, 30)
            time.sleep(rng.uniform(0.0, 0.15))
            where = "mid-run"
        else:
            # budget done: kill it while it writes the recipe, images, plots and summary,
            # right after its k-th "wrote ..." line
            k = rng.randint(1, 7)
            _wait_until(proc, lambda: proc.wrote() >= k, 60)  # noqa: B023
            time.sleep(rng.uniform(0.0, 0.05))
            where = f"final outputs (after {proc.wrote()} written)"
        if _kill(proc):
            kills.append(where)
        else:  # it finished before the kill point: fine, try the next one
            assert proc.popen.returncode == 0, proc.output()
    assert sum(w.startswith("final outputs") for w in kills) >= 2, kills
    assert sum(w == "mid-run" for w in kills) >= 10, kills

    # resume without killing until the run says it is done
    dirs = _run_dirs(runs)
    assert len(dirs) == 1
    run_dir = dirs[0]
    for _ in range(3):
        proc = _Proc(config, run_dir)
        proc.popen.wait(120)
        assert proc.popen.returncode == 0, proc.output()
        if (run_dir / "summary.json").is_file() and _rows(run_dir) >= EVALUATIONS:
            break

    with open(run_dir / "history.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    numbers = [int(r["number"]) for r in rows]
    assert len(rows) == EVALUATIONS, f"lost or extra evaluations: {numbers}"
    assert len(set(numbers)) == EVALUATIONS, f"an evaluation recorded twice: {numbers}"
    # the number of an evaluation in flight at a kill goes to the next candidate: no gaps
    assert sorted(numbers) == list(range(1, EVALUATIONS + 1)), numbers
    weights = [tuple(v for k, v in r.items() if k and k.isupper()) for r in rows]
    assert len(set(weights)) == EVALUATIONS, "the same weights were recorded twice"
    assert all(r["merge_id"] and r["score"] for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["evaluations"] == EVALUATIONS
    leftovers = _check_files(run_dir)
    assert len(kills) >= 20
    print("kill points:", len(kills), kills, "temp files left:", leftovers)


def _history(run_dir: Path) -> list[tuple[int, tuple[str, ...], str]]:
    with open(run_dir / "history.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    slots = [k for k in rows[0] if k and k.isupper()] if rows else []
    return sorted((int(r["number"]), tuple(r[k] for k in slots), r["score"]) for r in rows)


def test_one_instance_killed_and_resumed_repeats_the_uninterrupted_run(
    tmp_path: Path, sims: list[SimulatorHandle]
) -> None:
    n = 14
    passes = "[{optimizer: random, max_evaluations: 4}, {optimizer: tpe}]"
    outputs = "{run_dir: runs, save_images: best, final_merge: false}"
    instances = f"[{{url: '{sims[0].url}', label: s0}}]"
    folders = [tmp_path / "uninterrupted", tmp_path / "killed"]
    configs = []
    for folder in folders:
        folder.mkdir()
        configs.append(
            write_search_config(
                folder, instances=instances, evaluations=n, passes=passes, outputs=outputs
            )
        )
    proc = _Proc(configs[0], None)
    proc.popen.wait(120)
    assert proc.popen.returncode == 0, proc.output()
    expected = _history(_run_dirs(folders[0] / "runs")[0])
    assert [row[0] for row in expected] == list(range(1, n + 1))

    rng = random.Random(SECRET_SEED + 1)
    runs = folders[1] / "runs"
    kills = attempts = 0
    while kills < 4 and attempts < 12:
        attempts += 1
        dirs = _run_dirs(runs)
        run_dir = dirs[0] if dirs and (dirs[0] / "history.csv").is_file() else None
        for d in dirs if run_dir is None else []:  # killed before its first evaluation
            shutil.rmtree(d)  # start afresh
        proc = _Proc(configs[1], run_dir)
        before = _rows(run_dir) if run_dir else 0
        target = before + rng.randint(1, 3)
        _wait_until(proc, lambda d=runs, t=target: any(_rows(p) >= t for p in _run_dirs(d)), 60)
        time.sleep(rng.uniform(0.0, 0.1))
        if _kill(proc):
            kills += 1
        else:
            assert proc.popen.returncode == 0, proc.output()
            break
    assert kills >= 3, f"only {kills} kills landed in {attempts} attempts"
    run_dir = _run_dirs(runs)[0]
    if not (run_dir / "summary.json").is_file():
        proc = _Proc(configs[1], run_dir)
        proc.popen.wait(120)
        assert proc.popen.returncode == 0, proc.output()
    got = _history(run_dir)
    assert got == expected, f"after {kills} kills: {[r[0] for r in got]}"
