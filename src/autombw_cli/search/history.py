"""Reading history CSVs, ours (``history.csv``) and auto-MBW-rt's: the rows of the text with
their line numbers, which of the two formats a header is, and the one definition of a complete
row. The journal (``--resume``), the warm start and ``autombw recover`` all read through here;
each says what is wrong with a row in its own words.

Rows are physical lines (LF; CRLF and the CR CR LF pandas writes on Windows are accepted); a
quoted cell may go on over several lines. Blank lines are skipped. A last line without a line
end is marked ``torn`` (a write the process did not finish).

A row is complete when its state says so (no state column, an empty cell, ``complete``,
``completed``, ``ok``, ``done``, ``success``, ``TrialState.COMPLETE``) and its score cell is
not empty. The score of a complete row must be a finite number; a row where it is not is
damaged, never skipped quietly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass

COMPLETE_STATES = frozenset({"", "complete", "completed", "ok", "done", "success"})


@dataclass(frozen=True)
class HistoryRow:
    """One data row: its position among the data rows, the physical line it starts on, its
    cells as written (not stripped), and whether it is a torn last line."""

    row: int  # 1-based data row
    line: int  # 1-based physical line
    cells: tuple[str, ...]
    torn: bool

    @property
    def where(self) -> str:
        return f"row {self.row} (line {self.line})"

    def by_name(self, header: tuple[str, ...]) -> dict[str, str]:
        """The cells by column name, stripped (the caller checked the count first)."""
        return dict(zip(header, (c.strip() for c in self.cells), strict=True))


def split_rows(text: str) -> tuple[tuple[str, ...], list[HistoryRow]]:
    """The header (stripped cells; empty when the text has no line) and the data rows."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    ends_with_newline = text.endswith("\n")
    last = len(lines) - 1
    header: tuple[str, ...] = ()
    rows: list[HistoryRow] = []
    i = 0
    while i < len(lines):
        start = i
        record = lines[i]
        while record.count('"') % 2 and i < last:  # a quoted cell goes on
            i += 1
            record += "\n" + lines[i]
        i += 1
        if not record.strip():
            continue
        cells = _cells(record)
        if not header:
            header = tuple(c.strip() for c in cells)
            continue
        torn = i - 1 == last and not ends_with_newline
        rows.append(HistoryRow(len(rows) + 1, start + 1, tuple(cells), torn))
    return header, rows


def _cells(record: str) -> list[str]:
    try:
        return next(csv.reader(io.StringIO(record)), [])
    except csv.Error:
        return record.split(",")


def normal_state(state: str | None) -> str:
    """A state cell as compared: lower case, ``TrialState.COMPLETE`` -> ``complete``."""
    return (state or "").strip().lower().rsplit(".", 1)[-1]


def is_complete(state: str | None, score: str | None) -> bool:
    """The one definition of a complete row (module docstring)."""
    return normal_state(state) in COMPLETE_STATES and bool((score or "").strip())


def row_is_complete(cells: Mapping[str, str]) -> bool:
    """`is_complete` for a row by column name (``state`` and ``score``, any case)."""
    lowered = {k.lower(): v for k, v in cells.items()}
    return is_complete(lowered.get("state"), lowered.get("score"))


def mbwrt_weight_columns(header: tuple[str, ...] | list[str]) -> int:
    """How many weight columns ``0, 1, 2...`` an auto-MBW-rt header starts with (0: ours)."""
    n = 0
    while n < len(header) and header[n].strip() == str(n):
        n += 1
    return n
