"""A chained merge killed (SIGKILL) mid-step and between steps, then resumed with
``autombw search --resume CHAIN_DIR``, ends exactly like an uninterrupted chain.

autombw runs as a real subprocess with ONE simulated WebUI of its own (``simulate: 1``), so each
kill also kills the WebUI: the resumed chain meets a fresh WebUI without step 1's saved result
and must save it again (from the recorded recipe) before step 2 can go on. With one instance
and a seed the search is exact, so every step's (number, weights, score) rows and the chain
recipe's weights must equal the uninterrupted run's.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from autombw_cli.chain_recipe import read_chain_recipe
from search_helpers import write_search_config

pytestmark = [
    pytest.mark.timeout(400),
    pytest.mark.skipif(os.name != "posix", reason="SIGKILL"),
    pytest.mark.slow,
]

CHAIN = "chain: [{b: simC.safetensors, search: {max_evaluations: 6}}]"


def _start(config: Path, chain_dir: Path | None) -> subprocess.Popen[bytes]:
    args = ["search", "--resume", str(chain_dir)] if chain_dir else ["search", str(config)]
    return subprocess.Popen(
        [sys.executable, "-m", "autombw_cli", *args, "--plain"],
        cwd=config.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _rows(path: Path) -> int:
    try:
        return max(0, path.read_text(encoding="utf-8").count("\n") - 1)
    except FileNotFoundError:
        return 0


def _history(run_dir: Path) -> list[tuple[int, tuple[str, ...], str]]:
    with open(run_dir / "history.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    slots = [k for k in rows[0] if k and k.isupper()] if rows else []
    return sorted((int(r["number"]), tuple(r[k] for k in slots), r["score"]) for r in rows)


def _kill_when(proc: subprocess.Popen[bytes], cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while not cond():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _finish(config: Path, chain_dir: Path | None) -> None:
    proc = _start(config, chain_dir)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err.decode()


def _outcome(chain_dir: Path) -> tuple[object, ...]:
    chain = read_chain_recipe(chain_dir / "chain.recipe.json")
    weights = [dict(s.weights.values) for s in chain.steps]
    return _history(chain_dir / "step-1"), _history(chain_dir / "step-2"), weights


def test_a_chain_killed_mid_step_and_between_steps_resumes_to_the_same_result(
    tmp_path: Path,
) -> None:
    passes = "[{optimizer: random, max_evaluations: 3}, {optimizer: tpe}]"
    outputs = "{run_dir: runs, save_images: none, final_merge: true}"
    instances = "{simulate: 1, latency: 0.02}"
    configs = []
    for name in ("uninterrupted", "killed"):
        folder = tmp_path / name
        folder.mkdir()
        configs.append(
            write_search_config(
                folder,
                instances=instances,
                evaluations=7,
                passes=passes,
                outputs=outputs,
                extra_search=CHAIN,
            )
        )
    _finish(configs[0], None)
    (expected_dir,) = (configs[0].parent / "runs").iterdir()
    expected = _outcome(expected_dir)
    assert [r[0] for r in expected[0]] == list(range(1, 8))
    assert [r[0] for r in expected[1]] == list(range(1, 7))

    runs = configs[1].parent / "runs"

    def chain_dir() -> Path:
        (found,) = runs.iterdir()
        return found

    # 1. mid-step 1, after three evaluations
    proc = _start(configs[1], None)
    _kill_when(proc, lambda: runs.is_dir() and _rows(chain_dir() / "step-1/history.csv") >= 3)
    # 2. between the steps: step 1 has written its summary, step 2 has no evaluation yet
    proc = _start(configs[1], chain_dir())
    _kill_when(proc, lambda: (chain_dir() / "step-1/summary.json").is_file())
    assert _rows(chain_dir() / "step-2/history.csv") == 0
    # 3. mid-step 2 (the fresh WebUI got step 1's result saved again first)
    proc = _start(configs[1], chain_dir())
    _kill_when(proc, lambda: _rows(chain_dir() / "step-2/history.csv") >= 2)
    state = json.loads((chain_dir() / "chain-state.json").read_text())
    assert state["steps"][0]["saved"] is True
    # 4. to the end
    _finish(configs[1], chain_dir())
    assert _outcome(chain_dir()) == expected
    assert (chain_dir() / "step-2" / "test-merge.safetensors").is_file()
