"""Run ``python -m autombw_cli ...`` under tracemalloc and report what grew between two points.

    python benchmarks/_tracemalloc_run.py OUT FIRST LAST -- search soak.yaml --plain

A watcher thread counts the rows of ``runs/*/history.csv`` (under the working directory) and
takes a snapshot when FIRST and when LAST evaluations are recorded; the growth between them,
per allocating file and per allocating line, divided by LAST - FIRST, goes to OUT (text).
Used by ``benchmarks/soak.py --tracemalloc``; tracemalloc makes the process slower and larger,
so its wall time and RSS are not comparable with an untraced run.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import tracemalloc
from pathlib import Path

TOP = 25


def _rows() -> int:
    files = list(Path("runs").glob("*/history.csv"))
    return max(0, files[0].read_bytes().count(b"\n") - 1) if files else 0


def _report(first: tracemalloc.Snapshot, last: tracemalloc.Snapshot, evaluations: int) -> str:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    first, last = first.filter_traces(ignore), last.filter_traces(ignore)
    by_file = last.compare_to(first, "filename")
    total = sum(d.size_diff for d in by_file)
    lines = [
        f"traced growth: {total / 1024:.0f} KB over {evaluations} evaluations = "
        f"{total / evaluations:.0f} bytes per evaluation",
        "",
        "bytes/eval  objects  allocated in (file)",
    ]
    for d in by_file[:TOP]:
        lines.append(f"{d.size_diff / evaluations:10.0f} {d.count_diff:+8d}  {d.traceback[0]}")
    lines += ["", "bytes/eval  objects  allocated at (line)"]
    for d in last.compare_to(first, "lineno")[:TOP]:
        lines.append(f"{d.size_diff / evaluations:10.0f} {d.count_diff:+8d}  {d.traceback[0]}")
    return "\n".join(lines) + "\n"


def _watch(out: Path, first_at: int, last_at: int) -> None:
    snaps: list[tracemalloc.Snapshot] = []
    for mark in (first_at, last_at):
        while _rows() < mark:
            time.sleep(0.05)
        gc.collect()
        snaps.append(tracemalloc.take_snapshot())
    out.write_text(_report(snaps[0], snaps[1], last_at - first_at), encoding="utf-8")


def main() -> None:
    out, first_at, last_at = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    if sys.argv[4] != "--":
        raise SystemExit("usage: _tracemalloc_run.py OUT FIRST LAST -- AUTOMBW-ARGS...")
    tracemalloc.start(1)
    watcher = threading.Thread(target=_watch, args=(out, first_at, last_at), daemon=True)
    watcher.start()
    import runpy

    sys.argv = ["autombw", *sys.argv[5:]]
    try:
        runpy.run_module("autombw_cli", run_name="__main__", alter_sys=True)
    finally:
        watcher.join(timeout=600)  # the report of the last snapshot (a daemon: never blocks)


if __name__ == "__main__":
    main()
