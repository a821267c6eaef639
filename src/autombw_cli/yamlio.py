"""Read YAML/JSON documents with line numbers, and turn pydantic errors into user messages.

Shared by `config` and `payloads`: every message names the file, the field path
(``search.passes[0].optimizer``) and, where the YAML/JSON source has one, the line; an unknown
key gets a did-you-mean from the keys that model accepts.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import BaseModel, ValidationError

from autombw_cli.errors import ConfigError

PathElem = str | int
MAX_ERRORS_SHOWN = 10


class FieldError(ValueError):
    """A validator's error about a field below the one being validated (``path`` is relative)."""

    def __init__(self, path: Sequence[PathElem], message: str) -> None:
        super().__init__(message)
        self.path = tuple(path)
        self.message = message


@dataclass(frozen=True)
class Document:
    """A parsed file: its data and the line (1-based) of every key or list item."""

    path: Path
    data: Any
    lines: Mapping[tuple[PathElem, ...], int] = field(default_factory=dict)

    def line_of(self, path: Sequence[PathElem]) -> int | None:
        """The line of ``path``, or of its nearest ancestor that the file has."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return None


def read_document(path: Path, *, error_cls: type[ConfigError] = ConfigError, what: str) -> Document:
    """Read a YAML or JSON file (by extension; ``.json`` is parsed strictly as JSON)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise error_cls(
            f"{path}: {what} file not found", hint="check the path (relative paths start at cwd)"
        ) from None
    except IsADirectoryError:
        raise error_cls(f"{path}: is a directory, expected a {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error_cls(f"{path}: cannot read {what} file ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise error_cls(
                f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}",
                hint=_json_hint(exc),
            ) from None
    else:
        data = _load_yaml(text, path, error_cls)
    try:
        lines = line_map(text)
    except yaml.YAMLError:  # valid JSON that YAML 1.1 cannot compose: no line numbers then
        lines = {}
    if isinstance(lines, _Duplicate):
        where = ".".join(str(p) for p in lines.path)
        raise error_cls(
            f"{path}:{lines.line}: {where}: key given twice (the first one is on line "
            f"{lines.first_line})"
        )
    return Document(path, data, lines)


def _json_hint(exc: json.JSONDecodeError) -> str:
    """A trailing comma (``"steps": 4,}``) reads as "expecting a property name": say so."""
    before = exc.doc[: exc.pos].rstrip()
    after = exc.doc[exc.pos :].lstrip()
    if before.endswith(",") and after[:1] in ("}", "]"):
        return f"remove the extra comma before '{after[0]}' (JSON allows none after the last item)"
    return "check for a missing comma, quote or bracket near that line"


MAX_YAML_NODES = 100_000  # nodes of a document once its aliases are expanded


