"""Shared helpers of the search benchmarks: a config for N simulated instances, one run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunStats:
    instances: int
    evaluations: int
    wall_s: float  # first evaluation started .. last one finished (the scheduler's run)
    busy: dict[str, float]
    summary: dict
    done_times: tuple[float, ...] = ()  # monotonic time of each completed evaluation

    def steady_per_eval(self, skip: int = 4) -> float:
        """Seconds per evaluation between the ``skip``-th completion and the last one (leaves
        out one-off start-up costs: caches, first renders of the scorer's targets)."""
        t = self.done_times
        if len(t) <= skip + 1:
            return self.wall_s / max(self.evaluations, 1)
        return (t[-1] - t[skip]) / (len(t) - 1 - skip)


@contextlib.contextmanager
def simulator_processes(n: int, latency: float) -> Iterator[list[str]]:
    """``n`` simulated WebUIs, each its own process (like real WebUIs), on free ports."""
    ports = [_free_port() for _ in range(n)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "autombw_cli",
                "webui",
                "simulate",
                "--port",
                str(port),
                "--latency-per-image",
                str(latency),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        deadline = time.monotonic() + 180
        for url in urls:
            while True:
                try:
                    if httpx.get(url + "/internal/ping", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"simulator {url} did not start")
                time.sleep(0.2)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_payload(size: int) -> dict[str, object]:
    """The one txt2img request of every benchmark evaluation (one image)."""
    return {
        "prompt": "a photo of a red apple on a wooden table",
        "negative_prompt": "blurry",
        "seed": 1,
        "steps": 20,
        "width": size,
        "height": size,
        "batch_size": 1,
        "n_iter": 1,
    }


def write_config(
    folder: Path,
    *,
    instances: int | list[str],
    latency: float,
    evaluations: int,
    size: int = 64,
    optimizer: str = "random",
    scorer: str = "{name: sim, device: cpu, tally: arithmetic}",
) -> Path:
    (folder / "bench.json").write_text(json.dumps(bench_payload(size)))
    cfg = f"""
models: {{a: simA.safetensors, b: simB.safetensors, output: bench-merge, arch: sd1}}
instances: {{simulate: {instances}, latency: {latency}}}
payloads: {{files: [bench.json]}}
scorer: {scorer}
search:
  frozen: {{TIME_EMBED: 0.0}}
  passes: [{{optimizer: {optimizer}}}]
  early_stopping: false
  max_evaluations: {evaluations}
  seed: 0
outputs: {{run_dir: runs, save_images: none, final_merge: false}}
"""
    if isinstance(instances, list):
        listed = ", ".join(f"{{url: '{u}', label: sim{i + 1}}}" for i, u in enumerate(instances))
        cfg = cfg.replace(
            f"instances: {{simulate: {instances}, latency: {latency}}}", f"instances: [{listed}]"
        )
    path = folder / "bench.yaml"
    path.write_text(cfg)
    return path


def run_search(
    instances: int | list[str], latency: float, evaluations: int, **kw: object
) -> RunStats:
    from autombw_cli.app.run import Run
    from autombw_cli.config import load_config
    from autombw_cli.search.events import EvaluationDone, null_sink

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            write_config(
                Path(tmp), instances=instances, latency=latency, evaluations=evaluations, **kw
            )
        )
        run = Run.create(cfg)
        times: list[float] = []

        def sink(event: object) -> None:
            if isinstance(event, EvaluationDone):
                times.append(time.monotonic())
            null_sink(event)  # type: ignore[arg-type]

        t0 = time.monotonic()
        result = asyncio.run(run.execute(sink, handle_signals=False))
        summary = json.loads((result.run_dir / "summary.json").read_text())
        start = min(_starts(run), default=t0)
        wall = (max(times) if times else time.monotonic()) - start
        busy = {k: v["busy_fraction"] for k, v in summary["instances"].items()}
        count = len(instances) if isinstance(instances, list) else instances
        return RunStats(count, result.done, wall, busy, summary, tuple(times))


def _starts(run: object) -> list[float]:
    sched = getattr(run, "_scheduler", None)
    if sched is None:
        return []
    return [i.first_start for i in sched.instances if i.first_start is not None]
