"""Reading weights (and their scores) back out of history CSVs, console logs and recipes.

Sources (`SourceKind`, auto-detected by `detect_kind`, or forced):

- ``history``: autombw's own history CSV: a header naming block slots (``IN00``..), a ``score``
  column, optionally ``state`` (rows whose state is not complete are skipped), ``number``,
  ``arch`` and a ``BASE``/``text_encoder`` column.
- ``mbwrt-csv``: auto-MBW-rt's history CSV: header ``0,1,...,26,score,eval_times,iter_times``
  (nat order; 22 columns for SDXL, our extension).
- ``log``: an auto-MBW-rt console log: ``testweights: <nat values>`` / ``test score: <x>`` line
  pairs and Hyperactive's ``Results`` block (``Best score:`` + ``Best parameter set:`` with
  ``'k'  : v`` lines, k the nat index). Progress bars on the same line, ``\\r``, CRLF, a
  truncated tail and incomplete evaluations are tolerated: what cannot be used is skipped with a
  warning; a log with no usable evaluation is an error.
- ``recipe``: a ``.recipe.txt`` (anything below the weights line is ignored) or recipe JSON.

Ranking: higher score first; **ties go to the earliest evaluation in the file** (lowest line),
so the answer does not depend on sort stability or on later duplicates. A Results-block entry
whose weights and score equal an evaluation already read from ``testweights``/``test score``
lines is the same evaluation and is not listed twice.

CSV files must be well formed: a short, long or non-numeric row is an error naming the row and
line, except a torn last line (no line end, as left by a crash mid-write), which is skipped with
a warning.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from autombw_cli.blocks import (
    BASE,
    Arch,
    Ordering,
    Weights,
    canonical_slot,
    format_weight,
    layout,
)
from autombw_cli.errors import AutombwError, JournalError, OutputExistsError, WeightsError
from autombw_cli.recipe import Recipe, write_recipe_files

MAX_WARNINGS_IN_ERROR = 5
_COMPLETE_STATES = frozenset({"", "complete", "completed", "ok", "done", "success"})


class SourceKind(StrEnum):
    HISTORY = "history"
    MBWRT_CSV = "mbwrt-csv"
    LOG = "log"
    RECIPE = "recipe"


@dataclass(frozen=True)
class RecoveredEvaluation:
    """One evaluation read back: its weights, score (None for a recipe) and where it was."""

    weights: Weights
    score: float | None
    line: int  # 1-based physical line in the file where the evaluation starts (0: n/a)
    location: str  # for people: "row 12 (line 13)", "line 40 (testweights) + line 44 ..."

    def to_dict(self) -> dict[str, Any]:
        w = self.weights
        return {
            "score": self.score,
            "line": self.line,
            "location": self.location,
            "arch": w.arch.value,
            "weights": dict(w.items()),
            "text_encoder_weight": w.text_encoder,
            "recipe_order": order_line(w, Ordering.RECIPE),
            "nat_order": order_line(w, Ordering.NAT),
        }


@dataclass(frozen=True)
class RecoveredSource:
    """Everything read from one source, in file order, plus what had to be skipped."""

    source: str
    kind: SourceKind
    evaluations: tuple[RecoveredEvaluation, ...]
    warnings: tuple[str, ...] = ()
    recipe: Recipe | None = field(default=None)

    def ranked(self) -> list[RecoveredEvaluation]:
        """Best first: higher score, ties to the earliest line; unscored entries last."""
        return sorted(
            self.evaluations,
            key=lambda e: (e.score is None, -(e.score if e.score is not None else 0.0), e.line),
        )

    def best(self) -> RecoveredEvaluation:
        return self.ranked()[0]

    def top(self, k: int) -> list[RecoveredEvaluation]:
        return self.ranked()[: max(k, 0)]

    def to_dict(self, top: int = 1) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind.value,
            "evaluations": len(self.evaluations),
            "warnings": list(self.warnings),
            "best": self.best().to_dict(),
            "top": [e.to_dict() for e in self.top(top)],
        }


def order_line(weights: Weights, ordering: Ordering) -> str:
    return ",".join(format_weight(v) for v in weights.to_list(ordering))


# --- reading files ------------------------------------------------------------------------
def read_source_text(path: Path | str) -> tuple[str, list[str]]:
    """The text of a source file (BOM stripped) and warnings about its encoding."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise JournalError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise JournalError(f"{p}: is a folder, expected a CSV, log or recipe file") from None
    except OSError as exc:
        raise JournalError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if not data.strip():
        raise JournalError(
            f"{p}: the file is empty",
            hint="expected a history CSV, an auto-MBW-rt console log or a .recipe.txt",
        )
    if b"\x00" in data:
        raise JournalError(
            f"{p}: binary data (NUL bytes), not a history CSV, console log or recipe",
            hint="pass the history .csv, the console log text or the .recipe.txt",
        )
    warnings: list[str] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = data.decode("utf-8", errors="replace")
        warnings.append(f"{p}: not valid UTF-8 (first bad byte at offset {exc.start}); replaced")
    return text.removeprefix("\ufeff"), warnings


