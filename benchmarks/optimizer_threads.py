"""Optimizer time per ask on a busy machine: one compute thread (shipped) against the default pools.

autombw shares its box with the WebUI and the scorer, so the optimizer's model fits often find
every core taken. This times the shipped default's asks (``ask_cost.py``'s method: a history of
N random evaluations of the ``coupled`` landscape replayed into `autombw_cli.optimize`, then the
seconds to each next candidate) in two rows:

- **shipped**: the code as it is, where model fits run on one BLAS and one OpenMP thread
  (``search/optimizers/compute_threads.py``);
- **baseline**: the same code with that limit taken out of both adapters, so torch's and BLAS's
  thread pools run at their defaults (one thread per core). Before the limit, Optuna's ``gp``
  ran exactly so; GFO's fits already had a BLAS-only limit, so at N = 270 (half the asks are
  GFO's) the baseline is somewhat slower than the previous release was.

and two conditions: ``idle``, and ``busy``, where one spinning process per core holds every core
for the whole measurement. Each cell runs in a fresh process whose environment has no
``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS`` (what a user's shell has).
N = 50 is the default's first pass (Optuna ``gp``); N = 270 its second (``gp`` and GFO
``Bayesian`` take turns: time an even number of asks).

    .venv/bin/python benchmarks/optimizer_threads.py [--sizes 50,270] [--asks 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
ROWS = ("shipped", "baseline")


def measure(row: str, size: int, asks: int) -> list[float]:
    """In this process: the seconds per ask of the shipped default at history ``size``."""
    import logging

    if row == "baseline":  # take the limit out where the adapters look it up
        from autombw_cli.search.optimizers import gfo, optuna_adapter

        gfo.one_compute_thread = contextlib.nullcontext  # type: ignore[assignment]
        optuna_adapter.one_compute_thread = contextlib.nullcontext  # type: ignore[assignment]
    logging.disable(logging.WARNING)
    sys.path.insert(0, str(HERE))
    from ask_cost import ask_seconds

    return ask_seconds(None, size, asks + 1)


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """``n`` processes that spin until the block ends."""
    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()


def cell(row: str, size: int, asks: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    out = subprocess.run(
        [sys.executable, __file__, "--measure", row, "--sizes", str(size), "--asks", str(asks)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return statistics.mean(json.loads(out.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,270", help="history lengths")
    parser.add_argument("--asks", type=int, default=4, help="asks timed per cell (+1 untimed)")
    parser.add_argument("--conditions", default="idle,busy", help="idle, busy or both")
    parser.add_argument("--measure", choices=ROWS, help=argparse.SUPPRESS)  # a cell's process
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.measure:
        print(json.dumps(measure(args.measure, sizes[0], args.asks)))
        return 0
    cpus = os.cpu_count() or 1
    print(
        f"# seconds per ask of the shipped default, mean of {args.asks} "
        f"({platform.processor() or platform.machine()}, {cpus} cpus, "
        f"Python {sys.version.split()[0]}); busy: {cpus} spinning processes\n"
    )
    print("| condition | row | " + " | ".join(f"N = {n}" for n in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    for condition in args.conditions.split(","):
        load = busy_cores(cpus) if condition == "busy" else contextlib.nullcontext()
        with load:
            for row in ROWS:
                cells = [f"{cell(row, n, args.asks):.2f}" for n in sizes]
                print(f"| {condition} | {row} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
