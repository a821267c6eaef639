"""Faults of the run folder and the journal, as a long search meets them: two processes on one
run folder, journal files that disagree, a full disk, a read-only folder, a folder or bad bytes
where history.csv should be, a secret in a URL, and simulator folders left by killed processes.

Real failures wherever the machine allows them: a second process holding the lock, ``/dev/full``
(every write fails with ENOSPC) behind a journal file, ``chattr +i`` (refuses even root) and a
tiny tmpfs (skipped where they are not available). Each test fails on the code before the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autombw_cli.app.run import Run
from autombw_cli.config import load_config
from autombw_cli.errors import JournalError
from autombw_cli.search.events import RunStarted
from search_helpers import write_search_config

pytestmark = pytest.mark.timeout(180)

DONE, BUDGET = 6, 8


def _config(folder: Path) -> Path:
    return write_search_config(
        folder,
        instances="{simulate: 1, latency: 0.0}",
        evaluations=BUDGET,
        outputs="{run_dir: runs, save_images: none, final_merge: false}",
    )


def _execute(run: Run, sink: Any = None) -> Any:
    return asyncio.run(run.execute(sink or (lambda e: None), handle_signals=False))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder: DONE of BUDGET evaluations journaled (resuming adds the rest)."""
    folder = tmp_path_factory.mktemp("template")
    run = Run.create(load_config(_config(folder)), max_evaluations=DONE)
    _execute(run)
    return run.run_dir


@pytest.fixture
def run_dir(template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "runs" / template.name
    shutil.copytree(template, target)
    return target


def _numbers(path: Path) -> list[int]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [int(r["number"]) for r in csv.DictReader(fh)]


def _raw_numbers(path: Path) -> list[int]:
    import json

    return [json.loads(line)["number"] for line in path.read_text().splitlines()]


def _cli(args: list[str], cwd: Path, capsys: Any, monkeypatch: Any) -> tuple[int, str, str]:
    from autombw_cli.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("COLUMNS", "300")
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# --- 1. one process per run folder ---------------------------------------------------------
@pytest.mark.slow
def test_second_resume_of_a_folder_in_use_is_refused(
    run_dir: Path, capsys: Any, monkeypatch: Any
) -> None:
    """Another process holds the run folder (as a running `--resume` does): the CLI refuses
    with its pid (exit 6) and writes nothing; once that process is killed (SIGKILL, no clean
    up), the OS has dropped its lock and the resume runs."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom autombw_cli.folderlock import FolderLock\n"
            "lock = FolderLock.acquire(sys.argv[1])\nprint('locked', flush=True)\ntime.sleep(120)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = (run_dir / "history.csv").read_bytes()
        code, _, err = _cli(["search", "--resume", str(run_dir)], run_dir, capsys, monkeypatch)
        assert code == 6, err
        first = err.strip().splitlines()[0]
        assert first.startswith("error: ") and "Traceback" not in err
        assert f"is in use by another autombw (pid {holder.pid})" in first
        assert str(run_dir) in first
        assert (run_dir / "history.csv").read_bytes() == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    code, _, err = _cli(["search", "--resume", str(run_dir)], run_dir, capsys, monkeypatch)
    assert code == 0, err
    assert _numbers(run_dir / "history.csv") == list(range(1, BUDGET + 1))


@pytest.mark.slow
def test_two_runs_of_one_folder_in_one_process(run_dir: Path) -> None:
    first = Run.resume(run_dir)
    with pytest.raises(JournalError, match=f"in use by another autombw \\(pid {os.getpid()}\\)"):
        Run.resume(run_dir)
    _execute(first)  # releases the lock at the end
    assert _numbers(run_dir / "history.csv") == list(range(1, BUDGET + 1))
    Run.resume(run_dir)._lock.release()


def test_new_run_never_reuses_a_taken_folder_name(tmp_path: Path) -> None:
    """The folder name a new run computes is taken (here by a dangling link, as by a run
    started in the same second): it takes the next free name instead of failing."""
    from datetime import datetime

    cfg = load_config(_config(tmp_path))
    now = datetime(2026, 1, 2, 3, 4, 5)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "test-merge-20260102-030405").symlink_to(tmp_path / "nowhere")
    run = Run.create(cfg, now=now, max_evaluations=1)
    try:
        assert run.run_dir.name == "test-merge-20260102-030405-2"
        with pytest.raises(JournalError, match="in use by another autombw"):
            Run.resume(run.run_dir)
    finally:
        run._lock.release()


# --- 2. the journal's files must agree -------------------------------------------------------
@pytest.mark.parametrize("how", ["missing", "empty", "header-only"])
def test_history_lost_while_raw_scores_has_records_is_refused(
    run_dir: Path, how: str, capsys: Any, monkeypatch: Any
) -> None:
    history = run_dir / "history.csv"
    if how == "missing":
        history.unlink()
    elif how == "empty":
        history.write_bytes(b"")
    else:
        history.write_bytes(history.read_bytes().split(b"\n", 1)[0] + b"\n")
    code, _, err = _cli(["search", "--resume", str(run_dir)], run_dir, capsys, monkeypatch)
    assert code == 6, err
    first = err.strip().splitlines()[0]
    assert "history.csv" in first and "raw_scores.jsonl" in first, first
    assert "Traceback" not in err
    assert _raw_numbers(run_dir / "raw_scores.jsonl") == list(range(1, DONE + 1))


@pytest.mark.slow
def test_duplicate_history_rows_count_once_with_a_warning(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    history = run_dir / "history.csv"
    lines = history.read_bytes().splitlines(keepends=True)
    history.write_bytes(b"".join(lines + lines[2:5]))  # #2..#4 again, as two writers leave it
    run = Run.resume(run_dir)
    assert "appear in several rows" in caplog.text and "#2 at lines 3, 8" in caplog.text
    assert len(run.records) == DONE
    _execute(run)
    numbers = _numbers(history)
    assert numbers[-2:] == [DONE + 1, DONE + 2]  # numbering goes on from the highest
    assert "appear in several rows" in (run_dir / "run.log").read_text()


@pytest.mark.slow
def test_torn_history_row_drops_its_orphan_raw_record(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed while writing history row #6 (raw record #6 complete): the row is cut, #6 is
    evaluated again, and raw_scores.jsonl holds each number once (no orphan #6 left before
    the new one)."""
    history = run_dir / "history.csv"
    data = history.read_bytes()
    history.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 40])
    run = Run.resume(run_dir)
    assert "#6 has no row in history.csv" in caplog.text
    _execute(run)
    assert _numbers(history) == list(range(1, BUDGET + 1))
    assert _raw_numbers(run_dir / "raw_scores.jsonl") == list(range(1, BUDGET + 1))
    assert "removed the record of evaluation #6" in (run_dir / "run.log").read_text()


