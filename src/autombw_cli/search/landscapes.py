"""Synthetic objective landscapes over block weights, with interactions between blocks.

Used by the optimizer benchmark and the tests: cheap, seeded, with a known optimum of 1.0 that
lies on the 0.1 grid (so every grid search can reach it) and a random point scoring near 0.

- ``coupled``: a quadratic bowl whose Hessian couples neighbouring blocks and each UNet skip
  pair (INk with OUT(n-1-k)), like blocks that must agree for a merge to look right. Smooth,
  one optimum, but the axes are not independent.
- ``skip-pairs``: each skip pair (INk, OUT(n-1-k)) scores with two bumps: a broad mediocre one
  (0.6) and a narrow good one (1.0) at another place; M00, OUT and TIME_EMBED add a coupled
  bowl. Multimodal: local methods get stuck on the broad bumps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from autombw_cli.blocks import Arch, Weights, layout


@dataclass(frozen=True)
class Landscape:
    name: str
    arch: Arch
    fn: Callable[[np.ndarray], float]  # values in recipe (canonical) slot order
    target: Weights  # where the optimum lies
    optimum: float = 1.0

    def __call__(self, weights: Weights) -> float:
        return self.fn(np.array(list(weights.values.values()), dtype=float))


def _grid_target(rng: np.random.Generator, n: int, lo: int = 1, hi: int = 9) -> np.ndarray:
    return rng.integers(lo, hi + 1, size=n) / 10.0


def _skip_pairs(arch: Arch) -> list[tuple[int, int]]:
    lay = layout(arch)
    slots = list(lay.slots)
    ins, outs = lay.in_slots, lay.out_slots
    return [(slots.index(ins[k]), slots.index(outs[len(outs) - 1 - k])) for k in range(len(ins))]


def coupled(seed: int, arch: Arch | str = Arch.SD1) -> Landscape:
    arch = Arch(arch)
    slots = layout(arch).slots
    n = len(slots)
    rng = np.random.default_rng([seed, 1])
    target = _grid_target(rng, n)
    a = np.eye(n) * rng.uniform(0.5, 2.0, size=n)
    for i in range(n - 1):  # neighbours along the UNet
        c = rng.uniform(-0.6, 0.6) * math.sqrt(a[i, i] * a[i + 1, i + 1])
        a[i, i + 1] = a[i + 1, i] = c
    for i, j in _skip_pairs(arch):  # skip connections
        c = rng.uniform(-0.6, 0.6) * math.sqrt(a[i, i] * a[j, j])
        a[i, j] = a[j, i] = c
    w, v = np.linalg.eigh(a)  # keep it positive definite
    a = (v * np.maximum(w, 0.05)) @ v.T
    # scale: a uniformly random point scores ~0 on average
    samples = rng.uniform(0, 1, size=(4000, n)) - target
    mean_q = float(np.mean(np.einsum("ij,jk,ik->i", samples, a, samples)))

    def fn(x: np.ndarray) -> float:
        d = x - target
        return float(1.0 - (d @ a @ d) / mean_q)

    return Landscape("coupled", arch, fn, Weights(arch, dict(zip(slots, target, strict=True))))


def skip_pairs(seed: int, arch: Arch | str = Arch.SD1) -> Landscape:
    arch = Arch(arch)
    slots = layout(arch).slots
    n = len(slots)
    rng = np.random.default_rng([seed, 2])
    pairs = _skip_pairs(arch)
    paired = {i for p in pairs for i in p}
    rest = [i for i in range(n) if i not in paired]
    good = _grid_target(rng, n)
    broad = np.clip(1.0 - good + rng.uniform(-0.1, 0.1, size=n), 0, 1)  # far from the good bump
    r = np.eye(len(rest)) + 0.4 * (np.ones((len(rest), len(rest))) - np.eye(len(rest)))

    def fn(x: np.ndarray) -> float:
        total = 0.0
        for i, j in pairs:
            dg = (x[i] - good[i]) ** 2 + (x[j] - good[j]) ** 2
            db = (x[i] - broad[i]) ** 2 + (x[j] - broad[j]) ** 2
            total += max(math.exp(-dg / 0.04), 0.6 * math.exp(-db / 0.25))
        d = x[rest] - good[rest]
        total += len(rest) * math.exp(-float(d @ r @ d) / 0.3)
        return total / (len(pairs) + len(rest))

    return Landscape("skip-pairs", arch, fn, Weights(arch, dict(zip(slots, good, strict=True))))


LANDSCAPES: dict[str, Callable[[int], Landscape]] = {"coupled": coupled, "skip-pairs": skip_pairs}
