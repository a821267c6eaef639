"""Probe (not a shipped optimizer): one pass that takes turns between Optuna's `gp` and GFO's
`Bayesian` and tells both every result, next to the default and `Bayesian` from the results of
`benchmarks/optimizers.py` on the same landscape and seed.

The search core runs one optimizer per pass, so this swaps the optimizer the campaign builds
for a pass naming ``random`` (``campaign.create_optimizer``) for the portfolio below: the rest
(de-duplication, the scheduler, budgets) is the search `autombw_cli.optimize` runs. One
evaluation in flight only: with several, one member may propose a point the other has in
flight, which the probe answers as a failure to the proposer.

    .venv/bin/python benchmarks/portfolio_probe.py --landscapes noisy,flat --seeds 3 --budget 150
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _run_log import read_runs
from optimizers import incumbent_curve

RESULTS = Path(__file__).parent / "results"
CHECKPOINTS = (50, 100, 150, 270)


def _portfolio_class() -> type:
    from autombw_cli.search.evaluation import TrialState
    from autombw_cli.search.optimizers import create_optimizer
    from autombw_cli.search.optimizers.base import AdapterBase

    class Portfolio(AdapterBase):
        """Takes turns (``turns``: "ab" = one each) between ``gp`` (a) and ``Bayesian`` (b)."""

        name = "portfolio"

        def __init__(self, space: Any, seed: int, turns: str) -> None:
            super().__init__(space, seed)
            self.a = create_optimizer("gp", {}, space, seed)
            bayes = {"n_candidates": 1000, "initialize": {"random": 2}}
            self.b = create_optimizer("Bayesian", bayes, space, seed)
            self.turns, self.asked = turns, 0

        def _backend_ask(self) -> tuple[dict[str, float], Any]:
            who = self.a if self.turns[self.asked % len(self.turns)] == "a" else self.b
            self.asked += 1
            trial = who.ask()
            return self.space.to_params(trial.weights), ("own", who, trial)

        def _backend_ask_fixed(self, weights: Any) -> Any:
            fixed = []
            for member in (self.a, self.b):
                if not member.seen(weights):
                    member.enqueue(weights)
                    fixed.append((member, member.ask()))
            return ("fixed", fixed)

        def _backend_tell(self, token: Any, score: float | None) -> None:
            state = TrialState.COMPLETE if score is not None else TrialState.FAILED
            if token[0] == "fixed":
                for member, trial in token[1]:
                    member.tell(trial, score, state)
                return
            _, who, trial = token
            who.tell(trial, score, state)
            other = self.b if who is self.a else self.a
            if score is not None and not other.seen(trial.weights):
                other.enqueue(trial.weights)
                other.tell(other.ask(), score, TrialState.COMPLETE)

        def _backend_duplicate(self, token: Any, score: float | None) -> None:
            if token[0] == "own":
                _, who, trial = token
                who.tell(trial, None, TrialState.FAILED)

    return Portfolio


def one(args: tuple[str, int, int, str]) -> dict[str, Any]:
    land_name, seed, budget, turns = args
    warnings.filterwarnings("ignore")
    from autombw_cli import optimize
    from autombw_cli.search import campaign
    from autombw_cli.testing.landscapes import LANDSCAPES

    portfolio, real = _portfolio_class(), campaign.create_optimizer

    def create(name: str, settings: Any, space: Any, seed: int) -> Any:
        return (
            portfolio(space, seed, turns) if name == "random" else real(name, settings, space, seed)
        )

    campaign.create_optimizer = create
    land = LANDSCAPES[land_name](seed)
    search = {"passes": [{"optimizer": "random"}], "early_stopping": False}
    result = optimize(land, arch="sd1", search={**search, "max_evaluations": budget}, seed=seed)
    scored = [(e.weights, e.score) for e in result.evaluations if e.ok]
    return {"landscape": land_name, "seed": seed, "curve": incumbent_curve(land, scored)}


def _others(files: list[Path]) -> dict[tuple[str, str, int], list[float]]:
    """Curves of the default (also keyed ``gp100-Bayesian`` in older files) and `Bayesian`,
    one in flight."""
    runs: dict[tuple[str, str, int], list[float]] = {}
    for path in files:
        for row in read_runs(path):
            key = {"gp100-Bayesian": "default"}.get(row.get("key"), row.get("key"))
            if row.get("workers") == 1 and key in ("default", "Bayesian"):
                runs[(key, row["landscape"], row["seed"])] = row["curve"]
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--landscapes", default="noisy,rugged,coupled,flat")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=150)
    parser.add_argument("--turns", default="ab", help="a: gp, b: Bayesian, repeated")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--results",
        nargs="*",
        type=Path,
        default=sorted(RESULTS.glob("optimizers-*h100-16cpu.jsonl")),
        help="benchmarks/optimizers.py runs to compare with (default: the H100 files)",
    )
    args = parser.parse_args(argv)
    tasks = [
        (land, seed, args.budget, args.turns)
        for land in args.landscapes.split(",")
        for seed in range(args.seeds)
    ]
    others = _others(args.results)
    at = [n for n in CHECKPOINTS if n <= args.budget]
    print(f"# portfolio probe, turns {args.turns!r}, one in flight ({sys.platform})")
    print(
        "| landscape | seed | "
        + " | ".join(f"@{n}: portfolio (default, Bayesian)" for n in at)
        + " |"
    )
    print("|---|---|" + "---|" * len(at))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for run in pool.map(one, tasks):
            cells = []
            for n in at:
                mine = run["curve"][n - 1]
                theirs = [
                    others.get((k, run["landscape"], run["seed"]), [float("nan")] * n)[n - 1]
                    for k in ("default", "Bayesian")
                ]
                cells.append(f"{mine:.3f} ({theirs[0]:.3f}, {theirs[1]:.3f})")
            print(f"| `{run['landscape']}` | {run['seed']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
