"""Reading a source file's text safely, splitting it into lines, and telling its kind."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from autombw_cli.blocks import Arch
from autombw_cli.errors import JournalError
from autombw_cli.recover.values import SourceKind, slot_or_none

MAX_SOURCE_BYTES = 256 * 1024 * 1024  # a history of ~1 million evaluations
MAX_LINE_BYTES = 1024 * 1024  # a history row is ~1 KB; a console line with progress bars ~10 KB
_CHUNK = 1024 * 1024


def read_source_text(path: Path | str) -> tuple[str, list[str]]:
    """The text of a source file (BOM stripped) and warnings about its encoding.

    Reads at most `MAX_SOURCE_BYTES`, in chunks, and stops early at binary data (NUL bytes) or
    a line longer than `MAX_LINE_BYTES`, so a device (``/dev/zero``), a pipe or a huge file
    is refused with a message instead of filling the memory."""
    p = Path(path)
    try:
        data = _read_bounded(p)
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
            hint="pass the history .csv, the console log text, the .recipe.txt or a merged "
            ".safetensors that carries its recipe",
        )
    warnings: list[str] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        text = data.decode("utf-8", errors="replace")
        warnings.append(f"{p}: not valid UTF-8 (first bad byte at offset {exc.start}); replaced")
    return text.removeprefix("\ufeff"), warnings


def _read_bounded(p: Path) -> bytes:
    hint = "expected a history CSV, an auto-MBW-rt console log or a .recipe.txt"
    chunks: list[bytes] = []
    size = 0
    line_start = 0  # offset of the current line's start
    with open(p, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            if b"\x00" in chunk:
                raise JournalError(
                    f"{p}: binary data (NUL bytes), not a history CSV, console log or recipe",
                    hint="pass the history .csv, the console log text, the .recipe.txt or a "
                    "merged .safetensors that carries its recipe",
                )
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                longest = max(len(part) for part in chunk[: nl + 1].split(b"\n"))
                first = chunk.find(b"\n") + size - line_start
                if max(first, longest) > MAX_LINE_BYTES:
                    raise _long_line(p, b"".join(chunks) + chunk, hint)
                line_start = size + nl + 1
            elif size + len(chunk) - line_start > MAX_LINE_BYTES:
                raise _long_line(p, b"".join(chunks) + chunk, hint)
            size += len(chunk)
            if size > MAX_SOURCE_BYTES:
                raise JournalError(
                    f"{p}: larger than {MAX_SOURCE_BYTES // 2**20} MiB, too large for a history "
                    "CSV, console log or recipe",
                    hint=hint + "; for a huge log, pass only its part with the evaluations",
                )
            chunks.append(chunk)
    return b"".join(chunks)


def _long_line(p: Path, data: bytes, hint: str) -> JournalError:
    lines = data.split(b"\n")
    index = next((i for i, line in enumerate(lines) if len(line) > MAX_LINE_BYTES), len(lines) - 1)
    number, start = index + 1, sum(len(line) + 1 for line in lines[:index])
    return JournalError(
        f"{p}, line {number}: longer than {MAX_LINE_BYTES // 1024} KiB (from byte {start}), "
        "not a line of a history CSV, console log or recipe",
        hint=hint,
    )


def physical_lines(text: str) -> list[str]:
    """Lines split on LF; CRLF and stray trailing CRs (pandas on Windows writes CR CR LF) go."""
    return [line.rstrip("\r") for line in text.split("\n")]


def csv_cells(line: str) -> list[str]:
    try:
        return next(csv.reader([line]), [])
    except csv.Error:
        return line.split(",")


LOG_MARKERS = re.compile(r"testweights:|test score:|Best parameter set")  # auto-MBW-rt's log


def detect_kind(text: str, *, source: str = "source") -> SourceKind:
    """Tell a history CSV, an auto-MBW-rt CSV, a console log and a recipe apart by content."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return SourceKind.RECIPE
    first = next((ln for ln in physical_lines(text) if ln.strip()), "")
    if re.match(r"\s*model[ABO]\s*=", first):
        return SourceKind.RECIPE
    cells = [c.strip() for c in csv_cells(first)]
    lowered = [c.lower() for c in cells]
    if "score" in lowered:
        if cells and cells[0] == "0":
            return SourceKind.MBWRT_CSV
        if any(slot_or_none(c, Arch.SD1) == "IN00" for c in cells):
            return SourceKind.HISTORY
    if LOG_MARKERS.search(text):
        return SourceKind.LOG
    raise JournalError(
        f"{source}: cannot tell what kind of file this is (first line {first[:60]!r})",
        hint="expected an autombw or auto-MBW-rt history CSV, an auto-MBW-rt console log or "
        "a .recipe.txt; pass --kind to say which",
    )
