"""Field types shared by the config sections: the strict base model and resolved paths.

Relative paths resolve against ``base_dir`` from the validation context (the config file's
folder, set by `autombw_cli.config.load_config`); ``check_paths=False`` in the context skips the
existence checks (for building configs in code before the files exist).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationInfo


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validation_context(info: ValidationInfo) -> Mapping[str, Any]:
    return info.context or {}


def resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = validation_context(info).get("base_dir")
    value = value.expanduser()
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return Path(os.path.normpath(value))


def not_found(what: str, path: Path | str) -> str:
    """``"<what> not found: <path>"``, plus a word on backslashes where they are no separator
    (a Windows path such as ``.\\p.json`` in a config used on Linux or macOS)."""
    text = f"{what} not found: {path}"
    if os.sep == "/" and re.search(r"(^|/)[A-Za-z]:[\\/]", str(path)):
        return text + " (a Windows drive path: this system has no drives; give its path here)"
    if "\\" in str(path) and os.sep == "/":
        text += (
            " (a backslash is not a folder separator on this system: write the path with "
            "forward slashes, e.g. ./p.json or payloads/p.json)"
        )
    return text


def _must_be_file(value: Path, info: ValidationInfo) -> Path:
    if validation_context(info).get("check_paths", True) and not value.is_file():
        raise ValueError(not_found("file", value))
    return value


def _must_be_dir(value: Path, info: ValidationInfo) -> Path:
    if validation_context(info).get("check_paths", True) and not value.is_dir():
        raise ValueError(not_found("folder", value))
    return value


ResolvedPath = Annotated[Path, AfterValidator(resolve_path)]
ExistingFile = Annotated[Path, AfterValidator(resolve_path), AfterValidator(_must_be_file)]
ExistingDir = Annotated[Path, AfterValidator(resolve_path), AfterValidator(_must_be_dir)]


def parse_duration(value: Any) -> Any:
    """Seconds from ``3600``, ``"90m"``, ``"1h30m"``, ``"45s"``, ``"1.5h"`` or ``"01:30:00"``."""
    if value is None or isinstance(value, int | float):
        return value
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    m = re.fullmatch(r"(\d+):(\d{1,2}):(\d{1,2})", text)
    if m:
        h, mi, s = (int(g) for g in m.groups())
        return float(h * 3600 + mi * 60 + s)
    m = re.fullmatch(
        r"(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?", text
    )
    if text and m and any(m.groups()):
        h, mi, s = (float(g) if g else 0.0 for g in m.groups())
        return h * 3600 + mi * 60 + s
    raise ValueError(f"{value!r} is not a duration; write seconds (3600) or e.g. 90m, 1h30m, 45s")


Duration = Annotated[float | None, BeforeValidator(parse_duration)]


def switch_shorthand(number_key: str) -> Callable[[Any], Any]:
    """A before-validator for an optional section: ``false``/``null`` is off, ``true`` the
    defaults, a number the section's ``number_key`` (``pruning: 3``, ``validation: 2``)."""

    def shorthand(value: Any) -> Any:
        if value is False:
            return None
        if value is True:
            return {}
        if isinstance(value, int):
            return {number_key: value}
        return value

    return shorthand