def _physical_lines(text: str) -> list[str]:
    """Lines split on LF; CRLF and stray trailing CRs (pandas on Windows writes CR CR LF) go."""
    return [line.rstrip("\r") for line in text.split("\n")]


def _csv_cells(line: str) -> list[str]:
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return line.split(",")


def detect_kind(text: str, *, source: str = "source") -> SourceKind:
    """Tell a history CSV, an auto-MBW-rt CSV, a console log and a recipe apart by content."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return SourceKind.RECIPE
    first = next((ln for ln in _physical_lines(text) if ln.strip()), "")
    if re.match(r"\s*model[ABO]\s*=", first):
        return SourceKind.RECIPE
    cells = [c.strip() for c in _csv_cells(first)]
    lowered = [c.lower() for c in cells]
    if "score" in lowered:
        if cells and cells[0] == "0":
            return SourceKind.MBWRT_CSV
        if any(_slot_or_none(c, Arch.SD1) == "IN00" for c in cells):
            return SourceKind.HISTORY
    if re.search(r"testweights:|test score:|Best parameter set", text):
        return SourceKind.LOG
    raise JournalError(
        f"{source}: cannot tell what kind of file this is (first line {first[:60]!r})",
        hint="expected an autombw or auto-MBW-rt history CSV, an auto-MBW-rt console log or "
        "a .recipe.txt; pass --kind to say which",
    )


def recover(
    path: Path | str,
    *,
    kind: SourceKind | str | None = None,
    arch: Arch | str | None = None,
    upstream: bool = False,
) -> RecoveredSource:
    """Read every evaluation (or the recipe) from ``path``; errors name the file and line."""
    text, warnings = read_source_text(path)
    source = str(path)
    chosen = SourceKind(kind) if kind is not None else detect_kind(text, source=source)
    arch_ = Arch(arch) if arch is not None else None
    result = parse_source(text, chosen, source=source, arch=arch_, upstream=upstream)
    if warnings:
        result = RecoveredSource(
            result.source,
            result.kind,
            result.evaluations,
            (*warnings, *result.warnings),
            result.recipe,
        )
    return result


def parse_source(
    text: str,
    kind: SourceKind,
    *,
    source: str = "source",
    arch: Arch | None = None,
    upstream: bool = False,
) -> RecoveredSource:
    if kind is SourceKind.RECIPE:
        return parse_recipe(text, source=source, arch=arch, upstream=upstream)
    if kind is SourceKind.MBWRT_CSV:
        return parse_mbwrt_csv(text, source=source, arch=arch)
    if kind is SourceKind.HISTORY:
        return parse_history_csv(text, source=source, arch=arch)
    return parse_console_log(text, source=source, arch=arch)


# --- recipes ------------------------------------------------------------------------------
def parse_recipe(
    text: str, *, source: str = "recipe", arch: Arch | None = None, upstream: bool = False
) -> RecoveredSource:
    if text.lstrip().startswith("{"):
        recipe = Recipe.from_json(text, source=source)
    else:
        recipe = Recipe.from_text(text, source=source, upstream=upstream)
    if arch is not None and arch is not recipe.arch:
        if len(layout(arch).slots) != len(layout(recipe.arch).slots):
            raise JournalError(
                f"{source}: the recipe has {len(recipe.weights)} weights ({recipe.arch.value}), "
                f"which does not fit --arch {arch.value}"
            )
        w = recipe.weights
        recipe = Recipe(
            recipe.model_a,
            recipe.model_b,
            recipe.output_name,
            Weights(arch, dict(w.items()), w.text_encoder),
            recipe.position_id_fix,
            recipe.output_mode,
        )
    evaluation = RecoveredEvaluation(recipe.weights, None, 0, "recipe weights line")
    return RecoveredSource(source, SourceKind.RECIPE, (evaluation,), recipe=recipe)


# --- CSVs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _CsvRow:
    row: int  # 1-based data row
    line: int  # 1-based physical line
    cells: list[str]
    torn: bool  # the last line of the file, without a line end

    @property
    def where(self) -> str:
        return f"row {self.row} (line {self.line})"


def _csv_rows(text: str, *, source: str) -> tuple[list[str], list[_CsvRow]]:
    lines = _physical_lines(text)
    ends_with_newline = text.endswith("\n")
    header_index = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if header_index is None:
        raise JournalError(f"{source}: the file is empty")
    header = [c.strip() for c in _csv_cells(lines[header_index])]
    rows: list[_CsvRow] = []
    last_index = len(lines) - 1
    for i in range(header_index + 1, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        torn = i == last_index and not ends_with_newline
        rows.append(_CsvRow(len(rows) + 1, i + 1, _csv_cells(line), torn))
    return header, rows


def _csv_number(text: str, *, source: str, where: str, column: str) -> float:
    t = text.strip()
    try:
        v = float(t)
    except ValueError:
        raise JournalError(
            f"{source}: {where}, column {column}: {t[:40]!r} is not a number"
        ) from None
    if not math.isfinite(v):
        raise JournalError(f"{source}: {where}, column {column}: {t!r} is not a finite number")
    return v


def _no_evaluations(source: str, what: str, warnings: Sequence[str]) -> JournalError:
    shown = list(warnings[:MAX_WARNINGS_IN_ERROR])
    detail = ("; skipped: " + " | ".join(shown)) if shown else ""
    return JournalError(f"{source}: no complete evaluation found ({what}){detail}")


def parse_mbwrt_csv(
    text: str, *, source: str = "history CSV", arch: Arch | None = None
) -> RecoveredSource:
    """auto-MBW-rt's history CSV: columns ``0..26`` (nat order), ``score``, timing columns."""
    header, rows = _csv_rows(text, source=source)
    n = 0
    while n < len(header) and header[n] == str(n):
        n += 1
    arch_ = _arch_for_nat_count(n, arch, source=f"{source}: header")
    try:
        score_col = [h.lower() for h in header].index("score")
    except ValueError:
        raise JournalError(
            f"{source}: header has no 'score' column",
            hint="expected the auto-MBW-rt header 0,1,...,26,score,eval_times,iter_times",
        ) from None
    evaluations: list[RecoveredEvaluation] = []
    warnings: list[str] = []
    for row in rows:
        if len(row.cells) != len(header):
            if row.torn:
                warnings.append(f"{source}: {row.where}: torn last line (no line end); skipped")
                continue
            raise JournalError(
                f"{source}: {row.where}: expected {len(header)} cells like the header, "
                f"got {len(row.cells)}",
                hint="the row is truncated or has extra commas",
            )
        try:
            values = [
                _csv_number(row.cells[i], source=source, where=row.where, column=header[i])
                for i in range(n)
            ]
            score = _csv_number(
                row.cells[score_col], source=source, where=row.where, column="score"
            )
        except JournalError:
            if row.torn:
                warnings.append(f"{source}: {row.where}: torn last line (no line end); skipped")
                continue
            raise
        weights = Weights.from_list(arch_, values, Ordering.NAT, source=f"{source}: {row.where}")
        evaluations.append(RecoveredEvaluation(weights, score, row.line, row.where))
    if not evaluations:
        raise _no_evaluations(source, "the CSV has a header but no data rows", warnings)
    return RecoveredSource(source, SourceKind.MBWRT_CSV, tuple(evaluations), tuple(warnings))


