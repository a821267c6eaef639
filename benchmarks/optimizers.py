"""Optimizer quality on synthetic block-weight landscapes, the shipped default as shipped.

Every row runs through `autombw_cli.optimize` (the search core ``autombw search`` runs) with a
``search:`` mapping: the **shipped default** row passes only ``max_evaluations`` (optimizer,
passes and early stopping are whatever ``autombw search`` resolves by default); each single
optimizer row passes ``passes: [{optimizer: X}]`` and ``early_stopping: false``. For each
landscape (``autombw_cli.testing.landscapes``: optimum 1.0, a random point ~0; the seed also
draws the hidden optimum) the table gives the median over seeds of the best score after 50,
100, 150 and 270 evaluations and how many evaluations the run used. On the ``noisy`` landscape
the best is judged by its noise-free value: the true score of the point with the best observed
score so far (what the user would pick). ``--workers N`` keeps N evaluations in flight,
finishing in a seeded random order (N WebUI instances).

A row whose behaviour depends on its budget (``per_budget``; the default when it stops early
or stages by budget) is run once per checkpoint budget; the others run once at the largest
budget and are read at each checkpoint (the same as a run at that budget: the optimizers do not
know the budget).

The baseline is auto-MBW-rt's default: gradient-free-optimizers' BayesianOptimizer on a grid
of 20 intervals with GFO's default settings, whose acquisition candidates are GFO's own one-off
random sub-grid (``candidates: subgrid``), run the way auto-MBW-rt runs it: Hyperactive with
``memory`` on counts ``n_iter`` iterations, and a proposal that repeats a scored point is
answered from memory (no images generated) but uses an iteration. So the baseline's x axis is
iterations. One deviation, to fit the time budget: each ask scores 20,000 random rows of that
sub-grid instead of GFO's default 1,000,000 (``sampling``). It runs with one worker only.

    .venv/bin/python benchmarks/optimizers.py --results runs.jsonl   # the full table
    .venv/bin/python benchmarks/optimizers.py --seeds 2 --budget 100 --landscapes coupled

``--results FILE [FILE ...]`` reads the runs of every file, skips runs already there and
appends every finished run to the first file as a JSON line;
Rows of earlier code (``RECORDED``, e.g. ``default-reask``: the default before a repeating
portfolio member gave its turn away) are read from the files and never run again.
``--shard i/n`` runs every n-th task, so shards on several machines fill one file between them
and ``--report-only`` prints the tables from the merged file.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small model fits: one thread is fastest
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _run_log import append_run, read_runs


@dataclass(frozen=True)
class Candidate:
    key: str  # what --optimizers selects
    label: str
    search: dict[str, Any] = field(default_factory=dict)  # the search: section, less the budget
    max_seeds: int | None = None  # fewer seeds for a slow one (said in the table)
    per_budget: bool = False  # run once per checkpoint budget (its behaviour depends on it)
    max_budget: int | None = None  # a slow one runs only this far (said in the table: "-")
    sequential_only: bool = False  # only with one evaluation in flight
    recorded_only: bool = False  # runs of an earlier version's code: read, never run again


def single(key: str, label: str, optimizer: str, settings: dict[str, Any] | None = None,
           **kw: Any) -> Candidate:  # fmt: skip
    return Candidate(
        key,
        label,
        {"passes": [{"optimizer": optimizer, "settings": settings or {}}], "early_stopping": False},
        **kw,
    )


def staged(key: str, *stages: tuple[str, int | None, int | None], **kw: Any) -> Candidate:
    """Passes of (optimizer, max evaluations, early-stopping patience that ends the pass:
    a switch on evidence); each pass warm-starts from the earlier ones. The last pass runs to
    the budget."""
    passes = []
    for i, (name, n, patience) in enumerate(stages):
        p: dict[str, Any] = {"optimizer": name}
        if n is not None:
            p["max_evaluations"] = n
        if i < len(stages) - 1 and patience is not None:
            p["early_stopping"] = {"patience": patience}
        passes.append(p)
    label = ", then ".join(
        f"{name}" + (f" ≤{n}" if n else "") + (f" (switch after {pt} stale)" if pt else "")
        for name, n, pt in stages
    )
    return Candidate(key, label, {"passes": passes, "early_stopping": False}, **kw)


def passes_of(key: str, label: str, *passes: dict[str, Any]) -> Candidate:
    """A candidate given as its ``search.passes`` (early stopping off but a pass's own)."""
    return Candidate(key, label, {"passes": list(passes), "early_stopping": False})


# GFO Bayesian as the benchmark runs it: 1000 candidates per ask to fit the time
BAYESIAN_1000: dict[str, Any] = {"optimizer": "Bayesian", "settings": {"n_candidates": 1000}}
DEFAULT = Candidate("default", "**shipped default** (`autombw search` as resolved)", {})
SINGLES = (
    single("cmaes", "cmaes (Optuna)", "cmaes"),
    single("tpe", "tpe (Optuna, multivariate)", "tpe"),
    single("gp", "gp (Optuna)", "gp", max_budget=100),
    single("Bayesian", "Bayesian (GFO, resample)", "Bayesian", {"n_candidates": 1000}),
    single("HillClimbing", "HillClimbing (GFO)", "HillClimbing"),
    single("EvolutionStrategy", "EvolutionStrategy (GFO)", "EvolutionStrategy"),
    single("random", "random (Optuna)", "random"),
)
BASELINE = Candidate(
    "baseline",
    "auto-MBW-rt default: GFO Bayesian, 20 intervals (x: iterations)",
    {},
    max_seeds=4,
    sequential_only=True,
)
# other defaults worth measuring (--optimizers by key); the shipped one is DEFAULT
HC_TO_END = ("HillClimbing", None, None)
VARIANTS = (
    Candidate(
        "cmaes-es27",
        "cmaes, early stopping patience 27 (the old default)",
        {"passes": [{"optimizer": "cmaes"}], "early_stopping": {"patience": 27}},
    ),
    staged("gp50-cmaes", ("gp", 50, None), ("cmaes", None, None)),
    staged("gp30-cmaes", ("gp", 30, None), ("cmaes", None, None)),
    staged("gp50-tpe", ("gp", 50, None), ("tpe", None, None)),
    staged("gp50-HC", ("gp", 50, None), HC_TO_END),
    staged("gp30-HC", ("gp", 30, None), HC_TO_END),  # (local runs only: slow)
    passes_of(
        "cmaes-sw27-Bayesian",
        "cmaes ≤150 (switch after 27 stale), then Bayesian (GFO, resample, 1000 candidates)",
        {"optimizer": "cmaes", "max_evaluations": 150, "early_stopping": {"patience": 27}},
        BAYESIAN_1000,
    ),
    passes_of(
        "gp100-Bayesian",
        "gp ≤100, then Bayesian (GFO, resample, 1000 candidates)",
        {"optimizer": "gp", "max_evaluations": 100},
        BAYESIAN_1000,
    ),
    passes_of(
        "gp50-Bayesian",
        "gp ≤50, then Bayesian (GFO, resample, 1000 candidates)",
        {"optimizer": "gp", "max_evaluations": 50},
        BAYESIAN_1000,
    ),
    passes_of(
        "gp100-Bayesian-local90",
        "gp ≤100, then Bayesian (1000 candidates, 90% of them mutations of the best)",
        {"optimizer": "gp", "max_evaluations": 100},
        {"optimizer": "Bayesian", "settings": {"n_candidates": 1000, "local_fraction": 0.9}},
    ),
    single("gp270", "gp (Optuna) to the budget", "gp"),
    passes_of(
        "gp100-Bayesian-sw27-HC",
        "gp ≤100, then Bayesian (switch after 27 stale), then HillClimbing",
        {"optimizer": "gp", "max_evaluations": 100},
        {**BAYESIAN_1000, "early_stopping": {"patience": 27}},
        {"optimizer": "HillClimbing"},
    ),
    single("portfolio", "portfolio: gp and Bayesian (1000 candidates) take turns", "portfolio"),
    passes_of(
        "gp100-portfolio",
        "gp ≤100, then gp and Bayesian (1000 candidates) take turns",
        {"optimizer": "gp", "max_evaluations": 100},
        {"optimizer": "portfolio"},
    ),
    staged("cmaes100-HC", ("cmaes", 100, None), HC_TO_END),
    # a wider start for the gp pass (the @100 columns on rugged and noisy): the first two run
    # to 100 only; gp100s25-portfolio is the default with that start, to the budget
    single(
        "gp-s25",
        "gp, 25 random trials before the model",
        "gp",
        {"n_startup_trials": 25},
        max_budget=100,
    ),
    staged("qmc25-gp", ("qmc", 25, None), ("gp", None, None), max_budget=100),
    passes_of(
        "gp100s25-portfolio",
        "gp ≤100 (25 random trials before the model), then gp and Bayesian take turns",
        {"optimizer": "gp", "max_evaluations": 100, "settings": {"n_startup_trials": 25}},
        {"optimizer": "portfolio"},
    ),
    staged("cmaes-sw27-HC", ("cmaes", 150, 27), HC_TO_END),  # the default until 2026-12-07
    staged("gp30-cmaes-HC", ("gp", 30, None), ("cmaes", 70, None), HC_TO_END),
    staged("gp30-cmaes-sw27-HC", ("gp", 30, None), ("cmaes", 120, 27), HC_TO_END),
)
# Earlier versions of the code, kept for comparison: their runs are in the result files under
# these keys, and the code that made them is gone, so they are never run again.
RECORDED = (
    Candidate(
        "default-reask",
        "the default until 5136e6b (a portfolio member that repeated a known point was asked "
        "again, up to 25 times)",
        DEFAULT.search,
        recorded_only=True,
    ),
)
CANDIDATES = (DEFAULT, *SINGLES, *VARIANTS, BASELINE, *RECORDED)
CHECKPOINTS = (50, 100, 150, 270)


@dataclass(frozen=True)
class RunResult:
    key: str
    landscape: str
    seed: int
    workers: int
    budget: int
    curve: list[float]  # best so far (noise-free value) after each evaluation / iteration
    evaluations: int  # distinct points evaluated
    stop: str  # why the run ended
    elapsed_s: float


def run_one(args: tuple[Candidate, str, int, int, int]) -> RunResult:
    """One search of ``budget`` evaluations (the baseline: iterations)."""
    cand, landscape_name, seed, budget, workers = args
    warnings.filterwarnings("ignore")
    from autombw_cli import optimize
    from autombw_cli.testing.landscapes import LANDSCAPES

    land = LANDSCAPES[landscape_name](seed)
    started = time.perf_counter()
    if cand.key == BASELINE.key:
        curve, evaluations = auto_mbw_rt_iterations(land, seed, budget)
        stop = "iterations"
    else:
        result = optimize(
            land, arch="sd1", search={**cand.search, "max_evaluations": budget}, seed=seed,
            workers=workers,
        )  # fmt: skip
        curve = incumbent_curve(land, [(e.weights, e.score) for e in result.evaluations if e.ok])
        evaluations = len(curve)
        stop = "; ".join(result.stop_reasons)
    elapsed = time.perf_counter() - started
    return RunResult(
        cand.key, landscape_name, seed, workers, budget, curve, evaluations, stop, elapsed
    )


def incumbent_curve(land: Any, scored: list[tuple[Any, float]]) -> list[float]:
    """After each evaluation, the noise-free value of the best-scoring point so far."""
    curve: list[float] = []
    best_seen, best_value = float("-inf"), float("-inf")
    for weights, score in scored:
        if score > best_seen:
            best_seen, best_value = score, land.value(weights)
        curve.append(best_value)
    return curve


def auto_mbw_rt_iterations(land: Any, seed: int, budget: int) -> tuple[list[float], int]:
    """auto-MBW-rt's loop (Hyperactive, ``memory`` on): ``budget`` iterations, where a repeat
    of a scored point is answered from memory but still uses an iteration. Drives the GFO
    adapter's backend hooks directly: what its own ``ask`` does, minus our re-asking on
    repeats. Returns the incumbent's value per iteration and the number of distinct points."""
    from autombw_cli.search.optimizers import TrialOrigin, create_optimizer
    from autombw_cli.search.space import SearchSpace

    space = SearchSpace.build("sd1", intervals=20)
    settings = {"candidates": "subgrid", "sampling": {"random": 20000}}
    opt = create_optimizer("Bayesian", settings, space, seed)
    memory: dict[bytes, float] = {}
    scored: list[tuple[Any, float]] = []
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
        scored.append((weights, memory[key]))
    return incumbent_curve(land, scored), len(memory)


def tasks_for(
    cands: list[Candidate], landscapes: list[str], seeds: int, budget: int, workers: list[int]
) -> list[tuple[Candidate, str, int, int, int]]:
    tasks = []
    for w in workers:
        for land in landscapes:
            for cand in cands:
                if cand.sequential_only and w != 1:
                    continue  # auto-MBW-rt is sequential; gp is too slow for more
                if cand.recorded_only:
                    continue  # its code is gone: its rows are only read
                top = min(budget, cand.max_budget or budget)
                budgets = [c for c in CHECKPOINTS if c <= top] if cand.per_budget else [top]
                for seed in range(min(seeds, cand.max_seeds or seeds)):
                    tasks.extend((cand, land, seed, b, w) for b in budgets)
    return tasks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seeds", type=int, default=10, help="seeds 0..N-1, run and reported (default 10)"
    )
    parser.add_argument("--budget", type=int, default=270)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--landscapes", default="coupled,skip-pairs,sim,rugged,noisy,flat")
    parser.add_argument(
        "--results",
        type=Path,
        nargs="+",
        help="JSON lines of finished runs: all are read, new runs are appended to the first",
    )
    parser.add_argument("--report-only", action="store_true", help="print the table, run nothing")
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th task from the i-th")
    parser.add_argument(
        "--workers",
        default="1",
        help="evaluations in flight, comma-separated settings (e.g. 1,4): finishing in random "
        "order, like N WebUI instances (not the baseline: auto-MBW-rt is sequential)",
    )
    parser.add_argument(
        "--optimizers",
        help="only these keys, comma-separated: "
        + ", ".join(c.key for c in CANDIDATES)
        + " (default: all but the variants)",
    )
    args = parser.parse_args(argv)
    landscapes = args.landscapes.split(",")
    workers = [int(w) for w in args.workers.split(",")]
    if args.optimizers:
        wanted = args.optimizers.split(",")
        by_key = {c.key: c for c in CANDIDATES}
        unknown = [k for k in wanted if k not in by_key]
        if unknown:
            parser.error(f"unknown keys {unknown}; known: {', '.join(by_key)}")
        cands = [by_key[k] for k in wanted]
    else:
        cands = [c for c in CANDIDATES if c not in VARIANTS and not c.recorded_only]
    tasks = tasks_for(cands, landscapes, args.seeds, args.budget, workers)
    results = with_derived_runs([r for path in args.results or [] for r in _load(path)])
    done = {(r.key, r.landscape, r.seed, r.budget, r.workers) for r in results}
    tasks = [t for t in tasks if (t[0].key, t[1], t[2], t[3], t[4]) not in done]
    index, count = (int(x) for x in args.shard.split("/"))
    tasks = tasks[index::count]
    tasks.sort(key=lambda t: -_cost(t))  # slow first: the pool ends evenly
    started = time.perf_counter()
    if tasks and not args.report_only:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_one, t) for t in tasks]
            for i, future in enumerate(as_completed(futures), start=1):
                res = future.result()  # written as it finishes: a cut-short run keeps it
                results.append(res)
                if args.results:
                    _append(args.results[0], res)
                print(
                    f"  {i}/{len(tasks)} {res.key} / {res.landscape} / seed {res.seed} / "
                    f"{res.workers} in flight / budget {res.budget}: {res.elapsed_s:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    wall = time.perf_counter() - started
    print(
        f"# optimizer quality: median over seeds, up to {args.budget} evaluations, wall {wall:.0f}"
        f" s on {args.jobs} processes ({sys.platform}, {os.cpu_count()} cpus)"
    )
    for w in workers:
        for land in landscapes:
            rows = [
                r for r in results if r.landscape == land and r.workers == w and r.seed < args.seeds
            ]
            _report(land, w, rows, cands, args.budget)
    return 0


def _cost(task: tuple[Candidate, str, int, int, int]) -> float:
    cand, land, _, budget, _ = task
    slow = {
        "baseline": 40,
        "Bayesian": 25,
        "gp": 60,
        "gp100-Bayesian": 80,
        "gp100-Bayesian-sw27-HC": 80,
        "cmaes-sw27-Bayesian": 20,
        "tpe": 3,
    }.get(cand.key, 1)
    slow += 8 if cand.key.startswith("gp") else 0
    return slow * budget * (3 if land == "sim" else 1)


def value_at(cand: Candidate, runs: list[RunResult], seed: int, n: int) -> tuple[float, int] | None:
    """(best after ``n``, evaluations used) of one seed: from the run at budget ``n`` for a
    per-budget candidate, else from the longest run's curve."""
    mine = [r for r in runs if r.seed == seed]
    if cand.per_budget:
        mine = [r for r in mine if r.budget == n]
    if not mine:
        return None
    run = max(mine, key=lambda r: r.budget)
    if run.budget < n:
        return None
    curve = run.curve
    return (curve[min(n, len(curve)) - 1], min(n, len(curve)))


def _report(
    land: str, workers: int, results: list[RunResult], cands: list[Candidate], budget: int
) -> None:
    checkpoints = [c for c in CHECKPOINTS if c <= budget] or [budget]
    medians: dict[str, list[float | None]] = {}
    by_seed: dict[str, list[dict[int, float]]] = {}  # key -> per checkpoint: seed -> best
    used: dict[str, str] = {}
    seeds: dict[str, int] = {}
    secs: dict[str, float] = {}
    for cand in cands:
        runs = [r for r in results if r.key == cand.key]
        if not runs:
            continue
        row: list[float | None] = []
        by_seed[cand.key] = []
        for n in checkpoints:
            got = {s: value_at(cand, runs, s, n) for s in sorted({r.seed for r in runs})}
            vals = [g for g in got.values() if g is not None]
            by_seed[cand.key].append({s: g[0] for s, g in got.items() if g is not None})
            row.append(statistics.median(v for v, _ in vals) if vals else None)
            if n == checkpoints[-1] and vals:
                used[cand.key] = f"{statistics.median(u for _, u in vals):.0f}"
        medians[cand.key] = row
        seeds[cand.key] = len({r.seed for r in runs})
        top = max(r.budget for r in runs)
        timed = [r.elapsed_s for r in runs if r.budget == top and not math.isnan(r.elapsed_s)]
        secs[cand.key] = statistics.median(timed) if timed else math.nan
    if not medians:
        return
    print(f"\n### landscape {land}, {workers} in flight (optimum 1.0)\n")
    head = ["optimizer", "seeds", *(f"best@{c}" for c in checkpoints), "evals used", "s/run"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    singles = [c.key for c in SINGLES if c.key in medians]
    for cand in cands:
        if cand.key not in medians:
            continue
        cells = []
        for i, v in enumerate(medians[cand.key]):
            top = max((medians[k][i] for k in medians if medians[k][i] is not None), default=None)
            text = "-" if v is None else f"{v:.3f}"
            cells.append(f"**{text}**" if v is not None and v == top else text)
        took = "-" if math.isnan(secs[cand.key]) else f"{secs[cand.key]:.1f}"
        print(
            f"| {cand.label} | {seeds[cand.key]} | {' | '.join(cells)} | "
            f"{used.get(cand.key, '-')} | {took} |"
        )
    if DEFAULT.key in medians and singles:
        gaps = []
        for i, n in enumerate(checkpoints):
            ours = by_seed[DEFAULT.key][i]
            # each rival on the seeds both have run, so a rival with more seeds (or the
            # default with more) does not move the comparison by its extra seeds
            rivals = []
            for k in singles:
                common = sorted(set(ours) & set(by_seed[k][i]))
                if common:
                    theirs = statistics.median(by_seed[k][i][s] for s in common)
                    mine = statistics.median(ours[s] for s in common)
                    rivals.append((theirs - mine, k, mine, theirs, common))
            if not rivals:
                continue
            _, who, mine, best, common = max(rivals)
            theirs_by_seed = by_seed[who][i]
            ahead = sum(ours[s] > theirs_by_seed[s] for s in common)
            behind = sum(ours[s] < theirs_by_seed[s] for s in common)
            gaps.append(
                f"@{n}: {mine - best:+.3f} vs {who} (ahead on {ahead}, behind on {behind} "
                f"of {len(common)} seeds, sign test p={sign_test_p(ahead, behind):.2f})"
            )
        print(f"\ndefault minus the best single optimizer: {', '.join(gaps)}")


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven between ``wins``
    and ``losses`` (ties left out) if either side were equally likely to be ahead on a seed."""
    n = wins + losses
    if n == 0:
        return 1.0
    extreme = min(wins, losses)
    tail = sum(math.comb(n, k) for k in range(extreme + 1)) / 2**n
    return min(1.0, 2 * tail)


def with_derived_runs(results: list[RunResult]) -> list[RunResult]:
    """The runs plus those that other runs already are (a derived run never replaces a run
    made as itself):

    - a run of a candidate whose search resolves to exactly the shipped default's is a
      ``default`` run: the same search, run before it became the default (a run keyed
      ``default`` is only ever one made while the default was what it is now; files of
      earlier defaults name those runs by their passes, or by a ``RECORDED`` key where the
      code changed under the same search);
    - with one evaluation in flight, the first ``m`` evaluations of a run whose first pass is a
      single optimizer's with at least ``m`` evaluations are that optimizer's run to ``m``
      (its ``max_budget``): the pass knows nothing of what follows it. Checked: the 18 ``gp``
      runs to 100 in the H100 file equal the first 100 of ``gp100-Bayesian``, curve for curve.
      Such a run has no time of its own (``elapsed_s`` NaN)."""
    from autombw_cli.app.optimize import resolve_search

    def resolved(search: dict[str, Any]) -> Any:
        return resolve_search({**search, "max_evaluations": 270}, "sd1")[0]

    shipped = resolved(DEFAULT.search).model_dump()
    settings = {c.key: resolved(c.search) for c in (DEFAULT, *SINGLES, *VARIANTS, *RECORDED)}
    # a recorded candidate ran other code with the same search: not the default's runs (its
    # first pass, where that code was the same, still gives prefixes below)
    as_default = {k for k, s in settings.items() if s.model_dump() == shipped}
    as_default -= {DEFAULT.key, *(c.key for c in RECORDED)}
    prefix_of: dict[str, tuple[str, int]] = {}  # candidate key -> (single key, its max budget)
    for single_cand in SINGLES:
        if single_cand.max_budget is None:
            continue
        mine = settings[single_cand.key].passes[0]
        for key, resolved_search in settings.items():
            first = resolved_search.passes[0]
            if (
                key != single_cand.key
                and (first.optimizer, first.settings) == (mine.optimizer, mine.settings)
                and (first.max_evaluations or 0) >= single_cand.max_budget
            ):
                prefix_of[key] = (single_cand.key, single_cand.max_budget)
    have = {(r.key, r.landscape, r.seed, r.budget, r.workers) for r in results}
    extra: dict[tuple, RunResult] = {}
    for r in results:
        derived = []
        if r.key in as_default:
            derived.append(RunResult(DEFAULT.key, *astuple(r)[1:]))
        if r.key in prefix_of and r.workers == 1 and len(r.curve) >= prefix_of[r.key][1]:
            key, m = prefix_of[r.key]
            derived.append(
                RunResult(key, r.landscape, r.seed, 1, m, r.curve[:m], m, "", float("nan"))
            )
        for d in derived:
            where = (d.key, d.landscape, d.seed, d.budget, d.workers)
            if where not in have and where not in extra:
                extra[where] = d
    return results + list(extra.values())


def _append(path: Path, res: RunResult) -> None:
    append_run(path, asdict(res))


def _load(path: Path) -> list[RunResult]:
    # this version's rows have a key (earlier files had labels)
    return [RunResult(**row) for row in read_runs(path) if "key" in row]


if __name__ == "__main__":
    raise SystemExit(main())
