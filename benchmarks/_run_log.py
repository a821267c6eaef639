"""The JSON-lines file of finished runs that lets a long benchmark resume: one object a line,
appended and fsynced as each run finishes; a torn last line (a killed benchmark) is skipped."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def append_run(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line from a killed run
        if isinstance(row, dict):
            rows.append(row)
    return rows
