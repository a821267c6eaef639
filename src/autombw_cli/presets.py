"""Named weight presets read from ``preset.tsv`` files (the format auto-MBW-rt ships).

A preset file is tab-separated: an optional header line ``preset_name<TAB>preset_weights``, then
one preset per line, ``NAME<TAB>v1,v2,...``. Values are a supermerger-style ``blocks`` list
(DOMAIN.md §3): 25 values ``IN00..IN11, M00, OUT00..OUT11`` for SD1/SD2 (26 with a leading
BASE), which `autombw_cli.blocks.parse_weights` expands to 27 slots (TIME_EMBED takes IN00's
value, OUT takes OUT11's). Blank lines and lines starting with ``#`` are ignored.

autombw ships a copy of auto-MBW-rt's ``preset.tsv`` as package data (`builtin_presets`); a
user file passed to `load_presets` adds presets and overrides built-ins of the same name (names
match case-insensitively, as `parse_weights` matches them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from autombw_cli.errors import WeightsError

BUILTIN_PRESET_FILE = "preset.tsv"
HEADER = ("preset_name", "preset_weights")
PRESET_VALUE_COUNTS = (25, 26)  # blocks order, [BASE,] IN00..IN11, M00, OUT00..OUT11
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_*/+\-.]*")

Presets = Mapping[str, tuple[float, ...]]


def parse_presets(text: str, *, source: str = "preset file") -> Presets:
    """Parse preset TSV text into ``{name: values}`` (insertion order, names as written)."""
    presets: dict[str, tuple[float, ...]] = {}
    seen: dict[str, int] = {}  # upper-cased name -> line number
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cells = [c.strip() for c in re.split(r"\t+", line)]
        if tuple(c.lower() for c in cells) == HEADER:
            continue
        where = f"{source}: line {lineno}"
        if len(cells) != 2:
            raise WeightsError(
                f"{where}: expected NAME<TAB>v1,v2,... (2 tab-separated cells), "
                f"got {len(cells)} cell(s)",
                hint="separate the name from the values with a tab, values with commas",
            )
        name, values_text = cells
        if not _NAME_RE.fullmatch(name):
            raise WeightsError(
                f"{where}: preset name {name!r} is not a valid name",
                hint="start with a letter or _; then letters, digits and _ * / + - .",
            )
        key = name.upper()
        if key in seen:
            raise WeightsError(
                f"{where}: preset {name!r} is defined twice (first on line {seen[key]})"
            )
        values = _parse_values(values_text, where=f"{where} ({name})")
        seen[key] = lineno
        presets[name] = values
    return MappingProxyType(presets)


def _parse_values(text: str, *, where: str) -> tuple[float, ...]:
    parts = [p.strip() for p in text.split(",")]
    values: list[float] = []
    for i, part in enumerate(parts, start=1):
        try:
            v = float(part)
        except ValueError:
            raise WeightsError(f"{where}: value {i} {part!r} is not a number") from None
        if not math.isfinite(v):
            raise WeightsError(f"{where}: value {i} {part!r} is not a finite number")
        values.append(v)
    if len(values) not in PRESET_VALUE_COUNTS:
        raise WeightsError(
            f"{where}: expected 25 values (IN00..IN11, M00, OUT00..OUT11) or 26 "
            f"(BASE first), got {len(values)}"
        )
    return tuple(values)


def read_preset_file(path: Path | str) -> Presets:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WeightsError(f"{p}: no such preset file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{p}: cannot read preset file ({exc})") from None
    return parse_presets(text, source=str(p))


def builtin_presets() -> Presets:
    """The presets shipped with autombw (auto-MBW-rt's ``preset.tsv``)."""
    ref = resources.files("autombw_cli") / "data" / BUILTIN_PRESET_FILE
    return parse_presets(ref.read_text(encoding="utf-8"), source=f"built-in {BUILTIN_PRESET_FILE}")


def merge_presets(base: Presets, override: Presets) -> Presets:
    """``base`` with ``override`` added; an override replaces a base preset of the same name."""
    upper = {name.upper() for name in override}
    merged = {name: v for name, v in base.items() if name.upper() not in upper}
    merged.update(override)
    return MappingProxyType(merged)


def load_presets(user_file: Path | str | None = None, *, builtin: bool = True) -> Presets:
    """Built-in presets (unless ``builtin=False``) overridden/extended by ``user_file``."""
    base: Presets = builtin_presets() if builtin else MappingProxyType({})
    if user_file is None:
        return base
    return merge_presets(base, read_preset_file(user_file))


def find_preset(presets: Presets, name: str) -> tuple[str, tuple[float, ...]] | None:
    """Case-insensitive lookup; returns the name as written and its values."""
    key = name.strip().upper()
    for preset_name, values in presets.items():
        if preset_name.upper() == key:
            return preset_name, values
    return None
