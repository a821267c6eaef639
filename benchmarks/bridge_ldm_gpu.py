"""Benchmark: the bridge's merge on AUTOMATIC1111's real SD1.5 classes, live on the GPU.

The live model is SD1.5 built as A1111 1.10.1 builds it (``ldm``'s ``UNetModel``, the VAE's
``Encoder``/``Decoder``, transformers' ``CLIPTextModel``, text encoder hijacked; see
``tests/ldm_sd15.py``), loaded from random-weight checkpoints with a real SD1 checkpoint's keys
and shapes, in fp16 (A1111's default ``model.half()``) and fp32 (``--no-half``); the files are
in the same dtype. Per dtype and ``cache_device`` (cuda, cpu, auto), timed after a CUDA sync
(`bridge_merge.timed`): the first merge of the pair (fills the caches), a one-block change and
an all-blocks change (medians), a restore to A (median), the cache size, and the peak GPU memory
above the live model. Baseline in the same run, what a user without the bridge pays per
candidate: ``autombw merge`` (`merge_checkpoints`, CPU, to a file) plus loading the merged file
into the live model (``load_file`` + ``load_state_dict``, the file page-cached), whole
checkpoint and UNet only. For scale: one UNet call at 512x512 (1x4x64x64, batch 1).

    PYTHONPATH=src:tests AUTOMBW_LDM_PATH=.ldm_gpu python3 benchmarks/bridge_ldm_gpu.py \\
        [--dtype fp16 fp32] [--repeat 5] [--json out.json]

Needs CUDA, the ``ldm`` package of Stability-AI/stablediffusion cf1d67a6 (``$AUTOMBW_LDM_PATH``),
einops, omegaconf, transformers 4.x and ``sd1-ldm-keys.json`` (see ``tests/ldm_sd15.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import ldm_sd15
from autombw_cli.blocks import UNET_PREFIX, Arch, Weights, layout
from autombw_cli.merging.offline import merge_checkpoints
from autombw_cli.recipe import Recipe
from autombw_cli.sim.checkpoints import write_checkpoint
from autombw_cli.webui.bridge.core import BridgeCore
from autombw_cli.webui.bridge.names import CheckpointRef
from bridge_merge import BenchHost, timed, weights_series

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
GIB = 2**30


def reset_peak() -> int:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def bench_bridge(host: BenchHost, cache: str, repeat: int) -> dict:
    base = reset_peak()
    core = BridgeCore(host, version="bench")
    series = weights_series(Arch.SD1, repeat + 1)
    used: list[str] = []

    def merge(w: dict[str, float]) -> None:
        used.append(core.merge("A", "B", w, cache_device=cache).cache_device)

    first = timed(lambda: merge(series[0]), "cuda")
    slot = layout(Arch.SD1).slots[4]
    current, one = dict(series[0]), []
    for i in range(repeat):
        current[slot] = 0.05 + 0.9 * ((i + 1) % 2)
        w = dict(current)
        one.append(timed(lambda w=w: merge(w), "cuda"))
    every, restore = [], []
    for i in range(repeat):
        w = series[i + 1]
        every.append(timed(lambda w=w: merge(w), "cuda"))
        restore.append(timed(core.restore, "cuda"))
    cache_gib = core.cache_bytes() / GIB
    peak = (torch.cuda.max_memory_allocated() - base) / GIB
    core.restore(free_caches=True)
    return {
        "approach": f"bridge cache={cache}",
        "cache_used": used[-1],
        "first": first,
        "one": statistics.median(one),
        "all": statistics.median(every),
        "restore": statistics.median(restore),
        "cache_gib": cache_gib,
        "peak_extra_gib": peak,
    }


def bench_load_merged(live: torch.nn.Module, merged: Path, repeat: int, *, unet_only: bool) -> dict:
    """Without the bridge: load the offline-merged file into the live model (A1111's reload
    reads the file to the CPU and ``load_state_dict``s it)."""
    to_live = {ldm_sd15.checkpoint_key(k): k for k in live.state_dict()}
    base = reset_peak()

    def load() -> None:
        sd = load_file(str(merged))
        if unet_only:
            sd = {k: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
        result = live.load_state_dict({to_live[k]: v for k, v in sd.items()}, strict=False)
        assert not result.unexpected_keys

    times = [timed(load, "cuda") for _ in range(repeat)]
    return {
        "approach": "load merged file, " + ("UNet keys" if unet_only else "whole checkpoint"),
        "first": times[0],
        "all": statistics.median(times),
        "peak_extra_gib": (torch.cuda.max_memory_allocated() - base) / GIB,
    }


def unet_step_ms(live: torch.nn.Module, dtype: torch.dtype, repeat: int = 10) -> float:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, 4, 64, 64, generator=g, device="cuda")
    t = torch.tensor([500], device="cuda")
    ctx = torch.randn(1, 77, 768, generator=g, device="cuda")
    unet = live.model.diffusion_model
    for _ in range(3):
        ldm_sd15.unet_forward(unet, x, t, ctx)
    times = [timed(lambda: ldm_sd15.unet_forward(unet, x, t, ctx), "cuda") for _ in range(repeat)]
    return statistics.median(times) * 1000


def run_dtype(name: str, repeat: int, folder: Path, caches: list[str]) -> dict:
    dtype = DTYPES[name]
    a_sd = ldm_sd15.random_sd15(1, dtype, "cuda")
    b_sd = ldm_sd15.random_sd15(2, dtype, "cuda")
    a_path, b_path = folder / f"{name}-A.safetensors", folder / f"{name}-B.safetensors"
    write_checkpoint(a_path, a_sd)
    write_checkpoint(b_path, b_sd)
    del b_sd
    gib = sum(t.numel() * t.element_size() for t in a_sd.values()) / GIB
    unet_params = sum(t.numel() for k, t in a_sd.items() if k.startswith(UNET_PREFIX))

    weights = Weights(Arch.SD1, weights_series(Arch.SD1, 1)[0])
    recipe = Recipe(a_path.name, b_path.name, "merged", weights)
    merged = folder / f"{name}-merged.safetensors"
    t0 = time.perf_counter()
    merge_checkpoints(a_path, b_path, recipe, merged, force=True)
    offline_s = time.perf_counter() - t0

    torch.cuda.reset_peak_memory_stats()
    live = ldm_sd15.load_sd15(a_sd, "cuda", dtype)
    del a_sd
    gc.collect()
    torch.cuda.empty_cache()
    live_gib = torch.cuda.memory_allocated() / GIB
    host = BenchHost(folder, CheckpointRef("A", "A", a_path), CheckpointRef("B", "B", b_path), live)
    rows = [bench_bridge(host, cache, repeat) for cache in caches]
    rows.append(bench_load_merged(live, merged, repeat, unet_only=False))
    rows.append(bench_load_merged(live, merged, repeat, unet_only=True))
    step_ms = unet_step_ms(live, dtype)
    del live, host
    reset_peak()
    return {
        "dtype": name,
        "checkpoint_gib": gib,
        "unet_params": unet_params,
        "live_model_gib": live_gib,
        "offline_merge_s": offline_s,
        "unet_step_512_ms": step_ms,
        "rows": rows,
    }


def print_result(r: dict) -> None:
    print(
        f"\nSD1.5 {r['dtype']}: checkpoint {r['checkpoint_gib']:.2f} GiB, UNet "
        f"{r['unet_params'] / 1e6:.0f}M params, live model {r['live_model_gib']:.2f} GiB on the "
        f"GPU; offline merge (autombw merge, CPU) {r['offline_merge_s']:.2f} s; one UNet call "
        f"at 512 px {r['unet_step_512_ms']:.1f} ms"
    )
    print(
        f"{'approach':34} {'cache':>7} {'first':>8} {'1 block':>8} {'all':>8} {'restore':>8} "
        f"{'cache GiB':>9} {'peak+GiB':>8}"
    )
    for row in r["rows"]:

        def f(key: str, row: dict = row) -> str:
            return f"{row[key]:.3f}" if key in row else "-"

        print(
            f"{row['approach']:34} {row.get('cache_used', '-'):>7} {f('first'):>8} "
            f"{f('one'):>8} {f('all'):>8} {f('restore'):>8} {f('cache_gib'):>9} "
            f"{f('peak_extra_gib'):>8}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", nargs="+", default=["fp16", "fp32"], choices=list(DTYPES))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cache", nargs="+", default=["cuda", "cpu", "auto"])
    ap.add_argument("--dir", type=Path, default=None, help="where the checkpoints are written")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    ldm_sd15.import_ldm()
    card = torch.cuda.get_device_name(0)
    print(f"device: {card}; torch {torch.__version__}; repeat={args.repeat}")
    results = []
    with contextlib.ExitStack() as stack:
        folder = args.dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.dtype:
            r = run_dtype(name, args.repeat, folder, args.cache)
            print_result(r)
            results.append(r)
    if args.json:
        args.json.write_text(json.dumps({"device": card, "results": results}, indent=2))


if __name__ == "__main__":
    main()
