"""Optimizer quality on synthetic block-weight landscapes with interactions between blocks.

For each landscape (``autombw_cli.search.landscapes``: optimum 1.0, a random point ~0) and
each optimizer, runs one sequential search of ``--budget`` evaluations per seed (the seed also
draws the landscape's hidden optimum) and reports the median over seeds of the best score after
50, 100 and 270 evaluations, and of the evaluations needed to reach 95% of the optimum (runs
that never get there count as budget+1; ``>270`` means the median run did not).

The baseline is auto-MBW-rt's default: gradient-free-optimizers' BayesianOptimizer on a grid
of 20 intervals with GFO's default settings, whose acquisition candidates are GFO's own one-off
random sub-grid (``candidates: subgrid``). One deviation, to fit the time budget: each ask scores
20,000 random rows of that sub-grid instead of GFO's default 1,000,000 (``sampling``); which
values each block can take is exactly GFO's.

    .venv/bin/python benchmarks/optimizers.py --results runs.jsonl   # the full table
    .venv/bin/python benchmarks/optimizers.py --seeds 3 --budget 100   # a quick look

The full table is about 5 CPU-hours (auto-MBW-rt's default refits GFO's Gaussian process on
every ask: minutes per run); ``--results FILE`` appends every finished run as a JSON line and
skips runs already there, so it can be spread over several sittings or machines and the table
printed from the file alone (``--report-only``).

Also prints, per landscape, how many evaluations each candidate needs (median curve) to reach
the baseline's median result after the full budget: the goal is a third of the budget or less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small model fits: one thread is fastest
os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass(frozen=True)
class Candidate:
    label: str
    optimizer: str
    settings: dict[str, Any]
    intervals: int = 10
    max_seeds: int | None = None  # fewer seeds for a slow one (said in the table)


CANDIDATES = (
    Candidate("tpe (Optuna, multivariate)", "tpe", {}),
    Candidate("cmaes (Optuna)", "cmaes", {}),
    Candidate("Bayesian (GFO, resample)", "Bayesian", {"n_candidates": 1000}),
    Candidate("random (Optuna)", "random", {}),
)
BASELINE = Candidate(
    "auto-MBW-rt default: GFO Bayesian, 20 intervals",
    "Bayesian",
    {"candidates": "subgrid", "sampling": {"random": 20000}},
    intervals=20,
)
CHECKPOINTS = (50, 100, 270)


def run_one(args: tuple[Candidate, str, int, int]) -> tuple[str, str, int, list[float], float]:
    """One search; returns the best-so-far curve (one value per evaluation) and its time."""
    cand, landscape_name, seed, budget = args
    warnings.filterwarnings("ignore")
    from autombw_cli.search.landscapes import LANDSCAPES
    from autombw_cli.search.passes import PassSpec, run_passes
    from autombw_cli.search.space import SearchSpace

    land = LANDSCAPES[landscape_name](seed)
    space = SearchSpace.build("sd1", intervals=cand.intervals)
    started = time.perf_counter()
    result = run_passes(space, [PassSpec(cand.optimizer, cand.settings, budget)], land, seed=seed)
    elapsed = time.perf_counter() - started
    curve, best = [], float("-inf")
    for e in result.evaluations:
        best = max(best, e.score)  # type: ignore[arg-type]
        curve.append(best)
    return cand.label, landscape_name, seed, curve, elapsed


def first_reaching(curve: list[float], level: float, budget: int) -> int:
    for i, v in enumerate(curve, start=1):
        if v >= level:
            return i
    return budget + 1


def median_curve(curves: list[list[float]], budget: int) -> list[float]:
    padded = [c + [c[-1]] * (budget - len(c)) for c in curves]
    return [statistics.median(col) for col in zip(*padded, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=270)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--landscapes", default="coupled,skip-pairs,sim")
    parser.add_argument("--results", type=Path, help="JSON lines of finished runs (appended)")
    parser.add_argument("--report-only", action="store_true", help="print the table, run nothing")
    args = parser.parse_args(argv)
    landscapes = args.landscapes.split(",")
    checkpoints = [c for c in CHECKPOINTS if c <= args.budget] or [args.budget]
    everyone = (*CANDIDATES, BASELINE)
    tasks = [
        (cand, land, seed, args.budget)
        for land in landscapes
        for cand in everyone
        for seed in range(min(args.seeds, cand.max_seeds or args.seeds))
    ]
    results = _load(args.results, args.budget) if args.results else []
    done = {(r[0], r[1], r[2]) for r in results}
    tasks = [t for t in tasks if (t[0].label, t[1], t[2]) not in done]
    tasks.sort(key=lambda t: (t[0] is not BASELINE, t[0].optimizer != "Bayesian"))  # slow first
    started = time.perf_counter()
    if tasks and not args.report_only:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for i, res in enumerate(pool.map(run_one, tasks), start=1):
                results.append(res)
                if args.results:
                    _append(args.results, res, args.budget)
                print(
                    f"  {i}/{len(tasks)} {res[0]} / {res[1]} / seed {res[2]}: {res[4]:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    wall = time.perf_counter() - started
    results = [r for r in results if r[1] in landscapes]
    curves: dict[tuple[str, str], list[list[float]]] = {}
    times: dict[tuple[str, str], list[float]] = {}
    for label, land, _seed, curve, elapsed in results:
        curves.setdefault((label, land), []).append(curve)
        times.setdefault((label, land), []).append(elapsed)

    cols = [f"best@{c}" for c in checkpoints]
    print(
        f"# optimizer quality: median over seeds, budget {args.budget}, "
        f"wall {wall:.0f} s on {args.jobs} processes ({sys.platform}, {os.cpu_count()} cpus)"
    )
    for land in landscapes:
        if (BASELINE.label, land) not in curves:
            print(f"\n## landscape {land}: no baseline runs yet")
            continue
        base = median_curve(curves[(BASELINE.label, land)], args.budget)
        base_final = base[-1]
        print(f"\n## landscape {land} (optimum 1.0)\n")
        head = ["optimizer", "seeds", *cols, "evals to 95%", "evals to baseline@end", "s/run"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for cand in everyone:
            runs = curves.get((cand.label, land))
            if not runs:
                continue
            med = median_curve(runs, args.budget)
            bests = [
                f"{statistics.median(r[min(c, len(r)) - 1] for r in runs):.3f}" for c in checkpoints
            ]
            reach = statistics.median(first_reaching(r, 0.95, args.budget) for r in runs)
            reach_s = f">{args.budget}" if reach > args.budget else f"{reach:.0f}"
            to_base = first_reaching(med, base_final, args.budget)
            to_base_s = f">{args.budget}" if to_base > args.budget else str(to_base)
            secs = statistics.median(times[(cand.label, land)])
            print(
                f"| {cand.label} | {len(runs)} | {' | '.join(bests)} | {reach_s} | "
                f"{to_base_s} | {secs:.1f} |"
            )
    return 0


def _append(path: Path, res: tuple[str, str, int, list[float], float], budget: int) -> None:
    label, land, seed, curve, elapsed = res
    row = {"label": label, "landscape": land, "seed": seed, "budget": budget}
    row |= {"elapsed_s": elapsed, "curve": curve}
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _load(path: Path, budget: int) -> list[tuple[str, str, int, list[float], float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a torn last line from a killed run
        if r["budget"] == budget:
            out.append((r["label"], r["landscape"], r["seed"], r["curve"], r["elapsed_s"]))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
