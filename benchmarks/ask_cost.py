"""Optimizer time per candidate as the history grows: the shipped default against cheap ones.

A long search (a week of evaluations) asks its optimizer for a candidate thousands of times,
each time with a longer history. For each history length N this replays N random evaluations
of the ``coupled`` landscape (all 27 SD1 blocks, the 0.1 grid) into a fresh search through
`autombw_cli.optimize`, exactly as a resumed search does, then times the next asks: the
seconds between one evaluation and the next, less the landscape's own time (microseconds).
Rows: the shipped default as `autombw search` resolves it (past its first 100 evaluations that
is its second pass, where `gp` and GFO `Bayesian` take turns), Optuna's `gp` alone, and, as
the baseline, the optimizers of an earlier default (`cmaes`, `HillClimbing`). One process, one
BLAS thread. A cell is the mean of the timed asks (the default's alternate between its two
members: time an even number).

    .venv/bin/python benchmarks/ask_cost.py                   # N = 270, 500, 1000, 2000
    .venv/bin/python benchmarks/ask_cost.py --sizes 270,1000 --asks 4 --rows default
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time

ROWS = {  # label -> search: section (less the budget); None: the shipped default
    "shipped default": None,
    "gp": [{"optimizer": "gp"}],
    "cmaes (baseline)": [{"optimizer": "cmaes"}],
    "HillClimbing (baseline)": [{"optimizer": "HillClimbing"}],
}
SLOW = {"gp": 1000, "shipped default": 1000}  # skip longer histories (minutes per ask)


def ask_seconds(passes: list | None, history_len: int, asks: int) -> list[float]:
    import autombw_cli
    from autombw_cli.testing.landscapes import coupled

    land = coupled(0)
    random_search = {"max_evaluations": history_len, "passes": [{"optimizer": "random"}]}
    history = autombw_cli.optimize(land, search=random_search, seed=1).evaluations
    search: dict = {"max_evaluations": history_len + asks}
    if passes is not None:
        search["passes"] = passes
    stamps: list[float] = []

    def objective(weights):
        stamps.append(time.perf_counter())
        score = land(weights)
        stamps.append(time.perf_counter())
        return score

    started = time.perf_counter()
    autombw_cli.optimize(objective, search=search, seed=0, history=history)
    # the first gap includes the replay of the history: leave it out
    ends = [started, *stamps[1::2]]
    return [stamps[2 * i] - ends[i] for i in range(1, asks)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="270,500,1000,2000", help="history lengths")
    parser.add_argument("--asks", type=int, default=4, help="asks timed per size (+1 untimed)")
    parser.add_argument(
        "--rows", help="only rows whose label starts with one of these, comma-separated"
    )
    args = parser.parse_args(argv)
    # set here, not on import: optimizer_threads.py imports ask_seconds with the user's pools
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = {
        label: passes
        for label, passes in ROWS.items()
        if not args.rows or label.startswith(tuple(args.rows.split(",")))
    }
    logging.disable(logging.WARNING)  # "resuming by replaying the journal": that is the method
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"# seconds per ask, mean of {args.asks} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus, Python {sys.version.split()[0]})\n"
    )
    print("| optimizer | " + " | ".join(f"N = {n}" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for label, passes in rows.items():
        cells = []
        for n in sizes:
            if n > SLOW.get(label, n):
                cells.append("-")
                continue
            cells.append(f"{statistics.mean(ask_seconds(passes, n, args.asks + 1)):.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
