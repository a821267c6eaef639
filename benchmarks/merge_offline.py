"""Benchmark: `autombw merge` (streaming) vs a naive merge (load both, lerp, save).

Two SD1.5-shaped random fp16 checkpoints (real key names and shapes, ~2.1 GB each) are written
to --dir (default /tmp/autombw-bench), then each contender runs --repeat times, alternating, in
its own subprocess; wall time and peak RSS are taken from that child alone (os.wait4). Both
outputs are compared tensor by tensor to be sure both did the same merge.

    .venv/bin/python benchmarks/merge_offline.py [--scale full|tiny] [--repeat 2] [--keep]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

WEIGHTS = ",".join(f"{0.1 + 0.8 * i / 26:.4f}" for i in range(27))  # 27 values, recipe order


def naive_merge(a_path: str, b_path: str, out_path: str) -> None:
    """The baseline: load both checkpoints fully, lerp every UNet key, save_file."""
    import torch
    from safetensors.torch import load_file, save_file

    from autombw_cli.blocks import Arch, parse_weights
    from autombw_cli.merging.plan import plan_weights

    weights = parse_weights(WEIGHTS, Arch.SD1)
    a = load_file(a_path)
    b = load_file(b_path)
    plan = plan_weights(
        list(a), weights, copy={k for k, t in a.items() if not t.is_floating_point()}
    )
    merged = {}
    for key, ta in a.items():
        step = plan[key]
        if step is None:
            merged[key] = ta
        else:
            merged[key] = torch.lerp(ta.float(), b[key].float(), step[1]).to(ta.dtype)
    save_file(merged, out_path, metadata={"format": "pt"})


def measure(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in MiB) of that child process alone."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]}... failed with exit code {proc.returncode}")
    return wall, usage.ru_maxrss / 1024  # Linux: ru_maxrss is in KiB


def same_tensors(p: Path, q: Path) -> tuple[int, int]:
    """(keys compared, keys differing) between two safetensors files, one tensor at a time."""
    import torch

    from autombw_cli.merging.checkpoint_io import checkpoint

    differ = 0
    with checkpoint(p) as rp, checkpoint(q) as rq:
        keys = rp.keys()
        if sorted(keys) != sorted(rq.keys()):
            return len(keys), len(keys)
        for k in keys:
            differ += not torch.equal(rp.get(k), rq.get(k))
    return len(keys), differ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/autombw-bench"))
    ap.add_argument("--scale", choices=("full", "tiny"), default="full")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints for a rerun")
    ap.add_argument("--worker", nargs=3, metavar=("A", "B", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--generate", nargs=3, metavar=("PATH", "SCALE", "SEED"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.worker:
        naive_merge(*args.worker)
        return
    if args.generate:
        import torch

        from autombw_cli.sim.checkpoints import write_random_checkpoint

        path, scale, seed = args.generate
        write_random_checkpoint(path, "sd1", scale, int(seed), torch.float16)
        return

    # This process stays lean (no torch) until the measurements are done: on Linux a child's
    # peak RSS starts at its parent's RSS when it is spawned (exec keeps the high-water mark).
    d: Path = args.dir
    d.mkdir(parents=True, exist_ok=True)
    a, b = d / f"sd1-{args.scale}-A.safetensors", d / f"sd1-{args.scale}-B.safetensors"
    for path, seed in ((a, 1), (b, 2)):
        if not path.exists():
            t = time.perf_counter()
            gen = [sys.executable, __file__, "--generate", str(path), args.scale, str(seed)]
            subprocess.run(gen, check=True)
            took = time.perf_counter() - t
            print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {took:.0f} s")
    input_gb = (a.stat().st_size + b.stat().st_size) / 1e9

    out_naive, out_ours = d / "naive.safetensors", d / "autombw.safetensors"
    naive_cmd = [sys.executable, __file__, "--worker", str(a), str(b), str(out_naive)]
    ours_cmd = [
        sys.executable, "-m", "autombw_cli", "merge", str(a), str(b),
        "--weights", WEIGHTS, "-o", str(out_ours), "--force",
    ]  # fmt: skip
    floor_cmd = [sys.executable, "-c", "import torch, safetensors.torch, autombw_cli.cli"]
    floor = measure(floor_cmd)
    load_before = os.getloadavg()[0]
    results: dict[str, list[tuple[float, float]]] = {
        "naive (load_file/lerp/save_file)": [],
        "autombw merge": [],
    }
    for _ in range(args.repeat):
        results["naive (load_file/lerp/save_file)"].append(measure(naive_cmd))
        results["autombw merge"].append(measure(ours_cmd))

    load_after = os.getloadavg()[0]
    compared, differing = same_tensors(out_naive, out_ours)
    print()
    print(f"inputs: 2 x SD1.5 fp16 ({args.scale}), {input_gb:.2f} GB together; "
          f"{os.cpu_count()} CPUs; {args.repeat} runs each, alternating; "
          f"load average {load_before:.1f} before, {load_after:.1f} after")  # fmt: skip
    print(f"{'contender':36} {'wall s (median)':>16} {'wall s (min)':>13} {'peak RSS MiB':>13}")
    base_wall = base_rss = 0.0
    for name, runs in results.items():
        walls = [w for w, _ in runs]
        rss = max(r for _, r in runs)
        wall = statistics.median(walls)
        print(f"{name:36} {wall:16.1f} {min(walls):13.1f} {rss:13.0f}")
        if not base_wall:
            base_wall, base_rss = wall, rss
        else:
            print(f"{'  vs naive':36} {wall / base_wall:15.2f}x {'':13} {rss / base_rss:12.2f}x")
    print(f"{'(floor: python + torch import)':36} {floor[0]:16.1f} {'':13} {floor[1]:13.0f}")
    print(f"outputs identical: {differing == 0} ({compared} keys compared, {differing} differ)")
    out_naive.unlink(missing_ok=True)
    for p in d.glob("autombw*"):
        p.unlink()
    if not args.keep:
        a.unlink()
        b.unlink()


if __name__ == "__main__":
    main()
