"""Synthetic objective landscapes over block weights, with interactions between blocks.

Used by the optimizer benchmark and the tests: cheap, seeded, with a known optimum of 1.0 that
lies on the 0.1 grid (so every grid search can reach it) and a random point scoring near 0.

- ``coupled``: a quadratic bowl whose Hessian couples neighbouring blocks and each UNet skip
  pair (INk with OUT(n-1-k)), like blocks that must agree for a merge to look right. Smooth,
  one optimum, but the axes are not independent.
- ``skip-pairs``: each skip pair (INk, OUT(n-1-k)) scores with two bumps: a broad mediocre one
  (0.6) and a narrow good one (1.0) at another place; M00, OUT and TIME_EMBED add a coupled
  bowl. Multimodal: local methods get stuck on the broad bumps.
- ``sim``: the simulated WebUI and its ``sim`` scorer without HTTP: the simulator's renderer
  (`autombw_cli.sim.render`) drawing from the merge of its two built-in checkpoints, scored by
  closeness to what a hidden target merge renders (``1 / (1 + 20 * rmse)``, averaged over a few
  prompts at 64 px). The merge is a per-block lerp, so each block's features are computed in
  closed form from per-slot dot products; nonlinear, with every block interacting through the
  renderer's network. Sharp: a random grid point scores about 0.27 (median), one with two
  thirds of its blocks 0.1 off the target about 0.6, so reaching 0.95 takes precision.
- ``rugged``: the ``coupled`` bowl (70% of the score) plus ripples (30%): cosines of period 0.25
  along 27 random directions, all at their crest at the optimum. Every ripple trough is a local
  optimum on the 0.1 grid, so a method that trusts the last few steps stalls on one.
- ``noisy``: the ``coupled`` bowl, and every evaluation adds fresh Gaussian noise (σ
  `NOISE_SIGMA` = 0.05, 5% of the span from a random point to the optimum), as a score over
  images rendered with random seeds does: the same weights score differently each time. The
  noise comes from a generator seeded with the landscape's seed, so a run repeats exactly;
  ``value(weights)`` is the noise-free score (the benchmark judges the point a search picked by
  it).
- ``flat``: a coupled bowl where 6 blocks matter (each costs 0.25-0.95 at its worst value) and
  the other 21 barely do (their curvature is 2% of the others': each costs about 0.02 at its
  worst value): flat directions.

Every landscape but ``noisy`` is deterministic: the same seed and weights give the same score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from autombw_cli.blocks import Arch, Weights, layout

if TYPE_CHECKING:
    from autombw_cli.sim.render import Renderer


NOISE_SIGMA = 0.05  # the ``noisy`` landscape's per-evaluation noise (standard deviation)


@dataclass(frozen=True)
class Landscape:
    """A scored landscape: call it with weights for a score (noisy ones add ``noise``)."""

    name: str
    arch: Arch
    fn: Callable[[np.ndarray], float]  # noise-free; values in recipe (canonical) slot order
    target: Weights  # where the optimum lies
    optimum: float = 1.0
    noise: float = 0.0  # standard deviation of the noise each call adds
    rng: np.random.Generator | None = None  # draws the noise, in call order

    def __call__(self, weights: Weights) -> float:
        score = self.value(weights)
        if self.noise and self.rng is not None:
            score += float(self.rng.normal(0.0, self.noise))
        return score

    def value(self, weights: Weights) -> float:
        """The noise-free score (what the weights are really worth)."""
        return self.fn(np.array(list(weights.values.values()), dtype=float))


def _grid_target(rng: np.random.Generator, n: int, lo: int = 1, hi: int = 9) -> np.ndarray:
    return rng.integers(lo, hi + 1, size=n) / 10.0


def _skip_pairs(arch: Arch) -> list[tuple[int, int]]:
    lay = layout(arch)
    slots = list(lay.slots)
    ins, outs = lay.in_slots, lay.out_slots
    return [(slots.index(ins[k]), slots.index(outs[len(outs) - 1 - k])) for k in range(len(ins))]


def _coupled_matrix(arch: Arch, rng: np.random.Generator, scale: np.ndarray) -> np.ndarray:
    """A positive-definite Hessian coupling neighbouring blocks and each skip pair, with
    diagonal ``scale`` (times a random factor 0.5..2)."""
    n = len(scale)
    a = np.diag(rng.uniform(0.5, 2.0, size=n) * scale)
    for i in range(n - 1):  # neighbours along the UNet
        c = rng.uniform(-0.6, 0.6) * math.sqrt(a[i, i] * a[i + 1, i + 1])
        a[i, i + 1] = a[i + 1, i] = c
    for i, j in _skip_pairs(arch):  # skip connections
        c = rng.uniform(-0.6, 0.6) * math.sqrt(a[i, i] * a[j, j])
        a[i, j] = a[j, i] = c
    w, v = np.linalg.eigh(a)  # keep it positive definite
    return (v * np.maximum(w, 0.05 * float(scale.min()))) @ v.T


def _bowl(
    arch: Arch, rng: np.random.Generator, scale: np.ndarray | None = None
) -> tuple[np.ndarray, Callable[[np.ndarray], float]]:
    """A target on the grid and ``1 - q(x - target)``, scaled so that a uniformly random
    point scores ~0 on average."""
    n = len(layout(arch).slots)
    target = _grid_target(rng, n)
    a = _coupled_matrix(arch, rng, np.ones(n) if scale is None else scale)
    samples = rng.uniform(0, 1, size=(4000, n)) - target
    mean_q = float(np.mean(np.einsum("ij,jk,ik->i", samples, a, samples)))

    def bowl(x: np.ndarray) -> float:
        d = x - target
        return float(1.0 - (d @ a @ d) / mean_q)

    return target, bowl


def _named(arch: Arch, target: np.ndarray) -> Weights:
    return Weights(arch, dict(zip(layout(arch).slots, target.tolist(), strict=True)))


def coupled(seed: int, arch: Arch | str = Arch.SD1) -> Landscape:
    arch = Arch(arch)
    target, bowl = _bowl(arch, np.random.default_rng([seed, 1]))
    return Landscape("coupled", arch, bowl, _named(arch, target))


RIPPLE_SHARE = 0.3
RIPPLE_PERIOD = 0.25


def rugged(seed: int, arch: Arch | str = Arch.SD1) -> Landscape:
    arch = Arch(arch)
    rng = np.random.default_rng([seed, 4])
    target, bowl = _bowl(arch, rng)
    n = len(target)
    directions = rng.normal(size=(n, n))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    k = 2.0 * math.pi / RIPPLE_PERIOD

    def fn(x: np.ndarray) -> float:
        ripple = float(np.mean(1.0 - np.cos(k * (directions @ (x - target)))))  # 0 at target
        return (1.0 - RIPPLE_SHARE) * bowl(x) + RIPPLE_SHARE * (1.0 - ripple)

    return Landscape("rugged", arch, fn, _named(arch, target))


def noisy(seed: int, arch: Arch | str = Arch.SD1, sigma: float = NOISE_SIGMA) -> Landscape:
    arch = Arch(arch)
    target, bowl = _bowl(arch, np.random.default_rng([seed, 5]))
    noise_rng = np.random.default_rng([seed, 5, 1])
    return Landscape("noisy", arch, bowl, _named(arch, target), noise=sigma, rng=noise_rng)


FLAT_STRONG = 6  # blocks that matter in ``flat``
FLAT_WEAK_SCALE = 0.02  # curvature of the others, relative


def flat(seed: int, arch: Arch | str = Arch.SD1) -> Landscape:
    arch = Arch(arch)
    rng = np.random.default_rng([seed, 6])
    n = len(layout(arch).slots)
    scale = np.full(n, FLAT_WEAK_SCALE)
    scale[rng.choice(n, size=FLAT_STRONG, replace=False)] = 1.0
    target, bowl = _bowl(arch, rng, scale)
    return Landscape("flat", arch, bowl, _named(arch, target))


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


SIM_PROMPTS = (
    "a photo of a red apple on a wooden table",
    "portrait of an old sailor, oil painting",
    "a mountain lake at dawn, mist",
)
SIM_SIDE = 64


@dataclass(frozen=True)
class _SlotDots:
    """Per slot, what the renderer's features need from the lerp ``a + w (b - a)``:
    direction dot products with A and B (3 each) and the three Gram terms."""

    da: np.ndarray  # (n_slots, 3)
    db: np.ndarray
    aa: np.ndarray  # (n_slots,)
    ab: np.ndarray
    bb: np.ndarray

    def features(self, w: np.ndarray) -> np.ndarray:
        wc = w[:, None]
        dots = (1.0 - wc) * self.da + wc * self.db
        norm = (1.0 - w) ** 2 * self.aa + 2.0 * w * (1.0 - w) * self.ab + w**2 * self.bb
        return dots / np.sqrt(norm)[:, None]


def _slot_dots(arch: Arch, renderer: Renderer) -> _SlotDots:
    import torch

    from autombw_cli.sim.checkpoints import random_state_dict

    state_a = random_state_dict(arch, "tiny", 1, torch.float16)  # the simulator's simA/simB
    state_b = random_state_dict(arch, "tiny", 2, torch.float16)
    lay = layout(arch)
    index = {s: i for i, s in enumerate(lay.slots)}
    n = len(lay.slots)
    da, db = np.zeros((n, 3)), np.zeros((n, 3))
    aa, ab, bb = np.zeros(n), np.zeros(n), np.zeros(n)
    for key, a in state_a.items():
        slot = lay.slot_of(key)
        if slot is None or not a.is_floating_point():
            continue
        i = index[slot]
        xa = a.reshape(-1).double()
        xb = state_b[key].reshape(-1).double()
        d = renderer.direction(key, tuple(a.shape)).double()
        da[i] += (d @ xa).numpy()
        db[i] += (d @ xb).numpy()
        aa[i] += float(xa @ xa)
        ab[i] += float(xa @ xb)
        bb[i] += float(xb @ xb)
    return _SlotDots(da, db, aa, ab, bb)


def sim(seed: int, arch: Arch | str = Arch.SD1) -> Landscape:
    from autombw_cli.sim.render import Renderer, RenderParams

    arch = Arch(arch)
    slots = layout(arch).slots
    rng = np.random.default_rng([seed, 3])
    target = _grid_target(rng, len(slots))
    renderer = Renderer(arch)
    dots = _slot_dots(arch, renderer)
    params = [
        RenderParams(prompt=p, seed=seed * 1000 + k, width=SIM_SIDE, height=SIM_SIDE)
        for k, p in enumerate(SIM_PROMPTS)
    ]

    def images(x: np.ndarray) -> list[np.ndarray]:
        feats = dots.features(x)
        return [renderer.render(feats, p).astype(np.float64) / 255.0 for p in params]

    wanted = images(target)

    def fn(x: np.ndarray) -> float:
        got = images(x)
        rmse = [float(np.sqrt(((g - t) ** 2).mean())) for g, t in zip(got, wanted, strict=True)]
        return float(np.mean([1.0 / (1.0 + 20.0 * r) for r in rmse]))

    return Landscape("sim", arch, fn, Weights(arch, dict(zip(slots, target, strict=True))))


LANDSCAPES: dict[str, Callable[[int], Landscape]] = {
    "coupled": coupled,
    "skip-pairs": skip_pairs,
    "sim": sim,
    "rugged": rugged,
    "noisy": noisy,
    "flat": flat,
}
