"""Optimizer quality on synthetic block-weight landscapes with interactions between blocks.

For each landscape (``autombw_cli.testing.landscapes``: optimum 1.0, a random point ~0) and
each optimizer, runs one sequential search of ``--budget`` evaluations per seed (the seed also
draws the landscape's hidden optimum) and reports the median over seeds of the best score after
50, 100 and 270 evaluations, and of the evaluations needed to reach 95% of the optimum (runs
that never get there count as budget+1; ``>270`` means the median run did not).

The baseline is auto-MBW-rt's default: gradient-free-optimizers' BayesianOptimizer on a grid
of 20 intervals with GFO's default settings, whose acquisition candidates are GFO's own one-off
random sub-grid (``candidates: subgrid``), run the way auto-MBW-rt runs it: Hyperactive with
``memory`` on counts ``n_iter`` iterations, and a proposal that repeats a scored point is
answered from memory (no images generated) but uses an iteration. So the baseline's x axis is
iterations, and the table also gives how many distinct points it evaluated in its 270 (which
is what a run of it costs in WebUI time). One deviation, to fit the time budget: each ask scores
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
from dataclasses import asdict, dataclass
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
    "auto-MBW-rt default: GFO Bayesian, 20 intervals (x: iterations)",
    "Bayesian",
    {"candidates": "subgrid", "sampling": {"random": 20000}},
    intervals=20,
)
CHECKPOINTS = (50, 100, 270)


@dataclass(frozen=True)
class RunResult:
    label: str
    landscape: str
    seed: int
    curve: list[float]  # best so far after each evaluation (baseline: each iteration)
    evaluations: int  # distinct points evaluated
    elapsed_s: float


def run_one(args: tuple[Candidate, str, int, int, int]) -> RunResult:
    """One search of ``budget`` evaluations (the baseline: iterations)."""
    cand, landscape_name, seed, budget, workers = args
    warnings.filterwarnings("ignore")
    from autombw_cli.search.space import SearchSpace
    from autombw_cli.testing.landscapes import LANDSCAPES
    from autombw_cli.testing.passes import PassSpec, run_passes

    land = LANDSCAPES[landscape_name](seed)
    space = SearchSpace.build("sd1", intervals=cand.intervals)
    started = time.perf_counter()
    if cand.label == BASELINE.label:
        curve, evaluations = auto_mbw_rt_iterations(space, cand, land, seed, budget)
    else:
        spec = PassSpec(cand.optimizer, cand.settings, budget)
        result = run_passes(space, [spec], land, seed=seed, workers=workers)
        curve, best = [], float("-inf")
        for e in result.evaluations:
            best = max(best, e.score)  # type: ignore[arg-type]
            curve.append(best)
        evaluations = len(result.evaluations)
    elapsed = time.perf_counter() - started
    return RunResult(cand.label, landscape_name, seed, curve, evaluations, elapsed)


def auto_mbw_rt_iterations(
    space: Any, cand: Candidate, land: Any, seed: int, budget: int
) -> tuple[list[float], int]:
    """auto-MBW-rt's loop (Hyperactive, ``memory`` on): ``budget`` iterations, where a repeat
    of a scored point is answered from memory but still uses an iteration. Drives the GFO
    adapter's backend hooks directly: what its own ``ask`` does, minus our re-asking on
    repeats. Returns the best so far per iteration and the number of distinct points."""
    from autombw_cli.search.optimizers import TrialOrigin, create_optimizer

    opt = create_optimizer(cand.optimizer, dict(cand.settings), space, seed)
    memory: dict[tuple[float, ...], float] = {}
    curve, best = [], float("-inf")
    for _ in range(budget):
        proposal = opt._backend_ask()
        if proposal is None:
            weights = opt._random_unseen()
            token = opt._backend_ask_fixed(weights)
        else:
            params, token = proposal
            weights = space.to_weights(params)
        key = space.key(weights)
        if key in memory:
            opt._backend_duplicate(token, memory[key])  # a memory hit
        else:
            trial = opt._issue(weights, token, TrialOrigin.OPTIMIZER)
            memory[key] = float(land(weights))
            opt.tell(trial, memory[key])
        best = max(best, memory[key])
        curve.append(best)
    return curve, len(memory)


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
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="trials in flight, finishing in random order, like N WebUI instances (not the "
        "baseline: auto-MBW-rt is sequential)",
    )
    parser.add_argument("--optimizers", help="only these (comma-separated names, 'baseline')")
    args = parser.parse_args(argv)
    landscapes = args.landscapes.split(",")
    everyone = (*CANDIDATES, BASELINE)
    if args.optimizers:
        wanted = set(args.optimizers.split(","))
        everyone = tuple(
            c for c in everyone if c.optimizer in wanted or (c is BASELINE and "baseline" in wanted)
        )
    tasks = [
        (cand, land, seed, args.budget, args.workers)
        for land in landscapes
        for cand in everyone
        for seed in range(min(args.seeds, cand.max_seeds or args.seeds))
    ]
    results = _load(args.results, args.budget, args.workers) if args.results else []
    done = {(r.label, r.landscape, r.seed) for r in results}
    tasks = [t for t in tasks if (t[0].label, t[1], t[2]) not in done]
    tasks.sort(key=lambda t: (t[0] is not BASELINE, t[0].optimizer != "Bayesian"))  # slow first
    started = time.perf_counter()
    if tasks and not args.report_only:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for i, res in enumerate(pool.map(run_one, tasks), start=1):
                results.append(res)
                if args.results:
                    _append(args.results, res, args.budget, args.workers)
                print(
                    f"  {i}/{len(tasks)} {res.label} / {res.landscape} / seed {res.seed}: "
                    f"{res.elapsed_s:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    wall = time.perf_counter() - started
    print(
        f"# optimizer quality: median over seeds, budget {args.budget}, {args.workers} in flight, "
        f"wall {wall:.0f} s on {args.jobs} processes ({sys.platform}, {os.cpu_count()} cpus)"
    )
    for land in landscapes:
        _report(land, [r for r in results if r.landscape == land], everyone, args.budget)
    return 0


def _report(
    land: str, results: list[RunResult], everyone: tuple[Candidate, ...], budget: int
) -> None:
    by_label: dict[str, list[RunResult]] = {}
    for r in results:
        by_label.setdefault(r.label, []).append(r)
    base_runs = by_label.get(BASELINE.label)
    base_final = median_curve([r.curve for r in base_runs], budget)[-1] if base_runs else None
    checkpoints = [c for c in CHECKPOINTS if c <= budget] or [budget]
    print(f"\n## landscape {land} (optimum 1.0)\n")
    head = ["optimizer", "seeds", *(f"best@{c}" for c in checkpoints), "evals to 95%"]
    head += ["evals to baseline@end", "distinct points", "s/run"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for cand in everyone:
        runs = by_label.get(cand.label)
        if not runs:
            continue
        curves = [r.curve for r in runs]
        bests = [
            f"{statistics.median(c[min(n, len(c)) - 1] for c in curves):.3f}" for n in checkpoints
        ]
        reach = statistics.median(first_reaching(c, 0.95, budget) for c in curves)
        reach_s = f">{budget}" if reach > budget else f"{reach:.0f}"
        to_base_s = "-"
        if base_final is not None:
            to_base = first_reaching(median_curve(curves, budget), base_final, budget)
            to_base_s = f">{budget}" if to_base > budget else str(to_base)
        distinct = statistics.median(r.evaluations for r in runs)
        secs = statistics.median(r.elapsed_s for r in runs)
        print(
            f"| {cand.label} | {len(runs)} | {' | '.join(bests)} | {reach_s} | {to_base_s} | "
            f"{distinct:.0f} | {secs:.1f} |"
        )


def _append(path: Path, res: RunResult, budget: int, workers: int) -> None:
    row = {"budget": budget, "workers": workers, **asdict(res)}
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _load(path: Path, budget: int, workers: int) -> list[RunResult]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line from a killed run
        if (row.pop("budget"), row.pop("workers", 1)) == (budget, workers):
            out.append(RunResult(**row))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