@pytest.mark.slow
def test_history_with_a_byte_order_mark_resumes(run_dir: Path) -> None:
    history = run_dir / "history.csv"
    history.write_bytes(b"\xef\xbb\xbf" + history.read_bytes())  # saved by a spreadsheet
    _execute(Run.resume(run_dir))
    assert _numbers(history) == list(range(1, BUDGET + 1))


@pytest.mark.parametrize("fault", ["not-utf8", "folder"])
def test_unreadable_history_is_a_clear_error(
    run_dir: Path, fault: str, capsys: Any, monkeypatch: Any
) -> None:
    history = run_dir / "history.csv"
    if fault == "not-utf8":
        with open(history, "ab") as fh:
            fh.write(b"7,1,complete,\xff\xfe\xfa garbage\n")
        expected = ("history.csv, line 8", "not UTF-8")
    else:
        history.unlink()
        history.mkdir()
        expected = ("history.csv", "is a folder")
    code, _, err = _cli(["search", "--resume", str(run_dir)], run_dir, capsys, monkeypatch)
    assert code == 6, err
    first = err.strip().splitlines()[0]
    assert first.startswith("error: ") and "Traceback" not in err
    for text in expected:
        assert text in first, first


# --- 3. a full disk, a read-only folder ------------------------------------------------------
@pytest.mark.slow
def test_disk_full_names_the_file_and_is_not_masked_by_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``raw_scores.jsonl`` (from the search's start) and ``run.log`` sit on a full disk
    (``/dev/full``): the run fails with a JournalError naming raw_scores.jsonl (not
    history.csv), not an OSError from closing the log, and prints no logging traceback."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux)")
    run = Run.create(load_config(_config(tmp_path)))
    (run.run_dir / "run.log").symlink_to("/dev/full")

    def sink(event: Any) -> None:
        if isinstance(event, RunStarted):
            (run.run_dir / "raw_scores.jsonl").symlink_to("/dev/full")

    with pytest.raises(JournalError) as info:
        _execute(run, sink)
    assert "raw_scores.jsonl" in info.value.message
    assert "No space left on device" in info.value.message
    assert "history.csv" not in info.value.message
    err = capfd.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    assert info.value.exit_code == 6


@contextlib.contextmanager
def _immutable(folder: Path) -> Iterator[None]:
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr")
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (file system or privileges)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


