"""Pruning (``search.pruning``) and top-k validation (``outputs.validate``) on a noisy objective.

Drives the product's `Campaign` (the live run's candidate source: budget, numbering, lockstep,
``judge_partial`` with the real pruning rule of ``search/pruning.py``) with a virtual clock, so
an hour of GPU time takes seconds. The WebUI and the scorer are a noise model of per-image
ImageReward scores (no noisy landscape is on main yet; this is the model, stated here):

    raw_i(w) = GAP * f(w) + c_i + eta_i(w)

- ``f``: the ``coupled`` landscape of ``testing/landscapes.py`` (optimum 1, a random grid point
  near 0); ``GAP`` = 0.6: the best merge's images score 0.6 ImageReward above a random merge's;
- ``c_i`` ~ N(0, 1): image ``i``'s prompt and seed (raw ImageReward is roughly standard normal
  over prompts and seeds, DOMAIN.md §5), the same for every candidate (fixed seeds, as in a run);
- ``eta_i(w)`` ~ N(0, SIGMA): how that seed's image reacts to this merge, fresh per candidate;
  SIGMA 0.35 ("noisy") or 0.15 ("quiet").

Latency: 2.0 s merge + 2.5 s per image, ``IMAGES`` = 8 per evaluation (4 payloads x 2), scoring
overlapped (SD1.5 at 512 px, ~25 steps, on a mid-range GPU). The tally is the arithmetic mean.

The search is the one ``autombw search`` runs with no ``search:`` section (its passes, space and
per-pass optimizer seeds), with no evaluation budget: the hour binds.

Pruning: off vs ``after`` 2 and 4 images at 95%, and a diagnostic row (``ORACLE``) pruned as
``after`` 2 whose optimizer is told each pruned candidate's full score; an hour of virtual GPU
time per run; reported: evaluations per hour, the best found after one hour (its true quality
``GAP * f``, and its bias: observed score minus its expected score on the run's seeds, the
"lucky winner" effect), how many were pruned, and the false-prune rate (pruned, yet its full
score would have beaten the best score at that moment; the benchmark renders the rest anyway
to know).

Validation: after each hour, the top ``TOP`` distinct complete evaluations are rendered again
with ``SEEDS`` fresh seed sets (new ``c`` and ``eta``); reported: how often the validated winner
differs from the raw one, the true quality of each, the gain (validated minus raw, per run) and
in how many runs the validated winner is truly worse.

    python benchmarks/pruning_validation.py [--runs 10] [--jobs N] [--results runs.jsonl]
    python benchmarks/pruning_validation.py --sim 120   # the real run on a simulated WebUI
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one run per core (--jobs): no oversubscription
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from _run_log import append_run, read_runs
from autombw_cli.app.optimize import pass_plans, resolve_search, search_space
from autombw_cli.blocks import Weights
from autombw_cli.search.campaign import Campaign, optimizer_factory
from autombw_cli.search.evaluation import Evaluation
from autombw_cli.search.prompt import PromptSpec
from autombw_cli.search.pruning import PruningRule
from autombw_cli.search.work import Candidate, Outcome, RenderedImage
from autombw_cli.testing.landscapes import coupled

GAP = 0.6
IMAGES = 8
MERGE_S = 2.0
IMAGE_S = 2.5
HOUR_S = 3600.0
TOP = 3
SEEDS = 2
NOISE = {"noisy": 0.35, "quiet": 0.15}  # sigma of eta
ORACLE = "after 2, told full"
PRUNING: dict[str, PruningRule | None] = {
    "off": None,
    "after 2": PruningRule(after=2),
    "after 4": PruningRule(after=4),
    # a diagnostic, not a setting: pruned as "after 2", but the optimizer is told the score the
    # full render would have had (what the estimate's error costs the search)
    ORACLE: PruningRule(after=2),
}
SPECS = tuple(
    PromptSpec(
        payload_name=f"p{i // 2}",
        index=i % 2,
        prompt=f"prompt {i}",
        negative_prompt="",
        seed=i,
        body={},
    )
    for i in range(IMAGES)
)


@dataclass(frozen=True)
class RunResult:
    noise: str
    pruning: str
    seed: int
    cpu_s: float
    evaluations: int
    pruned: int
    false_prunes: int
    best_bias: float  # the best's observed score minus what it scores on average (same seeds)
    best_true: float
    validated_differs: bool
    raw_winner_true: float
    validated_winner_true: float


class NoisyWebUI:
    """The noise model above for one run (seeded)."""

    def __init__(self, seed: int, sigma: float) -> None:
        self.landscape = coupled(seed)
        self.sigma = sigma
        self.rng = np.random.default_rng(seed + 1000)
        self.offsets = self.rng.normal(0.0, 1.0, IMAGES)  # c_i: fixed prompts and seeds

    def true(self, w: Weights) -> float:
        return GAP * self.landscape(w)

    def render(self, w: Weights, offsets: np.ndarray | None = None) -> list[float]:
        c = self.offsets if offsets is None else offsets
        return list(self.true(w) + c + self.rng.normal(0.0, self.sigma, len(c)))


def _outcome(cand: Candidate, scores: list[float], started: float, ended: float) -> Outcome:
    images = tuple(RenderedImage(SPECS[i], None, b"", i) for i in range(len(scores)))  # type: ignore[arg-type]
    return Outcome(cand, "gpu", "", images, tuple(scores), 0.0, 0.0, 0.0, 0.0, started, ended, 1)


def shipped_search():
    """The search ``autombw search`` runs with no ``search:`` section (passes, space)."""
    settings, arch, initial = resolve_search(None, "sd1")
    return settings, search_space(settings, arch, initial)


def describe_passes() -> str:
    settings, _ = shipped_search()
    return " then ".join(
        f"{p.optimizer}" + (f" x{p.max_evaluations}" if p.max_evaluations else "")
        for p in settings.passes
    )


def one_run(task: tuple[str, str, int]) -> RunResult:
    """One hour of virtual GPU time of the shipped search (its passes, space and optimizer
    seeds; no evaluation budget: the hour binds) against the noise model."""
    noise, pruning, seed = task
    rule = PRUNING[pruning]
    started_cpu = time.process_time()
    webui = NoisyWebUI(seed, NOISE[noise])
    settings, space = shipped_search()
    clock = [0.0]
    history: list[Evaluation] = []
    campaign = Campaign(
        passes=pass_plans(settings),
        total_budget=None,
        tally=lambda o: (float(np.mean(o.raw_scores)), {}),
        make_optimizer=optimizer_factory(space, seed),
        record=lambda e, _o: history.append(e),
        emit=lambda _e: None,
        max_time_s=HOUR_S,
        clock=lambda: clock[0],
        lockstep=0,
        pruning=rule,
    )
    false_prunes = 0
    truth: dict[int, float] = {}
    while True:
        cand = campaign.next_candidate()
        if cand is None:
            break
        started = clock[0]
        scores = webui.render(cand.weights)  # all of them, to know what a prune cost
        truth[cand.number] = webui.true(cand.weights)
        clock[0] += MERGE_S
        pruned_score = None
        if rule is not None:
            clock[0] += IMAGE_S * rule.after
            partial = _outcome(cand, scores[: rule.after], started, clock[0])
            pruned_score = campaign.judge_partial(partial)
        if pruned_score is not None:
            best = campaign.best
            if best is not None and float(np.mean(scores)) > best.score:
                false_prunes += 1
            told = float(np.mean(scores)) if pruning == ORACLE else pruned_score
            done = replace_pruned(partial, told)
        else:
            clock[0] += IMAGE_S * (IMAGES - (rule.after if rule is not None else 0))
            done = _outcome(cand, scores, started, clock[0])
        campaign.complete(done)
    complete = [e for e in history if e.ok]
    best = max(complete, key=lambda e: (e.score, -e.number))
    top = sorted(complete, key=lambda e: (-e.score, e.number))[:TOP]
    fresh = [webui.rng.normal(0.0, 1.0, IMAGES) for _ in range(SEEDS)]  # the same for all k
    validated = {
        e.number: statistics.fmean(s for c in fresh for s in webui.render(e.weights, c))
        for e in top
    }
    winner = max(top, key=lambda e: (validated[e.number], e.score))
    return RunResult(
        noise=noise,
        pruning=pruning,
        seed=seed,
        cpu_s=time.process_time() - started_cpu,
        evaluations=len(history),
        pruned=sum(1 for e in history if e.pruned),
        false_prunes=false_prunes,
        best_bias=best.score - truth[best.number] - float(np.mean(webui.offsets)),
        best_true=truth[best.number],
        validated_differs=winner.number != best.number,
        raw_winner_true=truth[best.number],
        validated_winner_true=truth[winner.number],
    )


def replace_pruned(partial: Outcome, estimate: float) -> Outcome:
    from dataclasses import replace

    return replace(partial, pruned_score=estimate)


def _mean_ci(values: list[float]) -> str:
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.3f}"
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
    return f"{m:.3f} ± {half:.3f}"


def sim_search(seconds: float, pruning: str, latency: float) -> dict[str, float]:
    """One timed search on a simulated WebUI over HTTP (the real scheduler, scorer thread and
    journal), 4 payloads of one image each, ``latency`` seconds per image."""
    import asyncio
    import tempfile

    from autombw_cli.app.run import Run
    from autombw_cli.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = []
        for i in range(4):
            body = {"prompt": f"a photo, subject {i}", "negative_prompt": "", "seed": 10 + i,
                    "steps": 20, "width": 64, "height": 64}  # fmt: skip
            (folder / f"p{i}.json").write_text(json.dumps(body))
            names.append(f"p{i}.json")
        (folder / "c.yaml").write_text(
            f"""models: {{a: simA.safetensors, b: simB.safetensors, output: b, arch: sd1}}
