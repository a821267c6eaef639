"""Benchmark: what a chained merge adds per step, the bridge's save of the step's best.

A chain's cost is its steps' searches plus, at the end of each step but the last, one save of
the step's best through the bridge on every instance (`app/chain.py`; the instances save at
once, each into its own model folder). The save is `webui.bridge.save.write_merged_checkpoint`
(the code the extension runs): stream A's, B's tensors from their files, merge in float32,
write the fp16 result atomically with its sha256. Baseline in the same run: the offline merge
of the same files and weights (`merging.offline.merge_checkpoints`, what `autombw merge` and the
chain's offline replay do per step). Both outputs are compared tensor by tensor.

Two random fp16 checkpoints with every SD1.5 key and shape (`sim.checkpoints`, full scale,
2.1 GB each) are written to a temporary folder (removed afterwards). Run from the repo root:

    PYTHONPATH=src python benchmarks/chain_save.py [--repeat 3] [--scale full|tiny]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from autombw_cli.blocks import Arch, Weights, layout
from autombw_cli.merging.offline import merge_checkpoints
from autombw_cli.recipe import Recipe
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from autombw_cli.webui.bridge.save import write_merged_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scale", choices=["full", "tiny"], default="full")
    args = parser.parse_args()
    slots = layout(Arch.SD1).slots
    w = Weights(Arch.SD1, {s: round((0.1 + 0.37 * i) % 1.0, 3) for i, s in enumerate(slots)})
    with tempfile.TemporaryDirectory(prefix="autombw-chain-bench-") as tmp:
        folder = Path(tmp)
        a, b = folder / "A.safetensors", folder / "B.safetensors"
        for path, seed in ((a, 1), (b, 2)):
            write_checkpoint(path, random_state_dict("sd1", args.scale, seed, torch.float16))
        size = a.stat().st_size
        times: dict[str, list[float]] = {"bridge save": [], "offline merge": []}
        for i in range(args.repeat):
            for name in times:
                out = folder / f"{name.split()[0]}-{i}.safetensors"
                t0 = time.perf_counter()
                if name == "bridge save":
                    write_merged_checkpoint(
                        a, b, w, out, dtype=torch.float16, metadata={"format": "pt"}
                    )
                else:
                    merge_checkpoints(a, b, Recipe("A", "B", "o", w), out, dtype="fp16")
                times[name].append(time.perf_counter() - t0)
            saved = load_file(folder / f"bridge-{i}.safetensors")
            offline = load_file(folder / f"offline-{i}.safetensors")
            assert set(saved) == set(offline)
            assert all(torch.equal(saved[k], offline[k]) for k in saved), "outputs differ"
            del saved, offline
            for p in folder.glob(f"*-{i}.*"):
                p.unlink()
    print(f"SD1.5 {args.scale}, {size / 1e9:.2f} GB per checkpoint, {args.repeat} runs each")
    print(f"| {'what':<46} | median s | min s |")
    print(f"|{'-' * 48}|---------:|------:|")
    for name, ts in times.items():
        label = {"bridge save": "bridge save of a step's best (fp16)"}.get(name, name)
        if name == "offline merge":
            label = "baseline: offline merge, same weights (fp16)"
        print(f"| {label:<46} | {statistics.median(ts):8.1f} | {min(ts):5.1f} |")


if __name__ == "__main__":
    main()