@pytest.mark.slow
def test_read_only_run_folder_in_the_wrap_up(run_dir: Path, capsys: Any, monkeypatch: Any) -> None:
    """The run folder turns read-only (``chattr +i``: even root cannot create files in it)
    after the search started: the journal still appends, the wrap-up cannot write its
    outputs: exit 6 with the folder and the reason, no traceback."""
    import autombw_cli.app.run as run_mod

    original = run_mod.Run._wrap_up
    holder: dict[str, Any] = {}

    async def wrap_up(self: Any, *args: Any) -> Any:
        holder["ctx"] = _immutable(self.run_dir)
        holder["ctx"].__enter__()
        return await original(self, *args)

    monkeypatch.setattr(run_mod.Run, "_wrap_up", wrap_up)
    try:
        code, _, err = _cli(["search", "--resume", str(run_dir)], run_dir, capsys, monkeypatch)
    finally:
        if "ctx" in holder:
            holder["ctx"].__exit__(None, None, None)
    assert code == 6, err
    first = err.strip().splitlines()[0]
    assert "Traceback" not in err
    assert str(run_dir) in first and "Operation not permitted" in first, first
    assert _numbers(run_dir / "history.csv") == list(range(1, BUDGET + 1))


def test_new_run_on_a_full_disk_leaves_nothing(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    """A real full disk: a 64 KiB tmpfs filled up (skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as fh:
            while True:
                fh.write(b"x" * 4096)
                fh.flush()
        (disk / "runs").mkdir()
        _config(tmp_path)
        text = (
            (tmp_path / "search.yaml").read_text().replace("run_dir: runs", f"run_dir: {disk}/runs")
        )
        (tmp_path / "search.yaml").write_text(text)
        code, _, err = _cli(["search", "search.yaml"], tmp_path, capsys, monkeypatch)
        assert code == 6, err
        first = err.strip().splitlines()[0]
        assert "No space left on device" in first and "Traceback" not in err, err
        assert list((disk / "runs").iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# --- 5. secrets in URLs ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "ftp://alice:s3cret@host:7860/?token=T0KEN",
        "alice:s3cret@127.0.0.1:7860",
        "http://127.0.0.1:7860/?token=T0KEN",
    ],
)
def test_url_errors_never_show_credentials_or_query(
    tmp_path: Path, url: str, capsys: Any, monkeypatch: Any
) -> None:
    path = _config(tmp_path)
    text = path.read_text().replace("{simulate: 1, latency: 0.0}", f"[{{url: '{url}'}}]")
    path.write_text(text)
    code, out, err = _cli(["config", "check", "search.yaml"], tmp_path, capsys, monkeypatch)
    assert code == 2, err
    assert "s3cret" not in out + err and "T0KEN" not in out + err
    assert "instances[0].url" in err


def test_client_and_webui_errors_redact_urls() -> None:
    from autombw_cli.errors import ConfigError, WebUIError
    from autombw_cli.redact import redact_url
    from autombw_cli.webui.client import WebUIClient
    from autombw_cli.webui.mapping import describe_transport_error

    with pytest.raises(ConfigError) as info:
        WebUIClient("http://alice:s3cret@[::1/?token=T0KEN")
    assert "s3cret" not in str(info.value) and "T0KEN" not in str(info.value)
    e = WebUIError(
        "GET http://alice:s3cret@h:1/x?token=T0KEN failed",
        instance="http://bob:pw@h:1/?k=T0KEN",
        hint="see http://h:1/?token=T0KEN",
    )
    assert "s3cret" not in str(e) and "T0KEN" not in str(e) and ":pw@" not in str(e)
    assert "http://***@h:1/x?***" in str(e)
    msg = describe_transport_error(RuntimeError("proxy http://u:s3cret@proxy:3128/?a=T0KEN down"))
    assert "s3cret" not in msg and "T0KEN" not in msg
    assert redact_url("http://user:pa/ss@host:1/p?q#f") == "http://***@host:1/p?***#***"


# --- 6. simulator folders -------------------------------------------------------------------
@pytest.mark.slow
def test_simulator_folders_of_killed_processes_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process running a simulator is killed (SIGKILL): its folder stays; the next
    simulator removes it, keeps a live process's folder, and removes its own on close."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    script = (
        "from autombw_cli.sim.server import SimulatedWebUI\nimport time\n"
        "sim = SimulatedWebUI()\nprint(sim.model_dir, flush=True)\ntime.sleep(120)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    try:
        folders = [Path(p.stdout.readline().strip()) for p in procs]  # type: ignore[union-attr]
        assert all(f.is_dir() and f.parent == temp for f in folders)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        assert folders[0].is_dir()  # a killed process cannot clean up
        monkeypatch.setattr(tempfile, "tempdir", str(temp))
        from autombw_cli.sim.server import SimulatedWebUI

        sim = SimulatedWebUI()
        assert not folders[0].exists(), "the dead process's folder was left"
        assert folders[1].is_dir(), "a live simulator's folder was removed"
        sim.close()
        assert not sim.model_dir.exists()
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
