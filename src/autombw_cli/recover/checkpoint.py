"""The recipe embedded in a merged ``.safetensors`` file (read from its header only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autombw_cli.errors import JournalError
from autombw_cli.recipe import Recipe
from autombw_cli.recover.values import RecoveredSource, SourceKind
from autombw_cli.search.evaluation import Evaluation

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


def read_safetensors_metadata(path: Path | str) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file, or None when the file is not one.

    Reads the 8-byte length and the JSON header only, never the tensors. A text file cannot
    look like one: its first 8 bytes read as a length far above the header limit.
    """
    p = Path(path)
    with open(p, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return None
        size = int.from_bytes(head, "little")
        if not 2 <= size <= MAX_HEADER_BYTES:
            return None
        raw = fh.read(size)
    if not raw.startswith(b"{"):
        return None
    if len(raw) != size:
        raise JournalError(f"{p}: truncated safetensors header ({len(raw)} of {size} bytes)")
    try:
        header: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise JournalError(f"{p}: corrupt safetensors header ({exc})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def parse_checkpoint(path: Path | str) -> RecoveredSource:
    """The recipe a merged checkpoint carries (autombw's or runtime-block-merge's metadata)."""
    source = str(path)
    try:
        meta = read_safetensors_metadata(path)
    except FileNotFoundError:
        raise JournalError(f"{source}: no such file") from None
    except OSError as exc:
        raise JournalError(f"{source}: cannot read ({exc.strerror or exc})") from None
    if meta is None:
        raise JournalError(
            f"{source}: not a .safetensors file",
            hint="--kind checkpoint reads the recipe embedded in a merged .safetensors",
        )
    recipe = Recipe.from_safetensors_metadata(meta, source=source)
    evaluation = Evaluation(weights=recipe.weights, score=None, location="safetensors metadata")
    return RecoveredSource(source, SourceKind.CHECKPOINT, (evaluation,), recipe=recipe)
