"""The journal: named columns, fsynced rows, torn last lines, warm-start reading."""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.conftest import FIXTURES, REPO_ROOT

from autombw_cli.blocks import Arch, Ordering, Weights, layout
from autombw_cli.errors import JournalError
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.journal import Journal, read_warm_start
from autombw_cli.search.optimizers import TrialState

AUTO_MBW_CSV = FIXTURES / "auto-mbw-rt" / "history-15b-AstolfoMix-08b09b.csv"


def ev(n: int, score: float | None = 0.5, **kw) -> Evaluation:
    w = Weights.uniform(Arch.SD1, 0.1).replace({"M00": n / 100, "OUT": 0.3})
    state = TrialState.COMPLETE if score is not None else TrialState.FAILED
    return Evaluation(
        number=n,
        weights=w,
        score=score,
        payload_scores={"portrait": 0.25, "landscape": -1.5} if score is not None else {},
        raw_scores=[0.1, -0.2, 0.3] if score is not None else [],
        instance="http://127.0.0.1:7861",
        merge_id=f"m{n}",
        timings={"merge_s": 0.5, "generate_s": 3.25, "score_s": 0.01, "total_s": 3.76},
        timestamp=1_700_000_000.0 + n,
        state=state,
        **kw,
    )


def test_rows_have_named_columns_and_read_back(tmp_path: Path) -> None:
    j = Journal(tmp_path / "run", Arch.SD1)
    j.append(ev(1, 0.5))
    j.append(ev(2, None))
    j.append(ev(3, -0.75, pass_index=2))
    with (tmp_path / "run" / "history.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:7] == [
        "number",
        "pass",
        "state",
        "timestamp",
        "worker",
        "merge_id",
        "score",
    ]
    assert all(s in rows[0] for s in layout(Arch.SD1).slots)
    assert rows[0]["M00"] == "0.01" and rows[0]["OUT"] == "0.3"
    assert rows[0]["payload:landscape"] == "-1.5" and rows[0]["time:generate_s"] == "3.25"
    assert rows[1]["state"] == "failed" and rows[1]["score"] == ""
    assert rows[0]["timestamp"].startswith("2023-11-14T22:13:21")
    back = Journal(tmp_path / "run", Arch.SD1).read()
    assert back == [ev(1, 0.5), ev(2, None), ev(3, -0.75, pass_index=2)]
    assert (tmp_path / "run" / "raw_scores.jsonl").read_text().count("\n") == 3


def test_a_torn_last_line_is_dropped_with_a_warning_and_cut_before_appending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    j = Journal(tmp_path, Arch.SD1)
    j.append(ev(1))
    j.append(ev(2))
    path = tmp_path / "history.csv"
    full = path.read_bytes()
    path.write_bytes(full[: len(full) - 17])  # killed in the middle of row 2
    with caplog.at_level(logging.WARNING):
        assert [e.number for e in Journal(tmp_path, Arch.SD1).read()] == [1]
    assert "unfinished last line" in caplog.text
    j2 = Journal(tmp_path, Arch.SD1)
    j2.append(ev(3))
    assert [e.number for e in j2.read()] == [1, 3]
    assert path.read_bytes().endswith(b"\n")


def test_a_corrupt_middle_row_is_a_journal_error(tmp_path: Path) -> None:
    j = Journal(tmp_path, Arch.SD1)
    j.append(ev(1))
    j.append(ev(2))
    lines = (tmp_path / "history.csv").read_text().splitlines(keepends=True)
    lines[1] = "1,2,3\n"
    (tmp_path / "history.csv").write_text("".join(lines))
    with pytest.raises(JournalError, match="line 2"):
        j.read()


def test_sigkill_never_leaves_a_half_row(tmp_path: Path) -> None:
    """A child appends rows as fast as it can and reports each fsynced row; we SIGKILL it
    mid-stream. Every reported row must be on disk and every row on disk must parse."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from tests.test_search_journal import ev
        from autombw_cli.search.journal import Journal
        from autombw_cli.blocks import Arch
        j = Journal({str(tmp_path)!r}, Arch.SD1)
        n = 0
        while True:
            n += 1
            j.append(ev(n))
            print(n, flush=True)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    reported = 0
    deadline = time.monotonic() + 60
    while reported < 40 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        reported = int(line)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    rows = Journal(tmp_path, Arch.SD1).read()
    assert reported >= 40
    assert len(rows) >= reported
    assert [e.number for e in rows] == list(range(1, len(rows) + 1))


def test_warm_start_from_an_auto_mbw_rt_history_in_nat_order() -> None:
    pairs = list(read_warm_start(AUTO_MBW_CSV, Arch.SD1))
    with AUTO_MBW_CSV.open(newline="") as fh:
        rows = [r for r in csv.reader(fh) if r][1:]  # the file has Windows line ends
    assert len(pairs) == len(rows)
    first, score = pairs[0]
    nat = [float(v) for v in rows[0][:27]]
    assert first == Weights.from_list(Arch.SD1, nat, Ordering.NAT)
    assert first["OUT"] == nat[13] and first["TIME_EMBED"] == nat[26] and first["OUT00"] == nat[14]
    assert score == float(rows[0][27])


def test_warm_start_from_our_own_history(tmp_path: Path) -> None:
    j = Journal(tmp_path, Arch.SD1)
    j.append(ev(1, 0.5))
    j.append(ev(2, None))
    j.append(ev(3, 0.9))
    pairs = list(read_warm_start(tmp_path / "history.csv", Arch.SD1))
    assert [s for _, s in pairs] == [0.5, 0.9]
    assert pairs[1][0] == ev(3).weights


def test_warm_start_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(JournalError, match=r"bad\.csv, line 2"):
        list(read_warm_start(bad, Arch.SD1))
    with pytest.raises(JournalError, match="does not exist"):
        list(read_warm_start(tmp_path / "missing.csv", Arch.SD1))


def test_evaluation_states_are_checked() -> None:
    with pytest.raises(ValueError, match="needs a score"):
        Evaluation(number=1, weights=Weights.uniform(Arch.SD1, 0.5), score=None)
    with pytest.raises(ValueError, match="finished"):
        Evaluation(
            number=1, weights=Weights.uniform(Arch.SD1, 0.5), score=None, state=TrialState.RUNNING
        )
