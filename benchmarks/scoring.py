"""ImageReward throughput: upstream per-image ``score()`` (fp32) vs our batched scorer.

Same random-weight checkpoint with the real architecture (BLIP ViT-L/16 + 12-layer BERT, the
architecture sets the cost), same 512x512 synthetic images, same process. Reports images/s,
peak GPU memory and the largest score difference from upstream on the images both scored.

    python benchmarks/scoring.py                       # CUDA, batch 1, 8, 32, 64
    python benchmarks/scoring.py --compile --json out.json
    python benchmarks/scoring.py --device cpu --scale tiny --images 16 --upstream-images 8

Timing: the whole ``score(images, prompts)`` call, PIL images in, Python floats out
(preprocessing included, as in upstream ``score``), after a warm-up call; median of
``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autombw_cli.scoring.imagereward import ImageRewardScorer
from autombw_cli.scoring.imagereward_model import build_model, load_tokenizer
from autombw_cli.scoring.preprocess import normalize, resize_crop
from autombw_cli.scoring.testing import (
    TINY_VIT,
    synthetic_images,
    upstream_imagereward,
    write_random_imagereward,
)

PROMPTS = [
    "a photo of a cat sitting in a flower field",
    "masterpiece, best quality, portrait of a woman with long red hair, detailed",
    "a house by the river at night, moon, landscape painting",
    "anime style girl standing in the city, blue sky",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scale", choices=["full", "tiny"], default="full")
    ap.add_argument("--images", type=int, default=256, help="images per timed call (ours)")
    ap.add_argument("--upstream-images", type=int, default=64)
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--precision", default="fp16", help="autocast dtype of our runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    ap.add_argument("--compile-budget", type=float, default=240.0, help="seconds for compiling")
    ap.add_argument("--json", type=Path, help="write all numbers here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {card}; torch {torch.__version__}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="autombw-bench-"))
    t0 = time.perf_counter()
    files = write_random_imagereward(tmp, scale=args.scale, seed=0)
    print(f"random {args.scale} checkpoint written in {time.perf_counter() - t0:.1f} s", flush=True)
    images = synthetic_images(args.images, size=512, seed=1)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(images))]
    n_up = min(args.upstream_images, len(images))
    rows: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- upstream baseline
    _peak_reset(device)
    vit = TINY_VIT if args.scale == "tiny" else None
    with upstream_imagereward(files, str(device), vit=vit, prefer_package=False) as model:

        def upstream_run() -> list[float]:
            with torch.no_grad():
                return [
                    model.score(p, im) for p, im in zip(prompts[:n_up], images[:n_up], strict=True)
                ]

        with torch.no_grad():
            for im, p in zip(images[:3], prompts[:3], strict=True):
                model.score(p, im)  # warm-up
        _peak_reset(device)
        secs, reference = _timed(upstream_run, device, 1)
        rows.append(
            {
                "variant": "upstream score() per image, fp32",
                "batch": 1,
                "images_per_s": n_up / secs,
                "peak_gib": _peak_gib(device),
                "max_abs_diff": 0.0,
            }
        )
        print(f"upstream: {n_up / secs:.1f} images/s", flush=True)
        del model
    _peak_reset(device)

    model = build_model(files)
    tokenizer = load_tokenizer(files.tokenizer)

    def ours(label: str, batch: int, **kwargs: Any) -> dict[str, Any]:
        _peak_reset(device)
        scorer = ImageRewardScorer(model, tokenizer, device=device, batch_size=batch, **kwargs)
        t_warm = time.perf_counter()
        scorer.score(images[: max(batch, 2)], prompts[: max(batch, 2)])  # warm-up / compile
        if kwargs.get("compile"):
            scorer.score(images[: max(batch, 2)], prompts[: max(batch, 2)])
        warm = time.perf_counter() - t_warm
        _peak_reset(device)
        secs, scores = _timed(lambda: scorer.score(images, prompts), device, args.repeats)
        diff = max(abs(a - b) for a, b in zip(scores[:n_up], reference, strict=True))
        row = {
            "variant": label,
            "batch": batch,
            "images_per_s": len(images) / secs,
            "peak_gib": _peak_gib(device),
            "max_abs_diff": diff,
            "warmup_s": warm,
        }
        scorer.close()
        rows.append(row)
        print(
            f"{label:<42} batch {batch:>3}: {row['images_per_s']:8.1f} images/s, "
            f"peak {row['peak_gib']:.2f} GiB, max |diff| {diff:.2e} (warm-up {warm:.1f} s)",
            flush=True,
        )
        return row

    batches = [int(b) for b in args.batches.split(",")]
    for b in batches:
        ours(f"ours, {args.precision} autocast, sdpa", b, precision=args.precision)
    ours("ours, fp32, sdpa", 32, precision="fp32")
    ours(
        f"ours, {args.precision} autocast, upstream attention",
        32,
        precision=args.precision,
        attention="upstream",
    )
    if device.type == "cuda":
        ours("ours, bf16 autocast, sdpa", 32, precision="bf16")
        ours(
            f"ours, {args.precision} autocast, 16 preprocessing threads",
            32,
            precision=args.precision,
            workers=16,
        )
        ours(
            f"ours, {args.precision} autocast, 4 preprocessing threads",
            32,
            precision=args.precision,
            workers=4,
        )

    # model-only ceiling: pre-normalised pixels already on the device
    if device.type == "cuda":
        scorer = ImageRewardScorer(
            model, tokenizer, device=device, batch_size=32, precision=args.precision
        )

        px = normalize(
            torch.from_numpy(np.stack([resize_crop(im, 224) for im in images[:32]])).to(device)
        )
        ids, mask = scorer._tokenize(prompts[:32])
        ids, mask = ids.to(device), mask.to(device)

        def model_only() -> None:
            with torch.inference_mode():
                for _ in range(len(images) // 32):
                    scorer._head(scorer._encode(px, ids, mask))

        model_only()
        secs, _ = _timed(model_only, device, args.repeats)
        rows.append(
            {
                "variant": "ours, model only (no preprocessing)",
                "batch": 32,
                "images_per_s": (len(images) // 32) * 32 / secs,
                "peak_gib": 0.0,
                "max_abs_diff": float("nan"),
            }
        )
        print(f"model only, batch 32: {rows[-1]['images_per_s']:.1f} images/s", flush=True)
        scorer.close()

    if args.compile:
        start = time.perf_counter()
        for mode, b in (
            ("reduce-overhead", 32),
            ("reduce-overhead", 64),
            ("reduce-overhead", 8),
            ("default", 32),
        ):
            if time.perf_counter() - start > args.compile_budget:
                print(f"skipping compile {mode} batch {b}: budget spent", flush=True)
                continue
            try:
                ours(
                    f"ours, {args.precision}, torch.compile {mode}",
                    b,
                    precision=args.precision,
                    compile=mode,
                )
            except Exception as exc:  # report and go on: compile support varies
                print(f"compile {mode} batch {b} failed: {type(exc).__name__}: {exc}", flush=True)
            torch._dynamo.reset()

    base = rows[0]["images_per_s"]
    print()
    print(
        f"ImageReward scoring on {card}, {len(images)} images 512x512 "
        f"(upstream: {n_up}), {args.scale} architecture"
    )
    print("| variant | batch | images/s | speed-up | peak GPU GiB | max abs diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['batch']} | {r['images_per_s']:.1f} | "
            f"{r['images_per_s'] / base:.1f}x | {r['peak_gib']:.2f} | {r['max_abs_diff']:.1e} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"device": card, "torch": torch.__version__, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
