"""One reader of history CSVs (search/history.py): rows, line numbers, and one definition of a
complete row that the journal (--resume), the warm start and recover agree on."""

from __future__ import annotations

from pathlib import Path

import pytest

from autombw_cli.blocks import Arch, Weights
from autombw_cli.errors import JournalError
from autombw_cli.recover import recover
from autombw_cli.search.evaluation import Evaluation, TrialState
from autombw_cli.search.history import is_complete, mbwrt_weight_columns, split_rows
from autombw_cli.search.journal import Journal, read_warm_start


def test_rows_keep_physical_line_numbers_whatever_the_line_ends() -> None:
    text = 'a,b\r\r\n\n1,2\r\n"x\ny",3\n4,5'
    header, rows = split_rows(text)
    assert header == ("a", "b")
    assert [(r.row, r.line, r.cells, r.torn) for r in rows] == [
        (1, 3, ("1", "2"), False),
        (2, 4, ("x\ny", "3"), False),  # a quoted cell over two lines is one row
        (3, 6, ("4", "5"), True),  # no line end: torn
    ]
    assert rows[0].where == "row 1 (line 3)"
    assert split_rows("\n\n") == ((), [])


@pytest.mark.parametrize(
    ("state", "score", "complete"),
    [
        ("", "0.5", True),
        (None, "0.5", True),
        ("complete", "0.5", True),
        ("TrialState.COMPLETE", "1", True),
        ("OK", "1", True),
        ("done", "1", True),
        ("complete", "", False),
        ("complete", "  ", False),
        ("failed", "0.5", False),
        ("running", "0.5", False),
    ],
)
def test_one_definition_of_a_complete_row(state: str | None, score: str, complete: bool) -> None:
    assert is_complete(state, score) is complete


def test_auto_mbw_rt_headers_are_told_by_their_numbered_columns() -> None:
    assert mbwrt_weight_columns([*map(str, range(27)), "score"]) == 27
    assert mbwrt_weight_columns(("number", "0", "1")) == 0


def _history_with_states(tmp_path: Path) -> tuple[Path, list[Weights]]:
    """Our journal, then its state cells rewritten by hand to other words for the same thing."""
    journal = Journal(tmp_path, Arch.SD1)
    weights = [Weights.uniform(Arch.SD1, v) for v in (0.2, 0.4, 0.6)]
    for n, w in enumerate(weights, start=1):
        score = None if n == 2 else n / 10
        state = TrialState.FAILED if score is None else TrialState.COMPLETE
        journal.append(Evaluation(number=n, weights=w, score=score, state=state, timestamp=n))
    path = tmp_path / "history.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(",complete,", ",ok,")  # evaluation 3
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "raw_scores.jsonl").unlink()
    return path, weights


def test_journal_warm_start_and_recover_agree_on_complete_rows(tmp_path: Path) -> None:
    path, weights = _history_with_states(tmp_path)
    resumed = [e for e in Journal(tmp_path, Arch.SD1).read() if e.ok]
    warm = list(read_warm_start(path, Arch.SD1))
    recovered = recover(path).evaluations
    expected = [(weights[0], 0.1), (weights[2], 0.3)]
    assert [(e.weights, e.score) for e in resumed] == expected
    assert warm == expected
    assert [(e.weights, e.score) for e in recovered] == expected


def test_a_complete_row_without_a_finite_score_is_damaged_for_every_reader(
    tmp_path: Path,
) -> None:
    path, _ = _history_with_states(tmp_path)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    cells[header.index("score")] = "nan"
    lines[1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(JournalError, match="line 2"):
        Journal(tmp_path, Arch.SD1).read()
    with pytest.raises(JournalError, match="line 2"):
        list(read_warm_start(path, Arch.SD1))
    with pytest.raises(JournalError, match=r"line 2\), column score"):
        recover(path)