instances: {{simulate: 1, latency: {latency}}}
payloads: {{files: [{", ".join(names)}]}}
scorer: {{name: sim, device: cpu, tally: arithmetic}}
search: {{frozen: {{TIME_EMBED: 0.0}}, early_stopping: false, max_evaluations: 100000,
  max_time: {seconds}, seed: 0, pruning: {pruning}}}
outputs: {{run_dir: runs, save_images: none, final_merge: false}}
"""
        )
        run = Run.create(load_config(folder / "c.yaml"))
        result = asyncio.run(run.execute(lambda _e: None, handle_signals=False))
        summary = json.loads((result.run_dir / "summary.json").read_text())
        return {
            "evaluations": summary["evaluations"],
            "pruned": summary["pruned"],
            "best": summary["best"]["score"],
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="seeded runs per setting (default 10)")
    ap.add_argument(
        "--sim",
        type=float,
        default=0.0,
        help="instead: timed searches of this many seconds on the simulated WebUI (HTTP), "
        "pruning off vs after 1 and 2 images",
    )
    ap.add_argument(
        "--noise",
        default=",".join(NOISE),
        help=f"noise levels to run and report, comma-separated (default {','.join(NOISE)})",
    )
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel")
    ap.add_argument(
        "--results",
        type=Path,
        help="JSON lines of finished runs: read first (runs there are not repeated), new ones "
        "appended, so a killed benchmark resumes",
    )
    args = ap.parse_args()
    if args.sim:
        print(f"simulated WebUI, 4 images/evaluation, 0.25 s/image, {args.sim:g} s per search")
        print(f"{'pruning':<30}{'evaluations':>12}{'per min':>9}{'pruned':>8}{'best':>8}")
        for pruning in ("false", "{after: 1}", "{after: 2}"):
            r = sim_search(args.sim, pruning, 0.25)
            print(
                f"{pruning:<30}{r['evaluations']:>12}{60 * r['evaluations'] / args.sim:>9.1f}"
                f"{r['pruned']:>8}{r['best']:>8.4f}",
                flush=True,
            )
        return
    noises = [n.strip() for n in args.noise.split(",") if n.strip()]
    unknown = [n for n in noises if n not in NOISE]
    if unknown:
        ap.error(f"--noise: unknown level {unknown[0]!r}; choose from {', '.join(NOISE)}")
    tasks = [(n, p, seed) for n in noises for p in PRUNING for seed in range(args.runs)]
    done = {(r.noise, r.pruning, r.seed): r for r in _load(args.results)} if args.results else {}
    todo = [t for t in tasks if t not in done]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for future in as_completed([pool.submit(one_run, t) for t in todo]):
            result = future.result()
            done[(result.noise, result.pruning, result.seed)] = result
            if args.results:
                _append(args.results, result)
    print(
        f"search as shipped: {describe_passes()}; {IMAGES} images/evaluation, {MERGE_S}s merge "
        f"+ {IMAGE_S}s/image, 1 h virtual GPU time, {args.runs} runs each; mean ± 95% CI"
    )
    print(
        f"{'noise':<7}{'pruning':<20}{'evals/h':>14}{'pruned %':>10}{'false %':>9}"
        f"{'best bias':>17}{'best true':>17}{'vs off (paired)':>24}"
        f"{'valid. differs':>16}{'raw true':>15}"
        f"{'valid. true':>15}{'gain':>15}{'worse':>7}{'cpu s':>7}"
    )
    for noise in noises:
        for label in PRUNING:
            results = [done[(noise, label, seed)] for seed in range(args.runs)]
            cpu = sum(r.cpu_s for r in results)
            n_pruned = sum(r.pruned for r in results)
            n_eval = sum(r.evaluations for r in results)
            false = sum(r.false_prunes for r in results)
            differs = sum(r.validated_differs for r in results)
            # the same seed is the same noise and optimum: compare each run with its "off" twin
            offs = [done[(noise, "off", seed)] for seed in range(args.runs)]
            diffs = [r.best_true - o.best_true for r, o in zip(results, offs, strict=True)]
            paired = (
                "-"
                if label == "off"
                else f"{_mean_ci(diffs)} +{sum(d > 0 for d in diffs)}/-{sum(d < 0 for d in diffs)}"
            )
            print(
                f"{noise:<7}{label:<20}"
                f"{_mean_ci([float(r.evaluations) for r in results]):>14}"
                f"{100 * n_pruned / n_eval:>10.1f}"
                f"{(100 * false / n_pruned if n_pruned else 0.0):>9.1f}"
                f"{_mean_ci([r.best_bias for r in results]):>17}"
                f"{_mean_ci([r.best_true for r in results]):>17}"
                f"{paired:>24}"
                f"{f'{differs}/{len(results)}':>16}"
                f"{_mean_ci([r.raw_winner_true for r in results]):>15}"
                f"{_mean_ci([r.validated_winner_true for r in results]):>15}"
                f"{_mean_ci([r.validated_winner_true - r.raw_winner_true for r in results]):>15}"
                f"{sum(r.validated_winner_true < r.raw_winner_true for r in results):>7}"
                f"{cpu:>7.1f}",
                flush=True,
            )


def _append(path: Path, result: RunResult) -> None:
    append_run(path, asdict(result))


def _load(path: Path) -> list[RunResult]:
    return [RunResult(**row) for row in read_runs(path)]


if __name__ == "__main__":
    main()
