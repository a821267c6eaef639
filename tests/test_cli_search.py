"""`autombw search` / `autombw doctor` as a user runs them: real subprocesses, real signals,
simulated WebUIs over loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search_helpers import history_numbers, write_search_config

# the journal (search helper) is needed by every full run
pytest.importorskip("autombw_cli.search.journal")

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "autombw_cli", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("COLUMNS", None)
    return env


def _run(*args: str, cwd: Path, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cmd(*args), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )


class _Search:
    """A search running in a subprocess whose plain output we follow line by line."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            _cmd("search", "--plain", *args),
            cwd=cwd,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.run_dir: Path | None = None

    def wait_for_evaluations(self, n: int, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if line.startswith("run ") and "writing to " in line:
                self.run_dir = Path(line.rsplit("writing to ", 1)[1].strip())
            if sum(1 for x in self.lines if x.startswith("[")) >= n:
                return
        raise AssertionError(
            f"search did not reach {n} evaluations: {''.join(self.lines)}"
            f"{self.proc.stderr.read() if self.proc.poll() is not None else ''}"  # type: ignore[union-attr]
        )

    def finish(self, timeout: float = 150) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.lines) + out, err


def _main(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the console entry point in-process (saves a subprocess start per check)."""
    from autombw_cli.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_config_exits_2_naming_the_field(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "models: {a: x.safetensors, b: y.safetensors}\ninstances: {simulate: 1}\n"
        "payloads: {files: [missing.json]}\nsearch: {max_evaluatons: 3}\n"
    )
    code, _out, err = _main("search", str(bad), capsys=capsys)
    assert code == 2, err
    assert "error" in err.splitlines()[0].lower()
    assert "max_evaluatons" in err


def test_search_needs_a_config_or_resume(capsys) -> None:  # type: ignore[no-untyped-def]
    code, _out, err = _main("search", capsys=capsys)
    assert code == 2
    assert "--resume" in err


def test_unreachable_instances_exit_3(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = write_search_config(
        tmp_path, instances="[{url: 'http://127.0.0.1:9', label: gone}]", evaluations=3
    )
    code, _out, err = _main("search", "--plain", str(cfg), capsys=capsys)
    assert code == 3, err
    assert "gone" in err and "unreachable" in err
    code, out, _err = _main("doctor", str(cfg), capsys=capsys)
    assert code == 3
    assert "gone" in out and "unreachable" in out


def test_search_says_the_configs_warnings_before_it_starts(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """What `config check` warns about, `search` says too: a user who never ran the check
    learns before a long run that its passes' budgets add up to more than the total."""
    cfg = write_search_config(
        tmp_path,
        instances="[{url: 'http://127.0.0.1:9', label: gone}]",
        evaluations=3,
        passes="[{optimizer: random, max_evaluations: 2}, {optimizer: random, max_evaluations: 2}]",
    )
    code, _out, err = _main("search", "--plain", str(cfg), capsys=capsys)
    assert code == 3, err
    assert "warning: the passes' max_evaluations add up to 4" in " ".join(err.split())


def test_doctor_on_healthy_instances(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = write_search_config(tmp_path, instances="{simulate: 2}")
    code, out, _err = _main("doctor", str(cfg), capsys=capsys)
    assert code == 0, out
    assert out.count("ready") == 2 and "A+B" in out and "loads" in out


def test_doctor_offline_without_imagereward_files_says_it_once(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The default scorer on a box that cannot reach the hub: one message (not the hub
    client's retry warnings), listed once, naming the file and where to put it."""
    cfg = write_search_config(tmp_path, instances="{simulate: 1}")
    text = cfg.read_text().replace(
        "scorer: {name: sim, device: cpu, tally: arithmetic, sigmoid: false}",
        f"scorer: {{name: imagereward, device: cpu, paths: {{download_root: {tmp_path / 'ir'}}}}}",
    )
    cfg.write_text(text)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.autombw-test.invalid")
    code, out, err = _main("doctor", str(cfg), capsys=capsys)
    assert code == 3, out + err
    assert (out + err).count("ImageReward.pt is not in") == 1, out + err
    assert "cannot be reached" in out and "Retrying" not in out + err


def test_killed_search_resumes_without_losing_or_repeating(tmp_path: Path) -> None:
    cfg = write_search_config(
        tmp_path,
        instances="{simulate: 2, latency: 0.05}",
        evaluations=24,
        outputs="{run_dir: runs, save_images: none, final_merge: false}",
    )
    search = _Search(str(cfg), cwd=tmp_path)
    search.wait_for_evaluations(6)
    search.proc.send_signal(signal.SIGKILL)
    search.proc.wait(timeout=30)
    assert search.run_dir is not None
    before = history_numbers(search.run_dir)
    assert len(before) >= 6 and len(before) == len(set(before))
    res = _run("search", "--plain", "--resume", str(search.run_dir), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    after = history_numbers(search.run_dir)
    assert after[: len(before)] == before  # nothing rewritten
    assert len(after) == 24 and len(set(after)) == 24  # nothing lost, nothing twice
    summary = json.loads((search.run_dir / "summary.json").read_text())
    assert summary["evaluations"] == 24


def test_ctrl_c_finishes_in_flight_work_and_writes_outputs(tmp_path: Path) -> None:
    cfg = write_search_config(
        tmp_path,
        instances="{simulate: 2, latency: 0.05}",
        evaluations=200,
        outputs="{run_dir: runs, save_images: best, final_merge: true}",
    )
    jlog = tmp_path / "events.jsonl"
    search = _Search("--json-log", str(jlog), str(cfg), cwd=tmp_path)
    search.wait_for_evaluations(4)
    search.proc.send_signal(signal.SIGINT)
    code, _out, err = search.finish()
    assert code == 130, err
    assert search.run_dir is not None
    assert f"continue with `autombw search --resume {search.run_dir}`" in err  # one line
    summary = json.loads((search.run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted"
    assert summary["evaluations"] == len(history_numbers(search.run_dir)) < 200
    assert (search.run_dir / "test-merge.recipe.txt").is_file()
    assert "checkpoint" not in summary["outputs"]  # no final merge after an interruption
    events = [json.loads(line) for line in jlog.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "notice" and "run_started" in kinds and kinds[-1] == "run_finished"
    assert "evaluation_done" in kinds


def test_second_ctrl_c_aborts_with_the_journal_intact(tmp_path: Path) -> None:
    cfg = write_search_config(tmp_path, instances="{simulate: 1, latency: 0.3}", evaluations=200)
    search = _Search(str(cfg), cwd=tmp_path)
    search.wait_for_evaluations(2)
    search.proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    search.proc.send_signal(signal.SIGINT)
    code, _out, err = search.finish()
    assert code == 130
    assert "--resume" in err
    assert search.run_dir is not None
    numbers = history_numbers(search.run_dir)
    assert len(numbers) >= 2 and len(numbers) == len(set(numbers))


def test_quickstart_runs_from_the_readme(tmp_path: Path) -> None:
    """The README's first command, on a copy of configs/ and payloads/ (to keep runs/ clean)."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(ROOT / "payloads", tmp_path / "payloads")
    res = _run(
        "search", "--plain", "--max-evaluations", "6", "configs/quickstart.yaml", cwd=tmp_path
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["evaluations"] == 6
    for key in (
        "recipe",
        "summary",
        "plot_scores",
        "plot_best-weights",
        "plot_top-k",
        "checkpoint",
    ):
        assert key in summary["outputs"] or key == "summary", key


def test_resume_can_extend_a_finished_run_or_says_why_not(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = write_search_config(tmp_path, instances="{simulate: 1}", evaluations=6)
    code, _, err = _main("search", "--plain", str(cfg), capsys=capsys)
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    code, out, err = _main(
        "search", "--plain", "--resume", str(run_dir), "--max-evaluations", "9", capsys=capsys
    )
    assert code == 0, err
    assert "extending the run to 9 evaluations (6 done; the config says 6)" in out + err
    assert history_numbers(run_dir) == list(range(1, 10))
    passes = "[{optimizer: random, max_evaluations: 3}, {optimizer: random, max_evaluations: 3}]"
    capped = tmp_path / "capped"
    capped.mkdir()
    cfg = write_search_config(capped, instances="{simulate: 1}", evaluations=6, passes=passes)
    assert _main("search", "--plain", str(cfg), capsys=capsys)[0] == 0
    (run_dir,) = (capped / "runs").iterdir()
    code, out, err = _main(
        "search", "--plain", "--resume", str(run_dir), "--max-evaluations", "9", capsys=capsys
    )
    assert code == 0 and history_numbers(run_dir) == list(range(1, 7))
    said = " ".join((out + err).split())
    assert "nothing was added" in said and "pass 1: 3, pass 2: 3" in said and "--warm-start" in said


def test_resume_of_a_missing_folder_says_so(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code, _, err = _main("search", "--resume", str(tmp_path / "nope"), capsys=capsys)
    assert code == 2 and "no such run folder" in err


def _with_stdout_closed(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI with its stdout a pipe whose reader is already gone (`... | head -0`)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "autombw_cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=200)
    return subprocess.CompletedProcess(args, proc.returncode, "", err)


def test_a_closed_stdout_ends_a_command_quietly_and_not_a_search(tmp_path: Path) -> None:
    """`autombw recover X | head -1` ends like a Unix tool (141, no traceback); a search whose
    reader went away keeps searching and finishes its budget."""
    from conftest import FIXTURES

    log = FIXTURES / "auto-mbw-rt" / "console-log-2023-11-05.txt"
    recover = _with_stdout_closed("recover", str(log), cwd=tmp_path)
    assert recover.returncode == 141 and "Traceback" not in recover.stderr, recover.stderr
    cfg = write_search_config(tmp_path, instances="{simulate: 1}", evaluations=8)
    search = _with_stdout_closed("search", str(cfg), "--plain", cwd=tmp_path)
    assert search.returncode == 0, search.stderr
    assert "Traceback" not in search.stderr and "goes on without printing" in search.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert history_numbers(run_dir) == list(range(1, 9))
    assert "Traceback" not in (run_dir / "run.log").read_text()


def test_warm_start_says_what_it_learnt_and_warns_of_another_scale(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import csv

    first = tmp_path / "first"
    first.mkdir()
    cfg = write_search_config(first, instances="{simulate: 1}", evaluations=5)
    assert _main("search", "--plain", str(cfg), capsys=capsys)[0] == 0
    (run_dir,) = (first / "runs").iterdir()
    with open(run_dir / "history.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows.append(dict(rows[0]))  # the same weights twice: told once, and said so
    for row in rows:  # as if scored by another scorer: ~100x the sim scorer's scale
        row["score"] = str(float(row["score"]) * 100 + 50)
    warm = tmp_path / "other-scale.csv"
    with open(warm, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cfg = write_search_config(tmp_path, instances="{simulate: 1}", evaluations=2)
    code, out, err = _main("search", "--plain", str(cfg), "--warm-start", str(warm), capsys=capsys)
    said = " ".join((out + err).split())
    assert code == 0, said
    assert "the optimizer learnt 5 of 6 evaluations" in said and "1 repeating" in said
    assert "far from the warm-start file's scores" in said


def test_doctor_names_a_wrong_arch_and_a_model_name_in_another_case(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from autombw_cli.sim.server import start_simulator_in_thread

    with start_simulator_in_thread(arch="sd1", model_dir=tmp_path / "models") as sim:
        instances = f"[{{url: '{sim.url}', label: gpu0}}]"
        sdxl = "{a: simA.safetensors, b: simB.safetensors, output: out, arch: sdxl}"
        cfg = write_search_config(tmp_path, instances=instances, models=sdxl)
        code, out, _ = _main("doctor", str(cfg), capsys=capsys)
        said = " ".join(out.split())
        assert code == 3
        assert "models.arch is sdxl but models A and B are sd1 checkpoints" in said
        assert "LABEL_EMB" not in said
        wrong_case = "{a: sima, b: simB, output: out, arch: sd1}"
        cfg = write_search_config(tmp_path, instances=instances, models=wrong_case)
        code, out, _ = _main("doctor", str(cfg), capsys=capsys)
        said = " ".join(out.split())
        assert code == 3 and "it lists 'simA' (names are case-sensitive" in said
        unknown = "{a: nosuch, b: simB, output: out, arch: sd1}"
        cfg = write_search_config(tmp_path, instances=instances, models=unknown)
        code, out, _ = _main("doctor", str(cfg), capsys=capsys)
        assert code == 3 and "it has 2: simA, simB" in " ".join(out.split())
