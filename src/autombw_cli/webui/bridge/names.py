"""Names for the bridge: matching a requested model to a checkpoint, and safe output names.

Standard library only (copied into the WebUI extension).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]$")
_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    "CONIN$",
    "CONOUT$",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
    *(f"COM{c}" for c in "¹²³"),
    *(f"LPT{c}" for c in "¹²³"),
}
_BAD_CHARS = re.compile(r'[<>:"|?*\x00-\x1f\x7f]')
# Bidirectional controls (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069): invisible, and they
# make a file name display as something else (``gnp.exe`` shown as ``exe.png``).
_BIDI_CHARS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
MAX_NAME_LEN = 200


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint the host knows: its title (A1111 ``title``), short name and file."""

    title: str
    name: str
    path: Path
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.path.name


class NameError_(ValueError):
    """A name the bridge refuses (the message says why); mapped to HTTP 400/404 by the routes."""


def _norm(text: str) -> str:
    text = _HASH_SUFFIX.sub("", text.strip()).replace("\\", "/")
    return text.lower()


def _stem(text: str) -> str:
    base = _norm(text).rsplit("/", 1)[-1]
    for suffix in CHECKPOINT_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def find_checkpoint(requested: str, refs: Sequence[CheckpointRef]) -> CheckpointRef | None:
    """The checkpoint ``requested`` names: title, name, file name, stem or full path (in that
    order of preference; case-insensitive; a trailing ``[hash]`` is ignored)."""
    want = _norm(requested)
    if not want:
        return None
    for getter in (
        lambda r: _norm(r.title),
        lambda r: _norm(r.name),
        lambda r: r.path.name.lower(),
        lambda r: _norm(str(r.path)),
    ):
        hits = [r for r in refs if getter(r) == want]
        if len(hits) >= 1:
            return hits[0]
    want_stem = _stem(requested)
    hits = [r for r in refs if _stem(r.name) == want_stem or _stem(r.path.name) == want_stem]
    return hits[0] if len(hits) == 1 else None


def lora_refs(folder: Path | None) -> list[CheckpointRef]:
    """The LoRA files (``.safetensors``) under ``folder``, named like checkpoints: the path
    relative to the folder as title, without its suffix as name (A1111's Lora names)."""
    if folder is None or not folder.is_dir():
        return []
    refs = []
    for path in sorted(folder.rglob("*.safetensors")):
        rel = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        title = rel.as_posix()
        refs.append(CheckpointRef(title=title, name=title[: -len(".safetensors")], path=path))
    return refs


def close_names(requested: str, refs: Sequence[CheckpointRef], n: int = 5) -> list[str]:
    """Up to ``n`` known checkpoint names that look like ``requested`` (for error messages)."""
    names = [r.name for r in refs]
    by_lower = {name.lower(): name for name in names}
    hits = difflib.get_close_matches(_norm(requested), list(by_lower), n=n, cutoff=0.4)
    if not hits:
        stems = {_stem(name): name for name in names}
        hits = [stems[s] for s in difflib.get_close_matches(_stem(requested), stems, n=n)]
        return hits
    return [by_lower[h] for h in hits]


def checkpoint_stem(text: str) -> str:
    """The lower-case file stem a checkpoint name, title, file name or path refers to
    (``sub/Model.safetensors [abcd1234]`` -> ``model``)."""
    return _stem(text)


def safe_output_path(name: object, folder: Path, *, suffix: str = ".safetensors") -> Path:
    """The file ``name`` inside ``folder``, or `NameError_` if the name is not a plain file name
    (the rule is `check_output_name`)."""
    raw = check_output_name(name, suffix=suffix)
    folder_resolved = folder.resolve()
    target = (folder_resolved / raw).resolve()
    if target.parent != folder_resolved:
        raise NameError_(f"name {name!r} leaves the checkpoint folder")
    return target


def check_output_name(name: object, *, suffix: str = ".safetensors") -> str:
    """The output file name for ``name`` (``suffix`` appended), or `NameError_` saying why not.

    Refused: empty names, path separators, ``..``, absolute or drive paths, control characters,
    bidirectional control characters (U+202E...) and ``<>:"|?*``, Windows reserved device names
    (``CON``, ``NUL``, ``COM1``... with or without an extension), names starting or ending with
    whitespace or ending in a dot, hidden names and names over 200 characters. ``suffix`` is
    appended unless the name already ends with it; other checkpoint extensions are refused.
    The search config checks ``models.output`` with this same function.
    """
    if not isinstance(name, str):
        raise NameError_("name must be a string")
    raw = name
    if not raw.strip():
        raise NameError_("name is empty")
    if raw != raw.strip():
        raise NameError_(f"name {raw!r} starts or ends with whitespace")
    if (
        PurePosixPath(raw).is_absolute()
        or PureWindowsPath(raw).is_absolute()
        or (PureWindowsPath(raw).drive)
    ):
        raise NameError_(f"name {raw!r} is an absolute path; give a file name only")
    if "/" in raw or "\\" in raw:
        raise NameError_(f"name {raw!r} contains a path separator; give a file name only")
    if raw in (".", "..") or ".." in raw.split("."):
        raise NameError_(f"name {raw!r} is not a file name")
    if _BAD_CHARS.search(raw):
        raise NameError_(f"name {raw!r} contains characters not allowed in file names")
    if _BIDI_CHARS.search(raw):
        raise NameError_(
            f"name {raw!r} contains bidirectional control characters (e.g. U+202E) that "
            "make a file name display as something else"
        )
    if raw.startswith("."):
        raise NameError_(f"name {raw!r} would be a hidden file")
    if raw.endswith((".", " ")):
        raise NameError_(f"name {raw!r} ends with a dot or space")
    lower = raw.lower()
    if not lower.endswith(suffix):
        for other in CHECKPOINT_SUFFIXES:
            if lower.endswith(other):
                raise NameError_(f"name {raw!r}: the bridge writes {suffix} files only")
        raw = raw + suffix
    stem = raw[: -len(suffix)]
    if not stem:
        raise NameError_(f"name {name!r} has no file name before {suffix}")
    device = stem.split(".", 1)[0].rstrip(" ").upper()
    if device in _WINDOWS_RESERVED:
        raise NameError_(f"name {name!r} is a reserved device name on Windows")
    if len(raw) > MAX_NAME_LEN:
        raise NameError_(f"name is {len(raw)} characters long; the limit is {MAX_NAME_LEN}")
    return raw
