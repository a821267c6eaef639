"""Shared helpers of the search benchmarks: a config for N simulated instances, one run."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunStats:
    instances: int
    evaluations: int
    wall_s: float  # first evaluation started .. last one finished (the scheduler's run)
    busy: dict[str, float]
    summary: dict


def write_config(
    folder: Path,
    *,
    instances: int,
    latency: float,
    evaluations: int,
    size: int = 64,
    optimizer: str = "random",
) -> Path:
    payload = {
        "prompt": "a photo of a red apple on a wooden table",
        "negative_prompt": "blurry",
        "seed": 1,
        "steps": 20,
        "width": size,
        "height": size,
        "batch_size": 1,
        "n_iter": 1,
    }
    (folder / "bench.json").write_text(json.dumps(payload))
    cfg = f"""
models: {{a: sim-a.safetensors, b: sim-b.safetensors, output: bench-merge, arch: sd1}}
instances: {{simulate: {instances}, latency: {latency}}}
payloads: {{files: [bench.json]}}
scorer: {{name: sim, device: cpu, tally: arithmetic}}
search:
  frozen: {{TIME_EMBED: 0.0}}
  passes: [{{optimizer: {optimizer}}}]
  early_stopping: false
  max_evaluations: {evaluations}
  seed: 0
outputs: {{run_dir: runs, save_images: none, final_merge: false}}
"""
    path = folder / "bench.yaml"
    path.write_text(cfg)
    return path


def run_search(instances: int, latency: float, evaluations: int, **kw: object) -> RunStats:
    from autombw_cli.config import load_config
    from autombw_cli.search.events import EvaluationDone, null_sink
    from autombw_cli.search.run import Run

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
        return RunStats(instances, result.done, wall, busy, summary)


def _starts(run: object) -> list[float]:
    sched = getattr(run, "_scheduler", None)
    if sched is None:
        return []
    return [i.first_start for i in sched.instances if i.first_start is not None]
