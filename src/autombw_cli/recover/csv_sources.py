"""auto-MBW-rt's history CSV and autombw's own history CSV, as recover reads them: rows and
completeness come from ``search/history.py`` (as for ``--resume`` and the warm start); what is
here is recover's tolerance (column aliases, the architecture from the header) and its
messages."""

from __future__ import annotations

import math

from autombw_cli.blocks import BASE, Arch, Ordering, Weights, layout
from autombw_cli.errors import JournalError
from autombw_cli.recover.values import (
    RecoveredSource,
    SourceKind,
    no_evaluations,
    slot_or_none,
)
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.history import HistoryRow, is_complete, mbwrt_weight_columns, split_rows


def _csv_rows(text: str, *, source: str) -> tuple[tuple[str, ...], list[HistoryRow]]:
    header, rows = split_rows(text)
    if not header:
        raise JournalError(f"{source}: the file is empty")
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


def parse_mbwrt_csv(
    text: str, *, source: str = "history CSV", arch: Arch | None = None
) -> RecoveredSource:
    """auto-MBW-rt's history CSV: columns ``0..26`` (nat order), ``score``, timing columns."""
    header, rows = _csv_rows(text, source=source)
    n = mbwrt_weight_columns(header)
    arch_ = _arch_for_nat_count(n, arch, source=f"{source}: header")
    try:
        score_col = [h.lower() for h in header].index("score")
    except ValueError:
        raise JournalError(
            f"{source}: header has no 'score' column",
            hint="expected the auto-MBW-rt header 0,1,...,26,score,eval_times,iter_times",
        ) from None
    evaluations: list[Evaluation] = []
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
        evaluations.append(
            Evaluation(weights=weights, score=score, line=row.line, location=row.where)
        )
    if not evaluations:
        raise no_evaluations(source, "the CSV has a header but no data rows", warnings)
    return RecoveredSource(source, SourceKind.MBWRT_CSV, tuple(evaluations), tuple(warnings))


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
    pass_col = lowered.index("pass") if "pass" in lowered else None
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
        slot = slot_or_none(h, header_arch)
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
    evaluations: list[Evaluation] = []
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
        state = row.cells[state_col] if state_col is not None else ""
        if not is_complete(state, row.cells[score_col]):
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
        if pass_col is not None and row.cells[pass_col].strip():
            where = f"pass {row.cells[pass_col].strip()}, {where}"
        if number_col is not None and row.cells[number_col].strip():
            where = f"evaluation {row.cells[number_col].strip()}, {where}"
        weights = Weights(header_arch, values, te)
        evaluations.append(Evaluation(weights=weights, score=score, line=row.line, location=where))
    if not evaluations:
        what = "no data rows"
        if skipped_states:
            what = f"{skipped_states} row(s), none completed with a score"
        raise no_evaluations(source, what, warnings)
    return RecoveredSource(source, SourceKind.HISTORY, tuple(evaluations), tuple(warnings))


def _history_arch(
    header: tuple[str, ...],
    rows: list[HistoryRow],
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
    names = {slot_or_none(h, Arch.SD1) for h in header}
    if "IN11" in names:
        return Arch.SD1
    if {"LABEL_EMB", "IN08"} & {slot_or_none(h, Arch.SDXL) for h in header}:
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
