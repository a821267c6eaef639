"""Where an optimizer's candidates land on the ``noisy`` landscape: the diagnostic behind
BENCHMARKS.md "Why `gp` gains little on `noisy` between 50 and 100".

For each optimizer and seed this runs one search of ``--budget`` evaluations through
`autombw_cli.optimize` (one in flight) and prints, at the budget: the observed score of the
point the search would pick (its best observed score), that point's noise-free value, the best
noise-free value among all evaluated points, and the mean noise-free value of the last 20
candidates (a random point scores about 0, the optimum 1.0). An optimizer that chases lucky
draws picks a point whose observed score is far above its value; one that has given up on the
best region has a low mean over its last candidates.

    .venv/bin/python benchmarks/noisy_candidates.py                      # gp, Bayesian; seeds 0-1
    .venv/bin/python benchmarks/noisy_candidates.py --optimizers gp --seeds 4 --budget 150
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import warnings
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

SETTINGS = {"Bayesian": {"n_candidates": 1000}}  # as benchmarks/optimizers.py runs it


def one(args: tuple[str, int, int]) -> tuple[str, int, float, float, float, float]:
    optimizer, seed, budget = args
    warnings.filterwarnings("ignore")
    from autombw_cli import optimize
    from autombw_cli.testing.landscapes import noisy

    land = noisy(seed)
    search = {
        "passes": [{"optimizer": optimizer, "settings": SETTINGS.get(optimizer, {})}],
        "early_stopping": False,
        "max_evaluations": budget,
    }
    result = optimize(land, arch="sd1", search=search, seed=seed)
    scored = [(e.score, land.value(e.weights)) for e in result.evaluations if e.ok]
    picked_score, picked_value = max(scored)
    last = [value for _, value in scored[-20:]]
    return (
        optimizer,
        seed,
        picked_score,
        picked_value,
        max(value for _, value in scored),
        statistics.fmean(last),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", default="gp,Bayesian")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    tasks = [(o, s, args.budget) for o in args.optimizers.split(",") for s in range(args.seeds)]
    print(f"# noisy landscape, {args.budget} evaluations, one in flight ({platform.platform()})")
    print("| optimizer | seed | picked: observed | picked: value | best value | last 20: mean |")
    print("|---|---|---|---|---|---|")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(one, tasks):
            name, seed, *values = row
            print(f"| {name} | {seed} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
