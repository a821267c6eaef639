"""Soak: a long search across 4 simulated WebUIs (each its own process) with random faults.

    .venv/bin/python benchmarks/soak.py                       # 1000 evaluations + a 200 baseline
    .venv/bin/python benchmarks/soak.py --evaluations 200 --baseline 50   # quicker

autombw runs as a real subprocess (``python -m autombw_cli search --plain``). While it runs, a
chaos thread keeps changing each instance's faults at random (out-of-memory answers, dropped
connections, stalls, restarts) and sometimes reloads a WebUI's checkpoint behind autombw's back
(its merge is silently lost) or restarts it. The baseline is the same search without faults.

Reported per run: evaluations recorded / lost (budget minus distinct complete rows; must be 0),
duplicates, failed attempts (retries, from run.log), wall time, and the autombw process's RSS
after its first evaluations, at the end and at peak, next to the size of history.csv, and the
RSS growth per evaluation between those two samples.

    --autombw-src OLD/src      # also soak autombw from another source tree (before/after)
    --tracemalloc              # where the memory grows: allocating files/lines per evaluation

``--tracemalloc`` runs autombw under ``benchmarks/_tracemalloc_run.py`` and prints the growth
between 20% and 90% of the budget per allocating file (slower; RSS then includes tracemalloc).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _search_common import simulator_processes

FAULT_CHOICES = [
    {"oom_every": 5},
    {"drop_every": 7},
    {"stall_every": 9, "stall_seconds": 3},
    {"restart_every": 11},
    {"oom_every": 3, "drop_every": 13},
    {},
]
NO_FAULTS = {"oom_every": 0, "drop_every": 0, "stall_every": 0, "restart_every": 0}


@dataclass
class Result:
    label: str
    budget: int
    recorded: int
    distinct: int
    complete: int
    failed_attempts: int
    chaos_actions: int
    wall_s: float
    rss_start_mb: float
    rss_end_mb: float
    rss_peak_mb: float
    history_kb: float
    exit_code: int
    rows_start: int = 0  # evaluations recorded at the RSS start sample
    rows_end: int = 0  # ... and at the end sample
    trace: str = ""  # --tracemalloc report

    @property
    def lost(self) -> int:
        return self.budget - self.complete

    @property
    def growth_kb_per_eval(self) -> float:
        n = self.rows_end - self.rows_start
        return (self.rss_end_mb - self.rss_start_mb) * 1024 / n if n > 0 else 0.0


def _config(folder: Path, urls: list[str], evaluations: int) -> Path:
    (folder / "p.json").write_text(
        json.dumps(
            {"prompt": "a photo of a boat", "seed": 1, "steps": 4, "width": 64, "height": 64}
        )
    )
    items = ", ".join(
        f"{{url: '{u}', label: sim{i}, timeouts: {{stall: 1}}}}" for i, u in enumerate(urls)
    )
    (folder / "soak.yaml").write_text(
        f"""
models: {{a: simA.safetensors, b: simB.safetensors, output: soak, arch: sd1}}
instances: [{items}]
payloads: {{files: [p.json]}}
scorer: {{name: sim, device: cpu, tally: arithmetic}}
search:
  frozen: {{TIME_EMBED: 0.0}}
  passes: [{{optimizer: random}}]
  early_stopping: false
  max_evaluations: {evaluations}
  seed: 0
  scheduler: {{max_attempts: 5, park_after: 3, probe_backoff_max: 2, all_down_after: 120}}
