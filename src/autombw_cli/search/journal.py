"""The run journal: ``history.csv`` (one row per evaluation) and ``raw_scores.jsonl`` beside it.

``history.csv`` columns, named (never positional): ``number, pass, state, timestamp (ISO 8601
UTC), worker, merge_id, score``, then one column per block slot by name in recipe order
(``IN00 .. TIME_EMBED``, SDXL adds ``LABEL_EMB``) and ``BASE`` (the text-encoder weight, empty when
not set), then ``payload:<name>`` per payload score and ``time:<name>`` per duration (these follow
the first row written). ``raw_scores.jsonl`` holds, per evaluation, its number, per-image raw
scores, payload scores, timings, the finish time at full precision and, for an ensemble, each
member's raw scores (the complete record; the CSV is for people and spreadsheets).

Both files are append-only: each record is one line written with a single ``write``, flushed and
``os.fsync``-ed, so a SIGKILL at any moment loses at most the row being written. On read an
unterminated last line (a torn write) is dropped with a warning; opening a journal for appending
cuts such a tail off first, so the next row starts on a fresh line.

Consistency between the two files (an evaluation's ``raw_scores.jsonl`` record is written just
before its ``history.csv`` row): what a crash can leave is repaired with a warning (logged, and
on the terminal), anything else is refused with a `JournalError` naming the file and what to do;
evaluations are never renumbered silently.

- a record with no history row, the last one in ``raw_scores.jsonl``: the process stopped
  between the two writes; that evaluation is run again and its record is removed before the
  next append (warning);
- more than one such record, or records while ``history.csv`` is missing or holds no rows:
  ``history.csv`` lost rows; refused (continuing would number evaluations again from there);
- the same number in several history rows (two processes once wrote one journal): the first
  row counts, the others are ignored (warning); a raw record is matched to its row by number
  and finish time;
- history rows without a raw record: kept, their per-image scores are unknown (warning);
- a UTF-8 byte-order mark at the start of ``history.csv`` (a spreadsheet saved it) is accepted;
  bytes that are not UTF-8, or a folder in place of a journal file, are refused.

Rows are split and judged complete by ``search/history.py``, the one reader of history CSVs
(recover reads through it too). `read_warm_start` reads known (weights, score) pairs from one of
our histories or from an auto-MBW-rt history CSV (header ``0..26,score,eval_times,iter_times``,
nat order). Durations are kept to 0.1 ms.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import math
import os
import stat
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

from autombw_cli.blocks import BASE, Arch, Ordering, Weights, layout
from autombw_cli.errors import AutombwError, JournalError
from autombw_cli.search.evaluation import Evaluation, TrialState
from autombw_cli.search.history import is_complete, mbwrt_weight_columns, split_rows

log = logging.getLogger(__name__)

HISTORY = "history.csv"
RAW_SCORES = "raw_scores.jsonl"
FIXED_COLUMNS = ("number", "pass", "state", "timestamp", "worker", "merge_id", "score")
PAYLOAD_PREFIX = "payload:"
TIME_PREFIX = "time:"


class Journal:
    """Append-only journal of one run directory (created if missing)."""

    def __init__(self, run_dir: Path | str, arch: Arch | str) -> None:
        self.run_dir = Path(run_dir)
        self.arch = Arch(arch)
        self.history_path = self.run_dir / HISTORY
        self.raw_path = self.run_dir / RAW_SCORES
        self._header: list[str] | None = None
        self._tail_checked = False
        self.warnings: list[str] = []  # repairs and inconsistencies found, in order
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(
                f"cannot open the journal in {self.run_dir}: {describe_os_error(exc)}"
            ) from exc
        self._header = _read_header(self.history_path)

    def _warn(self, message: str) -> None:
        """Log a repair or inconsistency once per journal (it reaches the terminal and, once
        attached, ``run.log``)."""
        if message not in self.warnings:
            self.warnings.append(message)
            log.warning("%s", message)

    def replay_warnings(self, handler: logging.Handler) -> None:
        """Write the warnings found so far into ``handler`` alone (``run.log``, attached after
        the journal was read; the terminal has them already)."""
        for message in self.warnings:
            handler.handle(
                log.makeRecord(log.name, logging.WARNING, __file__, 0, message, (), None)
            )

    @property
    def slot_columns(self) -> tuple[str, ...]:
        return (*layout(self.arch).slots, BASE)

    # --- writing ------------------------------------------------------------------------
    def append(self, evaluation: Evaluation) -> None:
        """Write one evaluation (both files), each line flushed and fsynced."""
        if evaluation.weights.arch is not self.arch:
            raise JournalError(
                f"{self.history_path}: evaluation {evaluation.number} is {evaluation.weights.arch}"
                f" weights, the journal holds {self.arch.value}"
            )
        if not self._tail_checked:
            self._prepare_append()
            self._tail_checked = True
        if self._header is None:
            self._header = self._new_header(evaluation)
            try:
                _append_line(self.history_path, _csv_line(self._header))
            except OSError as exc:
                raise _append_error(self.history_path, exc) from exc
        known = set(self._header)
        extra = [
            k
            for k in (
                *(PAYLOAD_PREFIX + p for p in evaluation.payload_scores),
                *(TIME_PREFIX + t for t in evaluation.timings),
            )
            if k not in known
        ]
        if extra:
            log.debug("%s: columns %s not in the header; kept in %s", HISTORY, extra, RAW_SCORES)
        raw = {
            "number": evaluation.number,
            "pass": evaluation.pass_index,
            "state": evaluation.state.value,
            "raw_scores": list(evaluation.raw_scores),
            "payload_scores": dict(evaluation.payload_scores),
            "timings": _rounded(evaluation.timings),
            "timestamp": evaluation.timestamp,
        }
        if evaluation.member_scores:
            raw["member_scores"] = {k: list(v) for k, v in evaluation.member_scores.items()}
        try:
            _append_line(self.raw_path, json.dumps(raw, allow_nan=False) + "\n")
        except OSError as exc:
            raise _append_error(self.raw_path, exc) from exc
        try:
            _append_line(self.history_path, _csv_line(self._row(evaluation)))
        except OSError as exc:  # the raw record is now an orphan: the next open drops it
            raise _append_error(self.history_path, exc) from exc

    def _prepare_append(self) -> None:
        """Before the first append: cut torn last lines, and drop the raw record of an
        evaluation whose history row was never written (it is evaluated again)."""
        for path in (self.history_path, self.raw_path):
            try:
                _cut_torn_tail(path)
            except OSError as exc:
                raise JournalError(
                    f"cannot repair {path} before appending: {describe_os_error(exc)}",
                    hint="free disk space or fix the run folder's permissions, then resume",
                ) from exc
        if not (_is_regular(self.history_path) and _is_regular(self.raw_path)):
            return  # nothing written yet (or not files we can read: the write says why)
        numbers = [n for _, n, _ in self._history_numbers()]
        records = list(_read_jsonl(self.raw_path))
        orphan = self._orphan_tail(numbers, records)
        if orphan is None:
            return
        offset, _line_no, rec = orphan
        try:
            with self.raw_path.open("r+b") as fh:
                fh.truncate(offset)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise JournalError(
                f"cannot repair {self.raw_path}: {describe_os_error(exc)}",
                hint="free disk space or fix the run folder's permissions, then resume",
            ) from exc
        self._warn(
            f"{self.raw_path}: removed the record of evaluation #{rec.get('number')}, which has "
            f"no row in {HISTORY} (the process stopped between the two writes); it is "
            "evaluated again"
        )

    def _history_numbers(self) -> list[tuple[int, int, dict[str, str]]]:
        """(line, number, row) of every complete history row."""
        out = []
        for line_no, row in _read_csv_rows(self.history_path):
            try:
                out.append((line_no, int(row["number"]), row))
            except (KeyError, ValueError) as exc:
                raise JournalError(
                    f"{self.history_path}, line {line_no}: cannot read the row: no evaluation "
                    f"number ({exc})",
                    hint="the file was edited or is not an autombw history.csv",
                ) from exc
        return out

    def _orphan_tail(
        self, numbers: list[int], records: list[tuple[int, int, dict]]
    ) -> tuple[int, int, dict] | None:
        """Check ``raw_scores.jsonl`` against the history's numbers: the one record a crash
        can leave without a history row (the last one), None when there is none; refuse what
        a crash cannot explain (history rows lost)."""
        known = set(numbers)
        orphans = [r for r in records if r[2].get("number") not in known]
        if not orphans:
            return None
        shown = ", ".join(f"#{r[2].get('number')}" for r in orphans[:5])
        more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
        if (not numbers and len(records) > 1) or len(orphans) > 1 or orphans[-1] is not records[-1]:
            state = "holds no evaluations" if not numbers else f"lacks their rows ({shown}{more})"
            raise JournalError(
                f"{self.history_path} {state}, but {self.raw_path.name} records "
                f"{len(orphans)} evaluation(s) that are not in it: {HISTORY} was truncated, "
                "replaced or edited; continuing would number those evaluations again",
                hint=f"restore {HISTORY} from a backup; or, to evaluate those numbers again on "
                f"purpose, remove their lines from {self.raw_path}",
            )
        return orphans[-1]

    def _new_header(self, ev: Evaluation) -> list[str]:
        return [
            *FIXED_COLUMNS,
            *self.slot_columns,
            *(PAYLOAD_PREFIX + p for p in ev.payload_scores),
            *(TIME_PREFIX + t for t in ev.timings),
        ]

    def _row(self, ev: Evaluation) -> list[str]:
        assert self._header is not None
        cells = {
            "number": str(ev.number),
            "pass": str(ev.pass_index),
            "state": ev.state.value,
            "timestamp": datetime.fromtimestamp(ev.timestamp, UTC).isoformat(
                timespec="milliseconds"
            ),
            "worker": ev.instance,
            "merge_id": ev.merge_id,
            "score": "" if ev.score is None else repr(float(ev.score)),
            BASE: "" if ev.weights.text_encoder is None else repr(ev.weights.text_encoder),
        }
        cells.update({s: repr(v) for s, v in ev.weights.items()})
        cells.update({PAYLOAD_PREFIX + k: repr(float(v)) for k, v in ev.payload_scores.items()})
        cells.update({TIME_PREFIX + k: repr(v) for k, v in _rounded(ev.timings).items()})
        return [cells.get(col, "") for col in self._header]

    # --- reading ------------------------------------------------------------------------
    def read(self) -> list[Evaluation]:
        """Every evaluation written so far, each number once (module docstring: what is
        repaired with a warning and what is refused)."""
        records = list(_read_jsonl(self.raw_path))
        if not _exists(self.history_path):
            if records:
                raise JournalError(
                    f"{self.history_path} is missing, but {self.raw_path.name} records "
                    f"{len(records)} evaluation(s): continuing would number them again from 1",
                    hint=f"restore {HISTORY} from a backup (the weights are only there); or, to "
                    f"start afresh on purpose, move {self.raw_path} out of the folder",
                )
            return []
        rows = self._history_numbers()
        orphan = self._orphan_tail([n for _, n, _ in rows], records)
        if orphan is not None:
            self._warn(
                f"{self.raw_path}, line {orphan[1]}: evaluation #{orphan[2].get('number')} has "
                f"no row in {HISTORY} (the process stopped between the two writes); it will be "
                "evaluated again"
            )
        raw_by_number: dict[int, list[dict]] = {}
        for _, _, r in records:
            raw_by_number.setdefault(r.get("number"), []).append(r)
        first: dict[int, int] = {}
        repeated: dict[int, list[int]] = {}
        out: list[Evaluation] = []
        for line_no, number, row in rows:
            if number in first:
                repeated.setdefault(number, [first[number]]).append(line_no)
                continue
            first[number] = line_no
            try:
                out.append(self._parse(row, raw_by_number))
            except (KeyError, ValueError, AutombwError) as exc:
                raise JournalError(
                    f"{self.history_path}, line {line_no}: cannot read the row: {exc}",
                    hint="the file was edited or belongs to another architecture",
                ) from exc
        if repeated:
            shown = "; ".join(
                f"#{n} at lines {', '.join(map(str, lines))}"
                for n, lines in list(repeated.items())[:3]
            )
            more = f" (and {len(repeated) - 3} more numbers)" if len(repeated) > 3 else ""
            self._warn(
                f"{self.history_path}: {len(repeated)} evaluation number(s) appear in several "
                f"rows ({shown}{more}): each counts once, from its first row; the later rows "
                "are ignored (two processes wrote this journal at once?)"
            )
        missing = [e.number for e in out if e.number not in raw_by_number]
        if missing and records:
            shown = ", ".join(f"#{n}" for n in missing[:5])
            self._warn(
                f"{self.raw_path}: no record for {len(missing)} evaluation(s) of {HISTORY} "
                f"({shown}{'...' if len(missing) > 5 else ''}); their per-image scores are "
                "unknown"
            )
        elif missing and _exists(self.raw_path) is False:
            self._warn(
                f"{self.raw_path} is missing: the per-image scores of {len(missing)} "
                f"evaluation(s) are unknown (the history rows are used)"
            )
        return out

    def _parse(self, row: Mapping[str, str], raw_by_number: Mapping[int, list[dict]]) -> Evaluation:
        number = int(row["number"])
        values = {s: float(row[s]) for s in layout(self.arch).slots}
        te = row.get(BASE) or None
        weights = Weights(self.arch, values, None if te is None else float(te))
        raw = _matching_raw(row, raw_by_number.get(number, []))
        payload = raw.get("payload_scores") or {
            k[len(PAYLOAD_PREFIX) :]: float(v)
            for k, v in row.items()
            if k.startswith(PAYLOAD_PREFIX) and v
        }
        timings = raw.get("timings") or {
            k[len(TIME_PREFIX) :]: float(v)
            for k, v in row.items()
            if k.startswith(TIME_PREFIX) and v
        }
        score = float(row["score"]) if row.get("score") else None
        state = row.get("state", "")
        return Evaluation(
            number=number,
            weights=weights,
            score=score,
            pass_index=int(row.get("pass") or 1),
            payload_scores=payload,
            raw_scores=raw.get("raw_scores", ()),
            instance=row.get("worker", ""),
            merge_id=row.get("merge_id", ""),
            timings=timings,
            timestamp=raw.get("timestamp") or datetime.fromisoformat(row["timestamp"]).timestamp(),
            state=TrialState.COMPLETE
            if is_complete(state, row.get("score"))
            else TrialState(state or TrialState.COMPLETE),
            member_scores=raw.get("member_scores") or {},
        )

    def member_scores_in_order(self) -> list[dict[str, tuple[float, ...]]]:
        """Each recorded evaluation's ensemble member scores, in the order they were scored
        (by finish time; the journal's order breaks ties). Evaluations without them are
        skipped. ``--resume`` feeds these to the ensemble to rebuild its z-score statistics."""
        evaluations = sorted(self.read(), key=lambda e: e.timestamp)  # stable
        return [
            {k: tuple(v) for k, v in e.member_scores.items()}
            for e in evaluations
            if e.member_scores
        ]


# --- warm start -----------------------------------------------------------------------------
def read_warm_start(path: Path | str, arch: Arch | str) -> Iterator[tuple[Weights, float]]:
    """Known (weights, score) pairs from our ``history.csv`` or an auto-MBW-rt history CSV.

    Rows that are not complete (``search/history.py``: failed, no score) are skipped. An
    auto-MBW-rt file is recognised by its numbered columns (``0,1,...,score``) and read in nat
    order (DOMAIN.md §3).
    """
    path = Path(path)
    arch = Arch(arch)
    if not path.is_file():
        raise JournalError(f"warm-start file {path} does not exist")
    lay = layout(arch)
    n = len(lay.slots)
    for line_no, row in _read_csv_rows(path):
        try:
            if "score" not in row:
                raise KeyError("score")
            if not is_complete(row.get("state"), row["score"]):
                continue
            score = float(row["score"])
            if not math.isfinite(score):
                raise ValueError(f"score {row['score']!r} is not a finite number")
            if mbwrt_weight_columns(tuple(row)):
                values = [float(row[str(i)]) for i in range(n)]
                weights = Weights.from_list(arch, values, Ordering.NAT, source=f"{path}:{line_no}")
            else:
                te = row.get(BASE) or None
                weights = Weights(
                    arch,
                    {s: float(row[s]) for s in lay.slots},
                    None if te is None else float(te),
                )
        except (KeyError, ValueError, AutombwError) as exc:
            raise JournalError(
                f"{path}, line {line_no}: not a history row for {arch.value}: {exc}",
                hint="pass an auto-MBW-rt history CSV (0..26,score,...) or an autombw history.csv",
            ) from exc
        yield weights, score


# --- file helpers ---------------------------------------------------------------------------
def _rounded(timings: Mapping[str, float]) -> dict[str, float]:
    """Durations as the journal keeps them: seconds to 0.1 ms."""
    return {k: round(float(v), 4) for k, v in timings.items()}


def _append_line(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _csv_line(cells: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def _read_bytes(path: Path) -> bytes:
    """A journal file's bytes; a folder or device in its place is a `JournalError`."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise JournalError(
                f"{path} is a folder, not the journal file",
                hint="move that folder out of the run folder (or restore the file from a backup)",
            )
        if not stat.S_ISREG(st.st_mode):
            raise JournalError(
                f"{path} is not a regular file",
                hint="restore the journal file from a backup",
            )
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise JournalError(f"cannot read {path}: {describe_os_error(exc)}") from exc


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); other bytes are a `JournalError`
    naming the line."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise JournalError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}): the file was damaged or edited with another encoding",
            hint="fix or delete that line (a copy of the file first), then resume",
        ) from None