def _slot_or_none(name: str, arch: Arch) -> str | None:
    try:
        return canonical_slot(name, arch)
    except WeightsError:
        return None


def parse_history_csv(
    text: str, *, source: str = "history CSV", arch: Arch | None = None
) -> RecoveredSource:
    """autombw's own history CSV: one column per slot name, ``score``, optional ``state``."""
    header, rows = _csv_rows(text, source=source)
    lowered = [h.lower() for h in header]
    if "score" not in lowered:
        raise JournalError(f"{source}: header has no 'score' column")
    score_col = lowered.index("score")
    state_col = lowered.index("state") if "state" in lowered else None
    number_col = next((lowered.index(c) for c in ("number", "trial") if c in lowered), None)
    arch_col = lowered.index("arch") if "arch" in lowered else None
    te_col = next(
        (
            i
            for i, h in enumerate(lowered)
            if h in ("base", "text_encoder", "text_encoder_weight", "te")
        ),
        None,
    )
    header_arch = _history_arch(header, rows, arch, arch_col, source)
    slot_cols: dict[str, int] = {}
    for i, h in enumerate(header):
        slot = _slot_or_none(h, header_arch)
        if slot is not None and slot != BASE:
            if slot in slot_cols:
                raise JournalError(f"{source}: header names block {slot} twice")
            slot_cols[slot] = i
    missing = [s for s in layout(header_arch).slots if s not in slot_cols]
    if missing:
        raise JournalError(
            f"{source}: header has no column for {', '.join(missing)} ({header_arch.value})",
            hint="an autombw history CSV has one column per block slot",
        )
    evaluations: list[RecoveredEvaluation] = []
    warnings: list[str] = []
    skipped_states = 0
    for row in rows:
        if len(row.cells) != len(header):
            if row.torn:
                warnings.append(f"{source}: {row.where}: torn last line (no line end); skipped")
                continue
            raise JournalError(
                f"{source}: {row.where}: expected {len(header)} cells like the header, "
                f"got {len(row.cells)}",
                hint="the row is truncated or has extra commas",
            )
        state = row.cells[state_col].strip().lower() if state_col is not None else ""
        if state not in _COMPLETE_STATES or not row.cells[score_col].strip():
            skipped_states += 1
            continue
        try:
            values = {
                slot: _csv_number(row.cells[i], source=source, where=row.where, column=header[i])
                for slot, i in slot_cols.items()
            }
            score = _csv_number(
                row.cells[score_col], source=source, where=row.where, column="score"
            )
            te_text = row.cells[te_col].strip() if te_col is not None else ""
            te = (
                _csv_number(te_text, source=source, where=row.where, column=header[te_col])
                if te_text and te_col is not None
                else None
            )
        except JournalError:
            if row.torn:
                warnings.append(f"{source}: {row.where}: torn last line (no line end); skipped")
                continue
            raise
        where = row.where
        if number_col is not None and row.cells[number_col].strip():
            where = f"evaluation {row.cells[number_col].strip()}, {where}"
        weights = Weights(header_arch, values, te)
        evaluations.append(RecoveredEvaluation(weights, score, row.line, where))
    if not evaluations:
        what = "no data rows"
        if skipped_states:
            what = f"{skipped_states} row(s), none completed with a score"
        raise _no_evaluations(source, what, warnings)
    return RecoveredSource(source, SourceKind.HISTORY, tuple(evaluations), tuple(warnings))


