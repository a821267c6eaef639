"""Overhead: the CLI's own time per evaluation as a share of the evaluation time.

One simulated instance renders each image in a fixed time (1 s by default). Everything else in
an evaluation (the bridge merge call, HTTP transfer, image decode, scoring, the optimizer, the
journal) is overhead: (wall - evaluations x images x latency) / wall, measured from the first
evaluation's start to the last one's end. Baseline in the same run: the pure generation time.
Goal (issue 4 §7): under 2%.

    .venv/bin/python benchmarks/overhead.py [--latency 1.0] [--evaluations 20]
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _search_common import run_search


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=1.0, help="seconds per simulated image")
    ap.add_argument("--evaluations", type=int, default=20)
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--optimizers", default="random,tpe")
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, latency {args.latency}s/image, "
        f"{args.evaluations} evaluations, 1 image of {args.size}px each, 1 instance"
    )
    print(
        f"{'optimizer':>10} {'wall s':>8} {'generation s':>13} {'overhead s/eval':>16} {'share':>7}"
    )
    for opt in args.optimizers.split(","):
        stats = run_search(1, args.latency, args.evaluations, size=args.size, optimizer=opt)
        gen = stats.evaluations * args.latency
        over = stats.wall_s - gen
        print(
            f"{opt:>10} {stats.wall_s:>8.2f} {gen:>13.2f} "
            f"{over / stats.evaluations:>16.4f} {over / stats.wall_s:>7.2%}"
        )


if __name__ == "__main__":
    main()