outputs: {{run_dir: runs, save_images: best, final_merge: false}}
"""
    )
    return folder / "soak.yaml"


def _chaos(urls: list[str], stop: threading.Event, rng: random.Random, counter: list[int]) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.wait(rng.uniform(0.5, 2.0)):
            url = rng.choice(urls)
            action = rng.random()
            try:
                if action < 0.7:
                    plan = {**NO_FAULTS, **rng.choice(FAULT_CHOICES)}
                    client.post(url + "/sim/faults", json=plan)
                elif action < 0.85:
                    client.post(url + "/sim/restart")
                else:  # a user picks a checkpoint in the UI: the bridge's merge is lost
                    client.post(url + "/sdapi/v1/options", json={"sd_model_checkpoint": "simA"})
                counter[0] += 1
            except httpx.HTTPError:
                pass


def _rows(run_dir: Path | None) -> int:
    if run_dir is None or not (run_dir / "history.csv").is_file():
        return 0
    return max(0, (run_dir / "history.csv").read_bytes().count(b"\n") - 1)


def soak(
    label: str,
    urls: list[str],
    evaluations: int,
    faults: bool,
    seed: int,
    *,
    src: Path | None = None,
    trace: bool = False,
) -> Result:
    """One soak run. ``src``: run autombw from this source tree (PYTHONPATH) instead of the
    installed one; ``trace``: under tracemalloc (see the module docstring)."""
    folder = Path(tempfile.mkdtemp(prefix=f"autombw-soak-{label}-"))
    config = _config(folder, urls, evaluations)
    with httpx.Client(timeout=10) as client:
        for u in urls:
            client.post(u + "/sim/faults", json=NO_FAULTS)
            client.post(u + "/sim/restart")
    stop = threading.Event()
    counter = [0]
    chaos = threading.Thread(
        target=_chaos, args=(urls, stop, random.Random(seed), counter), daemon=True
    )
    start = time.monotonic()
    stderr_path = folder / "stderr.txt"  # a file, not a pipe: warnings must never block it
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(":")
    command = [sys.executable, "-m", "autombw_cli"]
    trace_path = folder / "tracemalloc.txt"
    if trace:
        marks = [str(max(10, evaluations // 5)), str(evaluations * 9 // 10)]
        tracer = Path(__file__).resolve().parent / "_tracemalloc_run.py"
        command = [sys.executable, str(tracer), str(trace_path), *marks, "--"]
    with open(stderr_path, "wb") as stderr_file:
        proc = subprocess.Popen(
            [*command, "search", str(config), "--plain"],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
            env=env,
        )
    ps = psutil.Process(proc.pid)
    if faults:
        chaos.start()
    rss_start = rss_end = peak = 0.0
    rows_start = rows_end = 0
    run_dir: Path | None = None
    start_mark = max(20, evaluations // 20)
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss / 2**20
        except psutil.Error:
            break
        peak = max(peak, rss)
        if run_dir is None:
            dirs = list((folder / "runs").glob("*")) if (folder / "runs").is_dir() else []
            run_dir = dirs[0] if dirs else None
        rows = _rows(run_dir)
        if not rss_start and rows >= start_mark:
            rss_start, rows_start = rss, rows
        if rows < evaluations:
            rss_end, rows_end = rss, rows  # the last sample while it was still evaluating
        time.sleep(0.1)
    wall = time.monotonic() - start
    stop.set()
    proc.wait()
    err = stderr_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        print(err[-3000:], file=sys.stderr)
    assert run_dir is not None, err
    with open(run_dir / "history.csv", newline="", encoding="utf-8") as fh:
        rows_ = list(csv.DictReader(fh))
    log = (run_dir / "run.log").read_text(encoding="utf-8")
    weights = {tuple(v for k, v in r.items() if k and k.isupper()) for r in rows_}
    result = Result(
        label=label,
        budget=evaluations,
        recorded=len(rows_),
        distinct=min(len({r["number"] for r in rows_}), len(weights)),
        complete=sum(1 for r in rows_ if r["state"] == "complete" and r["merge_id"]),
        failed_attempts=log.count("evaluation failed"),
        chaos_actions=counter[0],
        wall_s=wall,
        rss_start_mb=rss_start,
        rss_end_mb=rss_end,
        rss_peak_mb=peak,
        history_kb=(run_dir / "history.csv").stat().st_size / 1024,
        exit_code=proc.returncode,
        rows_start=rows_start,
        rows_end=rows_end,
        trace=trace_path.read_text(encoding="utf-8") if trace_path.is_file() else "",
    )
    if proc.returncode == 0:
        shutil.rmtree(folder, ignore_errors=True)  # a failed run's folder stays for a look
    else:
        print(f"{label}: exit {proc.returncode}, run folder kept: {folder}", file=sys.stderr)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--evaluations", type=int, default=1000)
    ap.add_argument("--baseline", type=int, default=200, help="evaluations without faults")
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--latency", type=float, default=0.005)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--autombw-src",
        type=Path,
        help="also run the faults soak with autombw from this source tree (e.g. an older "
        "checkout's src/), first, for a before/after in one run",
    )
    ap.add_argument("--tracemalloc", action="store_true", help="attribute the memory growth")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB")
    results = []
    with simulator_processes(args.instances, args.latency) as urls:
        if args.baseline:
            results.append(soak("baseline", urls, args.baseline, faults=False, seed=args.seed))
        if args.autombw_src is not None:
            results.append(
                soak(
                    "other-src",
                    urls,
                    args.evaluations,
                    faults=True,
                    seed=args.seed,
                    src=args.autombw_src.resolve(),
                    trace=args.tracemalloc,
                )
            )
        results.append(
            soak(
                "faults",
                urls,
                args.evaluations,
                faults=True,
                seed=args.seed,
                trace=args.tracemalloc,
            )
        )
    head = (
        f"{'run':<9} {'budget':>6} {'rows':>5} {'lost':>4} {'dups':>4} {'retries':>7} "
        f"{'chaos':>5} {'wall s':>7} {'s/eval':>6} {'RSS start':>9} {'RSS end':>7} "
        f"{'RSS peak':>8} {'KB/eval':>7} {'history':>8} {'exit':>4}"
    )
    print(head)
    for r in results:
        print(
            f"{r.label:<9} {r.budget:>6} {r.recorded:>5} {r.lost:>4} {r.recorded - r.distinct:>4} "
            f"{r.failed_attempts:>7} {r.chaos_actions:>5} {r.wall_s:>7.1f} "
            f"{r.wall_s / r.budget:>6.3f} {r.rss_start_mb:>7.0f}MB {r.rss_end_mb:>5.0f}MB "
            f"{r.rss_peak_mb:>6.0f}MB {r.growth_kb_per_eval:>7.1f} {r.history_kb:>6.0f}KB "
            f"{r.exit_code:>4}"
        )
    for r in results:
        if r.trace:
            print(f"\n--- tracemalloc, {r.label} ---\n{r.trace}")
    faulty = results[-1]
    ok = all(
        r.lost == 0 and r.recorded == r.distinct and r.exit_code == 0
        for r in results
        if r.label != "baseline"
    )
    print("evaluations lost:", faulty.lost, "OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
