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

`read_warm_start` reads known (weights, score) pairs from one of our histories or from an
auto-MBW-rt history CSV (header ``0..26,score,eval_times,iter_times``, nat order).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

from autombw_cli.blocks import BASE, Arch, Ordering, Weights, layout
from autombw_cli.errors import AutombwError, JournalError
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.optimizers.base import TrialState

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
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot open the journal in {self.run_dir}: {exc}") from exc
        if self.history_path.exists() and b"\n" in self.history_path.read_bytes()[:65536]:
            with self.history_path.open(newline="", encoding="utf-8") as fh:
                self._header = next(csv.reader(fh), None)

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
            for path in (self.history_path, self.raw_path):
                _cut_torn_tail(path)
            self._tail_checked = True
        if self._header is None:
            self._header = self._new_header(evaluation)
            _append_line(self.history_path, _csv_line(self._header))
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
            "timings": dict(evaluation.timings),
            "timestamp": evaluation.timestamp,
        }
        if evaluation.member_scores:
            raw["member_scores"] = {k: list(v) for k, v in evaluation.member_scores.items()}
        try:
            _append_line(self.raw_path, json.dumps(raw, allow_nan=False) + "\n")
            _append_line(self.history_path, _csv_line(self._row(evaluation)))
        except OSError as exc:
            raise JournalError(f"cannot append to {self.history_path}: {exc}") from exc

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
            "worker": ev.worker,
            "merge_id": ev.merge_id,
            "score": "" if ev.score is None else repr(float(ev.score)),
            BASE: "" if ev.weights.text_encoder is None else repr(ev.weights.text_encoder),
        }
        cells.update({s: repr(v) for s, v in ev.weights.items()})
        cells.update({PAYLOAD_PREFIX + k: repr(float(v)) for k, v in ev.payload_scores.items()})
        cells.update({TIME_PREFIX + k: repr(float(v)) for k, v in ev.timings.items()})
        return [cells.get(col, "") for col in self._header]

    # --- reading ------------------------------------------------------------------------
    def read(self) -> list[Evaluation]:
        """Every evaluation written so far (a torn last line is dropped with a warning)."""
        if not self.history_path.exists():
            return []
        raw_by_number = {r["number"]: r for r in _read_jsonl(self.raw_path)}
        out: list[Evaluation] = []
        for line_no, row in _read_csv_rows(self.history_path):
            try:
                out.append(self._parse(row, raw_by_number))
            except (KeyError, ValueError, AutombwError) as exc:
                raise JournalError(
                    f"{self.history_path}, line {line_no}: cannot read the row: {exc}",
                    hint="the file was edited or belongs to another architecture",
                ) from exc
        return out

    def _parse(self, row: Mapping[str, str], raw_by_number: Mapping[int, dict]) -> Evaluation:
        number = int(row["number"])
        values = {s: float(row[s]) for s in layout(self.arch).slots}
        te = row.get(BASE) or None
        weights = Weights(self.arch, values, None if te is None else float(te))
        raw = raw_by_number.get(number, {})
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
        return Evaluation(
            number=number,
            weights=weights,
            score=score,
            pass_index=int(row.get("pass") or 1),
            payload_scores=payload,
            raw_scores=raw.get("raw_scores", ()),
            worker=row.get("worker", ""),
            merge_id=row.get("merge_id", ""),
            timings=timings,
            timestamp=raw.get("timestamp") or datetime.fromisoformat(row["timestamp"]).timestamp(),
            state=TrialState(row.get("state") or TrialState.COMPLETE),
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

    Failed evaluations and rows without a score are skipped. An auto-MBW-rt file is recognised
    by its numbered columns (``0,1,...,score``) and read in nat order (DOMAIN.md §3).
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
            if row["score"] in ("", None) or (row.get("state") or "complete") != "complete":
                continue
            score = float(row["score"])
            if not math.isfinite(score):
                continue
            if "0" in row:
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


def _complete_text(path: Path) -> str:
    """The file's text up to its last newline; warns when a torn last line is dropped."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning(
            "%s: dropping an unfinished last line (%d bytes; the process was killed while "
            "writing it)",
            path,
            len(data) - cut,
        )
        data = data[:cut]
    return data.decode("utf-8")


def _cut_torn_tail(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: cutting an unfinished last line before appending", path)
        with path.open("r+b") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())


def _read_csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    text = _complete_text(path)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return
    header = [h.strip() for h in header]
    for i, cells in enumerate(reader, start=2):
        if not cells:
            continue
        if len(cells) != len(header):
            raise JournalError(
                f"{path}, line {i}: {len(cells)} cells, the header has {len(header)}",
                hint="the file was edited by hand or is not a history CSV",
            )
        yield i, dict(zip(header, (c.strip() for c in cells), strict=True))


def _read_jsonl(path: Path) -> Iterator[dict]:
    if not path.exists():
        return
    for i, line in enumerate(_complete_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise JournalError(f"{path}, line {i}: not JSON: {exc}") from exc
