"""Scaling: one fixed search on 1, 2, 4 and 8 simulated WebUI instances.

Each simulated image takes a fixed latency; the baseline is the same search on one instance
(run in the same process, same machine). Reports wall time, speedup and each instance's busy
fraction (time merging/generating over its active span). Goal (issue 4 §7): speedup >= 0.9 x N
at 8 instances and every instance busy >= 95%.

    .venv/bin/python benchmarks/scaling.py [--latency 0.5] [--per-instance 6]
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _search_common import run_search, simulator_processes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.5, help="seconds per simulated image")
    ap.add_argument("--evaluations", type=int, default=48, help="evaluations of the search")
    ap.add_argument("--counts", default="1,2,4,8", help="instance counts")
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="run the simulators as threads of this process (default: one process each)",
    )
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    if args.in_process:
        _bench(counts, args, None)
        return
    with simulator_processes(max(counts), args.latency) as urls:
        _bench(counts, args, urls)


def _bench(counts: list[int], args: argparse.Namespace, urls: list[str] | None) -> None:
    where = "threads of this process" if urls is None else "one process each"
    print(
        f"machine: {platform.machine()}, {_cpus()} CPUs; latency {args.latency}s/image, "
        f"{args.evaluations} evaluations, 1 image each; simulators: {where}"
    )
    rows = []
    base = None
    for n in counts:
        stats = run_search(urls[:n] if urls else n, args.latency, args.evaluations)
        if base is None:
            base = stats.wall_s * (counts[0])  # time of the 1-instance run, scaled if counts[0]>1
        speedup = base / stats.wall_s
        rows.append(
            (
                n,
                stats.evaluations,
                stats.wall_s,
                speedup,
                min(stats.busy.values()),
                sum(stats.busy.values()) / len(stats.busy),
            )
        )
    print()
    print(
        f"{'instances':>9} {'evals':>6} {'wall s':>8} {'speedup':>8} {'x/N':>6} "
        f"{'min busy':>9} {'mean busy':>9}"
    )
    for n, ev, wall, sp, bmin, bmean in rows:
        print(f"{n:>9} {ev:>6} {wall:>8.2f} {sp:>8.2f} {sp / n:>6.2f} {bmin:>9.1%} {bmean:>9.1%}")


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