def _complete_text(path: Path) -> str:
    """The file's text up to its last newline; warns when a torn last line is dropped."""
    data = _read_bytes(path)
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning(
            "%s: dropping an unfinished last line (%d bytes; the process was killed while "
            "writing it)",
            path,
            len(data) - cut,
        )
        data = data[:cut]
    return _decode(path, data)


def _read_header(path: Path) -> list[str] | None:
    """The header of an existing ``history.csv`` (None when missing or not finished yet)."""
    if not _exists(path):
        return None
    data = _read_bytes(path)
    end = data.find(b"\n")
    if end < 0:
        return None
    try:
        return next(csv.reader([_decode(path, data[: end + 1])]), None)
    except csv.Error as exc:
        raise JournalError(f"{path}, line 1: not a CSV header ({exc})") from None


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _cut_torn_tail(path: Path) -> None:
    """Cut an unterminated last line off ``path`` (reads only what follows the last newline)."""
    if not _is_regular(path):
        return
    with path.open("r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        pos = size
        while pos > 0:  # find the last newline, backwards in blocks
            step = min(65536, pos)
            fh.seek(pos - step)
            block = fh.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                cut = pos - step + nl + 1
                break
            pos -= step
        else:
            cut = 0
        if cut == size:
            return
        log.warning("%s: cutting an unfinished last line before appending", path)
        fh.truncate(cut)
        fh.flush()
        os.fsync(fh.fileno())


def _read_csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, cells by column name) of every complete line of a history CSV."""
    header, rows = split_rows(_complete_text(path))
    for row in rows:
        if len(row.cells) != len(header):
            raise JournalError(
                f"{path}, line {row.line}: {len(row.cells)} cells, the header has {len(header)}",
                hint="the file was edited by hand or is not a history CSV",
            )
        yield row.line, row.by_name(header)


def _read_jsonl(path: Path) -> Iterator[tuple[int, int, dict]]:
    """(byte offset, line number, record) of every complete line of a JSON-lines file."""
    if not _exists(path):
        return
    offset = 0
    for i, line in enumerate(_complete_text(path).splitlines(keepends=True), start=1):
        start, offset = offset, offset + len(line.encode("utf-8"))
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JournalError(f"{path}, line {i}: not JSON: {exc}") from exc
        if not isinstance(record, dict) or not isinstance(record.get("number"), int):
            raise JournalError(f"{path}, line {i}: not an evaluation record (no number)")
        yield start, i, record


def _matching_raw(row: Mapping[str, str], candidates: list[dict]) -> dict:
    """The raw record of a history row: the one with its finish time (the row keeps it to the
    millisecond), else the last one of its number."""
    if not candidates:
        return {}
    try:
        when = datetime.fromisoformat(row["timestamp"]).timestamp()
    except (KeyError, ValueError):
        return candidates[-1]
    for r in candidates:
        t = r.get("timestamp")
        if isinstance(t, int | float) and abs(t - when) < 0.0015:
            return r
    return candidates[-1]


def _append_error(path: Path, exc: OSError) -> JournalError:
    return JournalError(
        f"cannot append to {path}: {describe_os_error(exc)}",
        hint="free disk space or fix the run folder's permissions, then "
        "`autombw search --resume` continues from the last complete row",
    )


_FS_ERRNOS = {
    errno.ENOSPC,
    errno.EROFS,
    errno.EIO,
    errno.EFBIG,
    getattr(errno, "EDQUOT", errno.ENOSPC),
}


def is_file_system_error(exc: OSError) -> bool:
    """An OSError about a file (a full disk, a read-only folder...), not a socket or a bug."""
    return exc.filename is not None or exc.errno in _FS_ERRNOS


def describe_os_error(exc: OSError) -> str:
    """``strerror (file)`` of an OSError, e.g. ``No space left on device (runs/x/history.csv)``."""
    text = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        text += f" ({exc.filename})"
    return text


class RunLogHandler(logging.FileHandler):
    """``run.log``: a file handler that, when the file cannot be written (a full disk), says so
    once on the terminal and stops writing to it, instead of a traceback per log line, and
    never raises on close (a run's own error must not be masked by its log)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")
        self.failed: OSError | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is None:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        if self.failed is None:
            self.failed = exc
            log.warning(
                "cannot write %s: %s; the run goes on, its log is incomplete",
                self.baseFilename,
                describe_os_error(exc),
            )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            super().close()