class _AliasBomb(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes ``root`` has once every alias is expanded, computed without expanding
    (each node counted once, memoised); _AliasBomb past MAX_YAML_NODES or for an alias cycle
    (``&a [*a]``). Billion-laughs files stay small for PyYAML, which shares aliased objects,
    but not for whatever walks them afterwards (the line map, validation)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if children_done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_YAML_NODES:
                raise _AliasBomb(f"its aliases (*name) expand to more than {MAX_YAML_NODES} values")
            continue
        if key in sizes:
            continue
        if key in active:
            raise _AliasBomb("an alias (*name) refers to a value that contains it")
        active.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in active:
                raise _AliasBomb("an alias (*name) refers to a value that contains it")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _load_yaml(text: str, path: Path, error_cls: type[ConfigError]) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except _AliasBomb as exc:
        raise error_cls(
            f"{path}: refused: {exc.message}",
            hint="write the values out, or use fewer nested anchors (&name) and aliases",
        ) from None
    except RecursionError:
        raise error_cls(
            f"{path}: refused: the YAML nests too deeply",
            hint="flatten the nesting of lists and mappings",
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        hint = "check indentation and quoting near that line (tabs are not allowed)"
        if "escape" in problem and "double-quoted" in problem:
            hint = (
                "a backslash in double quotes starts an escape (\\U, \\n...): write a Windows "
                "path in single quotes ('C:\\Users\\me\\p.json') or with forward slashes "
                "(C:/Users/me/p.json)"
            )
        raise error_cls(f"{where}: malformed YAML: {problem}", hint=hint) from None
    except yaml.YAMLError as exc:
        raise error_cls(f"{path}: malformed YAML: {exc}") from None
    finally:
        loader.dispose()


@dataclass(frozen=True)
class _Duplicate:
    path: tuple[PathElem, ...]
    line: int
    first_line: int


def line_map(text: str) -> dict[tuple[PathElem, ...], int] | _Duplicate:
    """Map each key/item path of a YAML (or JSON) text to its 1-based line."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[tuple[PathElem, ...], int] = {}
    if root is None:
        return lines
    stack: list[tuple[yaml.Node, tuple[PathElem, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key: PathElem = key_node.value
                sub = (*path, key)
                line = key_node.start_mark.line + 1
                if sub in lines:
                    return _Duplicate(sub, line, lines[sub])
                lines[sub] = line
                stack.append((value_node, sub))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, i)] = item.start_mark.line + 1
                stack.append((item, (*path, i)))
    return lines


def error_text(exc: ConfigError | Exception) -> str:
    """One line from an AutombwError: its message, then its hint after a semicolon."""
    message = getattr(exc, "message", str(exc))
    hint = getattr(exc, "hint", None)
    return f"{message}; {hint}" if hint else message


def format_path(path: Sequence[PathElem]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def raise_validation_error(
    exc: ValidationError,
    doc: Document,
    model: type[BaseModel],
    *,
    error_cls: type[ConfigError] = ConfigError,
    prefix: Sequence[PathElem] = (),
) -> NoReturn:
    """Raise ``error_cls`` listing every validation error with file, line and field path."""
    errors = exc.errors(include_url=False)
    shown = [_describe(err, doc, model, tuple(prefix)) for err in errors[:MAX_ERRORS_SHOWN]]
    more = len(errors) - len(shown)
    if more > 0:
        shown.append(f"... and {more} more")
    noun = "error" if len(errors) == 1 else "errors"
    if len(shown) == 1:
        message = shown[0]
    else:
        message = f"{doc.path}: {len(errors)} {noun}:\n" + "\n".join(f"  {s}" for s in shown)
    raise error_cls(message) from None


def _describe(err: Mapping[str, Any], doc: Document, model: type[BaseModel], prefix: tuple) -> str:
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    inner = ctx.get("error")
    kind = err["type"]
    if isinstance(inner, FieldError):
        loc = (*loc, *inner.path)
        message = inner.message
    elif kind == "value_error" and inner is not None:
        message = str(inner)
    else:
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
    path = _data_path(loc, doc.data)
    full = (*prefix, *path)
    if kind == "extra_forbidden":
        key = path[-1] if path else "?"
        message = f"unknown key {key!r}"
        allowed = _allowed_keys(model, path[:-1])
        if allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
            message += f"; did you mean {close[0]!r}?" if close else ""
            message += f" (allowed here: {', '.join(sorted(allowed))})"
    elif kind in ("literal_error", "enum") and "expected" in ctx:
        got = err.get("input")
        options = re.findall(r"'([^']*)'", str(ctx["expected"]))
        close = difflib.get_close_matches(str(got), options, n=1, cutoff=0.6)
        message = f"{message} (got {got!r})" + (f"; did you mean {close[0]!r}?" if close else "")
    elif kind.endswith(("_type", "_parsing")) and kind != "missing":
        message = f"{message} (got {_short(err.get('input'))})"
    line = doc.line_of(path)
    where = f"{doc.path}:{line}" if line else str(doc.path)
    return f"{where}: {format_path(full)}: {message}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _data_path(loc: tuple, data: Any) -> tuple[PathElem, ...]:
    """Drop pydantic's union/tag/function names from ``loc`` where the data has no such key."""
    out: list[PathElem] = []
    cur = data
    for i, elem in enumerate(loc):
        last = i == len(loc) - 1
        in_map = isinstance(cur, Mapping) and elem in cur
        in_list = isinstance(cur, list) and isinstance(elem, int) and 0 <= elem < len(cur)
        if in_map or in_list:
            out.append(elem)
            cur = cur[elem]
        elif last or (isinstance(cur, Mapping) and not _looks_internal(elem)):
            out.append(elem)
            cur = None
    return tuple(out)


def _looks_internal(elem: PathElem) -> bool:
    return isinstance(elem, str) and (
        "[" in elem or ":" in elem or elem in ("list", "dict", "str", "int", "float", "bool")
    )


def _allowed_keys(model: type[BaseModel], path: Sequence[PathElem]) -> set[str]:
    types_at: list[Any] = [model]
    for elem in path:
        nxt: list[Any] = []
        for t in types_at:
            nxt.extend(_step(t, elem))
        types_at = nxt
    keys: set[str] = set()
    for t in types_at:
        for m in _unwrap(t):
            if isinstance(m, type) and issubclass(m, BaseModel):
                keys.update(m.model_fields)
    return keys


def _step(t: Any, elem: PathElem) -> list[Any]:
    out: list[Any] = []
    for m in _unwrap(t):
        origin = typing.get_origin(m)
        if isinstance(m, type) and issubclass(m, BaseModel):
            f = m.model_fields.get(str(elem))
            if f is not None:
                out.append(f.annotation)
        elif origin in (list, tuple, Sequence) and isinstance(elem, int):
            out.extend(a for a in typing.get_args(m) if a is not Ellipsis)
        elif origin in (dict, Mapping):
            args = typing.get_args(m)
            if len(args) == 2:
                out.append(args[1])
    return out


def _unwrap(t: Any) -> list[Any]:
    origin = typing.get_origin(t)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(t)[0])
    if origin is typing.Union or isinstance(t, types.UnionType):
        out: list[Any] = []
        for a in typing.get_args(t):
            out.extend(_unwrap(a))
        return out
    return [t]
