"""Benchmark: the bridge's in-memory block merge vs the two approaches it replaces.

SD1.5- and SDXL-sized random UNets (every key and shape of ``sim.checkpoints`` at full scale,
UNet only, fp16) are written to two safetensors files; a live UNet module holding A sits on the
GPU, as in a WebUI. Timed (median of --repeat, after a CUDA sync):

- ``bridge cache=cuda`` / ``bridge cache=cpu``: `BridgeCore.merge` (the code the extension
  runs): the first merge of a pair (fills the caches: A's originals from the live module, B
  read from disk), a one-block change, and an all-blocks change.
- ``reread (bayesian-merger)``: every merge re-reads both files from disk (``load_file``),
  lerps every UNet key on the GPU and ``load_state_dict``s the result (sd-webui-bayesian-merger's
  ``/bbwm/merge-models`` approach; lerp on the GPU is generous to it).
- ``cpu blocks (runtime-block-merge)``: per-block CPU copies of A and B, lerp of the changed
  blocks on the CPU, ``load_state_dict`` into the GPU module.

``--kind add_difference`` times the add-difference merge A + (B - C) * w instead (a third file
C; the bridge caches C's UNet like B's, the re-read approach reads three files, and there is no
runtime-block-merge row: it has no add difference); ``--kind weighted_sum add_difference`` runs
both on the same machine, so the two are comparable. Files are freshly written, so disk reads
come from the page cache (again generous to the re-read approach). ``--kind lora`` times a LoRA
(kohya names, UNet modules, rank 32) applied to A with a strength per block, A + s * delta:
the bridge (deltas cached per block, float32) against re-reading A and the LoRA and applying
every delta per candidate. Run from the repo root:

    PYTHONPATH=src python benchmarks/bridge_merge.py [--arch sd1 sdxl] [--repeat 3]
    PYTHONPATH=src python benchmarks/bridge_merge.py --kind weighted_sum add_difference
    PYTHONPATH=src python benchmarks/bridge_merge.py --kind weighted_sum lora
    PYTHONPATH=src python benchmarks/bridge_merge.py --scale tiny --device cpu   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from autombw_cli.blocks import SDXL_DETECTION_KEY, UNET_PREFIX, Arch, layout
from autombw_cli.merging.kernels import merge_tensor
from autombw_cli.sim.checkpoints import key_shapes
from autombw_cli.sim.host import module_from_state_dict
from autombw_cli.webui.bridge.core import BridgeCore
from autombw_cli.webui.bridge.names import CheckpointRef


def random_unet(arch: Arch, scale: str, seed: int, device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for key, shape in key_shapes(arch, scale).items():  # type: ignore[arg-type]
        if key.startswith(UNET_PREFIX):
            t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * 0.05
            out[key] = t.to(torch.float16).cpu()
    if arch is Arch.SDXL:  # the key the architecture is detected by
        out[SDXL_DETECTION_KEY] = torch.ones(8, dtype=torch.float16)
    return out


class BenchHost:
    """A `BridgeHost` with A's UNet live on the device and A, B (and C) as files."""

    name = "bench"

    def __init__(self, folder: Path, refs: list[CheckpointRef], live: torch.nn.Module):
        self._folder, self._refs, self._live, self._lock = folder, refs, live, threading.Lock()

    @property
    def queue_lock(self) -> threading.Lock:
        return self._lock

    def live_model(self) -> torch.nn.Module:
        return self._live

    def loaded_checkpoint(self) -> CheckpointRef:
        return self._refs[0]

    def load_checkpoint(self, ref: CheckpointRef) -> None:
        raise AssertionError("A is already loaded")

    def list_checkpoints(self) -> list[CheckpointRef]:
        return list(self._refs)

    def checkpoint_dir(self) -> Path:
        return self._folder

    def lora_dir(self) -> Path:
        return self._folder / "Lora"

    def refresh_checkpoints(self) -> None:
        pass


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def weights_series(arch: Arch, n: int) -> list[dict[str, float]]:
    """``n`` all-blocks-different weight sets (every slot changes from one to the next)."""
    slots = layout(arch).slots
    return [{s: ((i * 3 + j) % 9 + 1) / 10 for j, s in enumerate(slots)} for i in range(n)]


