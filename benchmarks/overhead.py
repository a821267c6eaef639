"""Overhead: the CLI's own time per evaluation as a share of the evaluation time.

One simulated WebUI (its own process) renders each image in a fixed time (1 s by default).
Baseline, in the same run against the same simulator: a bare loop that only makes the WebUI
calls of an evaluation (bridge merge, txt2img, bridge status) with plain httpx, one after the
other: no decoding, scoring, optimizer, journal or scheduling. The CLI's own time per
evaluation is (CLI time per evaluation - baseline time per evaluation); its share is that over
the CLI's time per evaluation. Goal (issue 4 §7): under 2%.

    .venv/bin/python benchmarks/overhead.py [--latency 1.0] [--evaluations 20] [--size 512]
    python benchmarks/overhead.py --imagereward DIR   # score with ImageReward on CUDA instead

``--imagereward DIR`` scores with the real ImageReward architecture on the GPU: DIR holds
``ImageReward.pt``, ``med_config.json`` and ``vocab.txt`` (random weights are made there with
``autombw_cli.scoring.testing.write_random_imagereward(DIR, scale="full")`` when it is empty;
the speed is the real model's, only the scores are meaningless).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _search_common import bench_payload, run_search, simulator_processes
from autombw_cli.blocks import Arch, layout


async def baseline(url: str, evaluations: int, size: int) -> float:
    """Seconds per evaluation of the bare WebUI calls."""
    slots = layout(Arch.SD1).slots
    rng = random.Random(0)
    body = bench_payload(size)  # the same request the CLI's evaluations make
    async with httpx.AsyncClient(base_url=url, timeout=None) as http:
        t0 = 0.0
        skip = 4  # like the CLI's measurement: leave out start-up costs
        for i in range(evaluations + skip):
            if i == skip:
                t0 = time.monotonic()
            weights = {s: round(rng.random(), 1) for s in slots}
            weights["TIME_EMBED"] = 0.0
            r = await http.post(
                "/autombw/v1/merge",
                json={
                    "model_a": "simA.safetensors",
                    "model_b": "simB.safetensors",
                    "weights": weights,
                },
            )
            r.raise_for_status()
            (await http.post("/sdapi/v1/txt2img", json=body)).raise_for_status()
            (await http.get("/autombw/v1/status")).raise_for_status()
        return (time.monotonic() - t0) / evaluations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=1.0, help="seconds per simulated image")
    ap.add_argument("--evaluations", type=int, default=40)
    ap.add_argument("--sizes", default="64,512", help="image sides in pixels")
    ap.add_argument("--optimizers", default="random,tpe")
    ap.add_argument("--imagereward", type=Path, help="score with ImageReward from DIR")
    ap.add_argument("--scorer-device", default="cuda", help="device for --imagereward")
    args = ap.parse_args()
    scorer = "{name: sim, device: cpu, tally: arithmetic}"
    if args.imagereward is not None:
        scorer = _imagereward_scorer(args.imagereward, args.scorer_device)
    print(
        f"machine: {platform.machine()}, latency {args.latency}s/image, {args.evaluations} "
        "evaluations of 1 image, 1 instance (simulator in its own process), scorer "
        + (f"imagereward ({args.scorer_device})" if args.imagereward else "sim")
    )
    print(
        f"{'size':>5} {'optimizer':>10} {'baseline s/eval':>16} {'CLI s/eval':>11} "
        f"{'CLI own s/eval':>15} {'share':>7}"
    )
    with simulator_processes(1, args.latency) as urls:
        for size in (int(s) for s in args.sizes.split(",")):
            base = asyncio.run(baseline(urls[0], args.evaluations, size))
            for opt in args.optimizers.split(","):
                stats = run_search(
                    urls, args.latency, args.evaluations, size=size, optimizer=opt, scorer=scorer
                )
                per = stats.steady_per_eval(skip=4)
                own = per - base
                print(
                    f"{size:>5} {opt:>10} {base:>16.4f} {per:>11.4f} {own:>15.4f} {own / per:>7.2%}"
                )


def _imagereward_scorer(folder: Path, device: str) -> str:
    files = [folder / n for n in ("ImageReward.pt", "med_config.json", "vocab.txt")]
    if not all(f.exists() for f in files):
        from autombw_cli.scoring.testing import write_random_imagereward

        write_random_imagereward(folder, scale="full")
    ckpt, med, vocab = (f.resolve() for f in files)
    return (
        f"{{name: imagereward, device: {device}, tally: arithmetic, paths: "
        f"{{checkpoint: '{ckpt}', med_config: '{med}', tokenizer: '{vocab}'}}}}"
    )


if __name__ == "__main__":
    main()