def _history_arch(
    header: list[str],
    rows: list[_CsvRow],
    arch: Arch | None,
    arch_col: int | None,
    source: str,
) -> Arch:
    if arch is not None:
        return arch
    if arch_col is not None:
        for row in rows:
            if arch_col < len(row.cells) and row.cells[arch_col].strip():
                value = row.cells[arch_col].strip().lower()
                try:
                    return Arch(value)
                except ValueError:
                    raise JournalError(
                        f"{source}: {row.where}: unknown arch {value!r}",
                        hint=f"one of {', '.join(a.value for a in Arch)}",
                    ) from None
    names = {_slot_or_none(h, Arch.SD1) for h in header}
    if "IN11" in names:
        return Arch.SD1
    if {"LABEL_EMB", "IN08"} & {_slot_or_none(h, Arch.SDXL) for h in header}:
        return Arch.SDXL
    raise JournalError(
        f"{source}: cannot tell the architecture from the header (no IN11 or LABEL_EMB column)",
        hint="pass --arch",
    )


def _arch_for_nat_count(count: int, arch: Arch | None, *, source: str) -> Arch:
    if arch is not None:
        expected = len(layout(arch).slots)
        if count != expected:
            raise JournalError(
                f"{source}: {arch.value} needs {expected} weight columns (0..{expected - 1}), "
                f"found {count}"
            )
        return arch
    for candidate in (Arch.SD1, Arch.SDXL):
        if count == len(layout(candidate).slots):
            return candidate
    raise JournalError(
        f"{source}: expected weight columns 0..26 (SD1/SD2, nat order) or 0..21 (SDXL), "
        f"found {count} numbered column(s)",
        hint="an auto-MBW-rt history CSV starts 0,1,2,...,26,score,eval_times,iter_times",
    )