def bench_bridge(
    host: BenchHost, arch: Arch, cache: str, repeat: int, device: str, kind: str
) -> dict:
    core = BridgeCore(host, version="bench")
    c = {"formula": kind, "model_c": "C"} if kind == "add_difference" else {}
    b = "B"
    if kind == "lora":
        c, b = {"formula": "lora"}, f"{arch.value}-L"

    def merge(w: dict[str, float]) -> None:
        core.merge("A", b, w, cache_device=cache, **c)  # type: ignore[arg-type]

    series = weights_series(arch, repeat + 1)
    first = timed(lambda: merge(series[0]), device)
    slot = layout(arch).slots[4]
    one, every = [], []
    current = dict(series[0])
    for i in range(repeat):
        current[slot] = 0.05 + 0.9 * ((i + 1) % 2)
        w = dict(current)
        one.append(timed(lambda w=w: merge(w), device))
    for i in range(repeat):
        w = series[i + 1]
        every.append(timed(lambda w=w: merge(w), device))
    cache_gib = core.cache_bytes() / 2**30
    core.restore(free_caches=True)
    return {
        "first": first,
        "one": statistics.median(one),
        "all": statistics.median(every),
        "cache_gib": cache_gib,
    }


def bench_reread(
    a_path: Path,
    b_path: Path,
    live: torch.nn.Module,
    arch: Arch,
    repeat: int,
    device: str,
    c_path: Path | None = None,
) -> dict:
    lay = layout(arch)

    def merge_once(weights: dict[str, float]) -> None:
        a, b = load_file(str(a_path)), load_file(str(b_path))
        c = load_file(str(c_path)) if c_path is not None else None
        merged = {}
        for key, ta in a.items():
            slot = lay.slot_of(key)
            if slot is None:
                continue
            ta_dev = ta.to(device, non_blocking=True)
            tb = b[key].to(device, non_blocking=True)
            tc = None if c is None else c[key].to(device, non_blocking=True)
            merged[key] = merge_tensor(ta_dev, tb, tc, weights[slot])
        live.load_state_dict(merged, strict=False)
        del a, b, c, merged

    times = [timed(lambda w=w: merge_once(w), device) for w in weights_series(arch, repeat)]
    return {"first": times[0], "one": statistics.median(times), "all": statistics.median(times)}


def write_unet_lora(path: Path, arch: Arch, scale: str) -> None:
    """A kohya-named LoRA over the UNet's transformer blocks (what the benchmark's A holds)."""
    from autombw_cli.sim.loras import lora_state_dict

    lora = lora_state_dict(arch, scale, seed=5, rank=32)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v for k, v in lora.items() if k.startswith("lora_unet_")}, str(path))


def bench_reread_lora(
    a_path: Path, lora_path: Path, live: torch.nn.Module, arch: Arch, repeat: int, device: str
) -> dict:
    """Per candidate: read A and the LoRA again, compute every delta, apply it, load."""
    from autombw_cli.merging.lora import place_lora

    def merge_once(weights: dict[str, float]) -> None:
        a = load_file(str(a_path))
        placed = place_lora(lora_path, {k: tuple(t.shape) for k, t in a.items()})
        merged = {}
        for key, slot in placed.slots.items():
            delta = placed.delta(key).to(device, non_blocking=True)
            ta = a[key].to(device, non_blocking=True)
            merged[key] = (delta * weights[slot] + ta.float()).to(ta.dtype)
        live.load_state_dict(merged, strict=False)
        del a, merged

    times = [timed(lambda w=w: merge_once(w), device) for w in weights_series(arch, repeat)]
    return {"first": times[0], "one": statistics.median(times), "all": statistics.median(times)}


def bench_cpu_blocks(
    a_path: Path, b_path: Path, live: torch.nn.Module, arch: Arch, repeat: int, device: str
) -> dict:
    lay = layout(arch)
    state: dict[str, dict[str, dict[str, torch.Tensor]]] = {}

    def load_pair() -> None:
        a, b = load_file(str(a_path)), load_file(str(b_path))
        for key, ta in a.items():
            slot = lay.slot_of(key)
            if slot is not None:
                state.setdefault(slot, {})[key] = (ta, b[key])  # type: ignore[assignment]

    applied: dict[str, float] = {}

    def merge_once(weights: dict[str, float]) -> None:
        for slot, w in weights.items():
            if applied.get(slot) == w:
                continue
            block = {
                k: torch.lerp(ta.float(), tb.float(), w).to(ta.dtype)
                for k, (ta, tb) in state[slot].items()  # type: ignore[misc]
            }
            live.load_state_dict(block, strict=False)
            applied[slot] = w

    series = weights_series(arch, repeat + 1)
    first = timed(lambda: (load_pair(), merge_once(series[0])), device)
    slot = lay.slots[4]
    one, every = [], []
    current = dict(series[0])
    for i in range(repeat):
        current[slot] = 0.05 + 0.9 * ((i + 1) % 2)
        w = dict(current)
        one.append(timed(lambda w=w: merge_once(w), device))
    for i in range(repeat):
        w = series[i + 1]
        every.append(timed(lambda w=w: merge_once(w), device))
    state.clear()
    return {"first": first, "one": statistics.median(one), "all": statistics.median(every)}