# --- console logs -------------------------------------------------------------------------
_LOG_TOKEN = r"[^\s,\[\]|]+"
# values separated by commas (spaces around them allowed), optionally in [brackets]
_TESTWEIGHTS = re.compile(
    rf"testweights:[ \t]*\[?[ \t]*(?P<values>(?:{_LOG_TOKEN}(?:[ \t]*,[ \t]*{_LOG_TOKEN})*)?)"
)
_TESTSCORE = re.compile(r"test score:[ \t]*(?P<score>[^\s\[|]*)")
_BEST_SCORE = re.compile(r"Best score:[ \t]*(?P<score>[^\s\[|]*)")
_BEST_SET = re.compile(r"Best parameter set:")
_PARAM = re.compile(r"\s*'(?P<key>\d+)'\s*:\s*(?P<value>\S+)\s*")


def _log_number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


@dataclass
class _LogReader:
    source: str
    arch: Arch | None
    evaluations: list[RecoveredEvaluation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pending: tuple[int, Weights] | None = None
    best_score: tuple[int, float] | None = None
    params: dict[int, float] | None = None
    params_line: int = 0
    results: list[RecoveredEvaluation] = field(default_factory=list)

    def warn(self, lineno: int, message: str) -> None:
        self.warnings.append(f"{self.source}: line {lineno}: {message}")

    def weights_from_nat(self, values: list[float], lineno: int, what: str) -> Weights | None:
        counts = (
            (len(layout(self.arch).slots),)
            if self.arch is not None
            else (len(layout(Arch.SD1).slots), len(layout(Arch.SDXL).slots))
        )
        if len(values) not in counts:
            expected = " or ".join(str(c) for c in counts)
            self.warn(lineno, f"{what} has {len(values)} values, expected {expected}; skipped")
            return None
        arch = self.arch or (Arch.SD1 if len(values) == counts[0] else Arch.SDXL)
        try:
            return Weights.from_list(arch, values, Ordering.NAT)
        except AutombwError as exc:  # pragma: no cover - counts are checked above
            self.warn(lineno, f"{what}: {exc.message}; skipped")
            return None

    def segment(self, lineno: int, text: str) -> None:
        if self.params is not None:
            m = _PARAM.fullmatch(text)
            if m:
                value = _log_number(m.group("value"))
                key = int(m.group("key"))
                if value is None:
                    self.warn(lineno, f"parameter '{key}' is {m.group('value')!r}, not a number")
                elif key in self.params:
                    self.warn(lineno, f"parameter '{key}' is given twice")
                else:
                    self.params[key] = value
                return
            self.finish_params()
        for m in _TESTWEIGHTS.finditer(text):
            if self.pending is not None:
                self.warn(self.pending[0], "testweights without a test score after it; skipped")
                self.pending = None
            raw = m.group("values")
            parts = [p.strip() for p in raw.split(",")]
            values = [_log_number(p) for p in parts]
            if not raw or any(v is None for v in values):
                self.warn(lineno, f"testweights {raw[:60]!r} is not a list of numbers; skipped")
                continue
            weights = self.weights_from_nat(
                [v for v in values if v is not None], lineno, "testweights"
            )
            if weights is not None:
                self.pending = (lineno, weights)
        for m in _TESTSCORE.finditer(text):
            score = _log_number(m.group("score"))
            if self.pending is None:
                self.warn(lineno, "test score without testweights before it; ignored")
                continue
            start, weights = self.pending
            self.pending = None
            if score is None:
                self.warn(lineno, f"test score {m.group('score')[:40]!r} is not a finite number")
                continue
            where = f"line {start} (testweights) + line {lineno} (test score)"
            self.evaluations.append(RecoveredEvaluation(weights, score, start, where))
        m = _BEST_SCORE.search(text)
        if m:
            score = _log_number(m.group("score"))
            if score is None:
                self.warn(lineno, f"Best score {m.group('score')[:40]!r} is not a finite number")
            self.best_score = (lineno, score) if score is not None else None
        if _BEST_SET.search(text):
            self.params = {}
            self.params_line = lineno

    def finish_params(self) -> None:
        params, lineno = self.params, self.params_line
        self.params = None
        if params is None:
            return
        n = len(params)
        if sorted(params) != list(range(n)):
            self.warn(lineno, f"Best parameter set has keys {sorted(params)}, not 0..n-1; skipped")
            return
        if self.best_score is None:
            self.warn(lineno, "Best parameter set without a Best score before it; skipped")
            return
        score_line, score = self.best_score
        self.best_score = None
        values = [params[i] for i in range(n)]
        weights = self.weights_from_nat(values, lineno, "Best parameter set (truncated?)")
        if weights is None:
            return
        where = f"line {score_line} (Best score) + line {lineno} (Best parameter set)"
        self.results.append(RecoveredEvaluation(weights, score, score_line, where))

    def finish(self) -> RecoveredSource:
        self.finish_params()
        if self.pending is not None:
            self.warn(self.pending[0], "testweights without a test score (log ends); skipped")
            self.pending = None
        seen = {(e.weights.key(), e.score) for e in self.evaluations}
        merged = list(self.evaluations)
        for r in self.results:
            if (r.weights.key(), r.score) not in seen:
                merged.append(r)
                seen.add((r.weights.key(), r.score))
        merged.sort(key=lambda e: e.line)
        if not merged:
            raise _no_evaluations(
                self.source,
                "expected 'testweights: <27 values>' followed by 'test score: <number>', or a "
                "'Best score:' + 'Best parameter set:' block",
                self.warnings,
            )
        return RecoveredSource(self.source, SourceKind.LOG, tuple(merged), tuple(self.warnings))


def parse_console_log(
    text: str, *, source: str = "console log", arch: Arch | None = None
) -> RecoveredSource:
    """Every evaluation an auto-MBW-rt console log records (see the module docstring)."""
    reader = _LogReader(source, arch)
    for lineno, line in enumerate(_physical_lines(text), start=1):
        for segment in line.split("\r"):
            reader.segment(lineno, segment)
    return reader.finish()


# --- writing ------------------------------------------------------------------------------
def recipe_stem(path: Path | str) -> Path:
    """``best.recipe.txt``/``best.recipe.json``/``best.txt``/``best`` -> ``best``."""
    p = Path(path)
    name = p.name
    for suffix in (".recipe.txt", ".recipe.json", ".txt", ".json"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return p.with_name(name[: -len(suffix)])
    return p


def recipe_paths(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + ".recipe.txt"), stem.with_name(stem.name + ".recipe.json")


def check_recipe_outputs(path: Path | str, *, force: bool) -> Path:
    """The stem to write; refuses existing files without ``force``."""
    stem = recipe_stem(path)
    if not force:
        existing = [p for p in recipe_paths(stem) if p.exists()]
        if existing:
            raise OutputExistsError(
                f"{existing[0]} already exists", hint="pass --force to overwrite it"
            )
    return stem


def recipe_for(
    evaluation: RecoveredEvaluation,
    *,
    model_a: str,
    model_b: str,
    output_name: str,
    base: Recipe | None = None,
) -> Recipe:
    """A Recipe for a recovered evaluation (model names from ``base`` where not given)."""
    if base is not None:
        return Recipe(
            model_a or base.model_a,
            model_b or base.model_b,
            output_name or base.output_name,
            evaluation.weights,
            base.position_id_fix,
            base.output_mode,
        )
    return Recipe(model_a, model_b, output_name, evaluation.weights)


def write_recovered_recipe(recipe: Recipe, path: Path | str, *, force: bool) -> tuple[Path, Path]:
    stem = check_recipe_outputs(path, force=force)
    return write_recipe_files(recipe, stem)