def run_arch(
    arch: Arch, scale: str, repeat: int, device: str, folder: Path, kinds: list[str]
) -> list[dict]:
    gen_device = device if device.startswith("cuda") else "cpu"
    a_sd = random_unet(arch, scale, 1, gen_device)
    a_path, b_path = folder / f"{arch.value}-A.safetensors", folder / f"{arch.value}-B.safetensors"
    c_path = folder / f"{arch.value}-C.safetensors"
    save_file(a_sd, str(a_path))
    save_file(random_unet(arch, scale, 2, gen_device), str(b_path))
    if "add_difference" in kinds:
        save_file(random_unet(arch, scale, 3, gen_device), str(c_path))
    lora_path = folder / "Lora" / f"{arch.value}-L.safetensors"
    if "lora" in kinds:
        write_unet_lora(lora_path, arch, scale)
    params = sum(t.numel() for k, t in a_sd.items() if k.startswith(UNET_PREFIX))
    live = module_from_state_dict({k: v for k, v in a_sd.items() if k.startswith(UNET_PREFIX)})
    live = live.to(device)
    del a_sd
    refs = [CheckpointRef("A", "A", a_path), CheckpointRef("B", "B", b_path)]
    if "add_difference" in kinds:
        refs.append(CheckpointRef("C", "C", c_path))
    host = BenchHost(folder, refs, live)
    rows = []
    caches = ["cuda", "cpu"] if device.startswith("cuda") else ["cpu"]
    for kind in kinds:
        add_diff = kind == "add_difference"
        tag = " A+(B-C)w" if add_diff else " A+s*LoRA" if kind == "lora" else ""
        for cache in caches:
            r = bench_bridge(host, arch, cache, repeat, device, kind)
            rows.append({"approach": f"bridge cache={cache}{tag}", "kind": kind, **r})
        if kind == "lora":
            reread = bench_reread_lora(a_path, lora_path, live, arch, repeat, device)
            rows.append({"approach": f"reread (apply per candidate){tag}", "kind": kind, **reread})
            continue
        reread = bench_reread(
            a_path, b_path, live, arch, repeat, device, c_path if add_diff else None
        )
        rows.append({"approach": f"reread (bayesian-merger){tag}", "kind": kind, **reread})
        if not add_diff:  # runtime-block-merge has no add difference
            blocks = bench_cpu_blocks(a_path, b_path, live, arch, repeat, device)
            rows.append({"approach": "cpu blocks (runtime-block-merge)", "kind": kind, **blocks})
    for row in rows:
        row.update(arch=arch.value, params=params)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=["sd1", "sdxl"])
    ap.add_argument("--scale", default="full", choices=["full", "tiny"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--kind",
        nargs="+",
        default=["weighted_sum"],
        choices=["weighted_sum", "add_difference", "lora"],
        help="merge formula(s) to time (default: weighted_sum)",
    )
    ap.add_argument("--dir", type=Path, default=None, help="where the checkpoints are written")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args()

    card = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"device: {card}; torch {torch.__version__}; scale={args.scale}; repeat={args.repeat}")
    all_rows = []
    with contextlib.ExitStack() as stack:
        folder = args.dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.arch:
            rows = run_arch(Arch(name), args.scale, args.repeat, args.device, folder, args.kind)
            all_rows.extend(rows)
            print(f"\n{name}: UNet {rows[0]['params'] / 1e6:.0f}M params, fp16")
            print(
                f"{'approach':44} {'first merge':>12} {'1 block':>10} {'all blocks':>11} "
                f"{'vs reread':>10} {'cache':>9}"
            )
            for r in rows:
                base = next(
                    b for b in rows if b["kind"] == r["kind"] and b["approach"].startswith("reread")
                )
                cache = f"{r['cache_gib']:.2f}GiB" if "cache_gib" in r else "-"
                print(
                    f"{r['approach']:44} {r['first']:>11.3f}s {r['one']:>9.3f}s "
                    f"{r['all']:>10.3f}s {base['all'] / r['all']:>9.1f}x {cache:>9}"
                )
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps({"device": card, "rows": all_rows}, indent=2))


if __name__ == "__main__":
    main()
