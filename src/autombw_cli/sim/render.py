"""The simulated WebUI's "diffusion": a cheap, deterministic image from the live UNet tensors.

1. **Features** (`unet_features`): for every block slot, three projections of that slot's
   tensors onto fixed random directions (seeded by key name), divided by the slot's norm. They
   are computed from whatever tensors the live model holds, so a merge changes them smoothly
   and each block moves its own features.
2. **Image** (`render`): a fixed smooth nonlinear map of all features (a small random
   two-layer network with pairwise products, so blocks interact) to the colours, phase shifts
   and sharpness of a few wave patterns whose directions and frequencies the prompt fixes,
   perturbed by the seed, sharpened by the number of steps, drawn at up to 128 px a side and
   scaled to the requested size.

Everything is deterministic in (tensors, prompt, negative prompt, seed, size, steps, cfg). The
text encoder's tensors move the prompt's conditioning (`conditioning`), which the simulated
WebUI caches the way A1111 does (`sim.host.SimHost.cached_conditioning`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from autombw_cli.blocks import UNET_PREFIX, Arch, is_text_encoder_key, layout

FEATURES_PER_SLOT = 3
HIDDEN = 24
WAVES = 6
PARAMS_PER_WAVE = 5  # r, g, b amplitude, phase shift, sharpness (set by the merge)
MAX_SIDE = 1024
INNER_SIDE = 128  # drawn at most this size, then scaled (keeps 512x512 renders cheap)


def _stable_seed(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class RenderParams:
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 1
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg_scale: float = 7.0


class Renderer:
    """Features and images for one architecture (holds the fixed random directions)."""

    def __init__(self, arch: Arch | str) -> None:
        self.arch = Arch(arch)
        self.layout = layout(self.arch)
        self.slots = self.layout.slots
        self._directions: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        rng = np.random.default_rng(_stable_seed("autombw-sim-render", self.arch.value))
        dim = len(self.slots) * FEATURES_PER_SLOT
        n_params = WAVES * PARAMS_PER_WAVE
        self._w1 = rng.normal(0.0, 2.0 / math.sqrt(dim), size=(HIDDEN, dim))
        self._b1 = rng.normal(0.0, 0.3, size=HIDDEN)
        self._w2 = rng.normal(0.0, 1.2 / math.sqrt(HIDDEN * 1.5), size=(n_params, HIDDEN * 3 // 2))
        self._b2 = rng.normal(0.0, 0.3, size=n_params)

    # --- features ---------------------------------------------------------------------------
    def direction(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The fixed ``(3, numel)`` random directions a tensor's features are projected on."""
        cached = self._directions.get((key, shape))
        if cached is None:
            gen = torch.Generator().manual_seed(_stable_seed("direction", key))
            n = int(np.prod(shape)) if shape else 1
            cached = torch.randn((FEATURES_PER_SLOT, n), generator=gen, dtype=torch.float32)
            self._directions[(key, shape)] = cached
        return cached

    def unet_features(self, state: Mapping[str, torch.Tensor]) -> np.ndarray:
        """``(n_slots, 3)`` features of the UNet tensors in a checkpoint-keyed state dict."""
        dots = {s: torch.zeros(FEATURES_PER_SLOT, dtype=torch.float64) for s in self.slots}
        norms = dict.fromkeys(self.slots, 0.0)
        with torch.no_grad():
            for key, tensor in state.items():
                if not key.startswith(UNET_PREFIX) or not tensor.is_floating_point():
                    continue
                slot = self.layout.slot_of(key)
                if slot is None:
                    continue
                x = tensor.detach().reshape(-1).to("cpu", torch.float32)
                d = self.direction(key, tuple(tensor.shape))
                dots[slot] += (d @ x).double()
                norms[slot] += float((x.double() ** 2).sum())
        out = np.zeros((len(self.slots), FEATURES_PER_SLOT))
        for i, slot in enumerate(self.slots):
            if norms[slot] > 0:
                out[i] = dots[slot].numpy() / math.sqrt(norms[slot])
        return out

    def text_encoder_features(self, state: Mapping[str, torch.Tensor]) -> np.ndarray:
        """``(3,)`` features of the text-encoder tensors (projected like `unet_features`)."""
        dots = torch.zeros(FEATURES_PER_SLOT, dtype=torch.float64)
        norm = 0.0
        with torch.no_grad():
            for key, tensor in state.items():
                if not tensor.is_floating_point() or not is_text_encoder_key(key, self.arch):
                    continue
                x = tensor.detach().reshape(-1).to("cpu", torch.float32)
                dots += (self.direction(key, tuple(tensor.shape)) @ x).double()
                norm += float((x.double() ** 2).sum())
        return dots.numpy() / math.sqrt(norm) if norm > 0 else np.zeros(FEATURES_PER_SLOT)

    def conditioning(self, text: str, text_encoder_shift: np.ndarray | None = None) -> np.ndarray:
        """What the text encoder makes of ``text``: the text's fixed vector, moved by
        ``text_encoder_shift`` (how far the live text encoder's features are from the loaded
        checkpoint's; zero, no move, for an unmerged checkpoint)."""
        n = WAVES * PARAMS_PER_WAVE
        vector = _text_vector(text, n)
        if not text or text_encoder_shift is None or not np.any(text_encoder_shift):
            return vector
        rng = np.random.default_rng(_stable_seed("text-encoder", text.strip()))
        return vector + 0.5 * rng.normal(size=(n, text_encoder_shift.size)) @ text_encoder_shift

    # --- image ------------------------------------------------------------------------------
    def render(
        self,
        features: np.ndarray,
        params: RenderParams,
        *,
        cond: np.ndarray | None = None,
        uncond: np.ndarray | None = None,
    ) -> np.ndarray:
        """An ``(height, width, 3)`` uint8 image (drawn at most 128 px a side, then scaled).
        ``cond``/``uncond``: the prompt's and negative prompt's `conditioning` (default: with
        an unmerged text encoder)."""
        width = max(8, min(int(params.width), MAX_SIDE))
        height = max(8, min(int(params.height), MAX_SIDE))
        inner_w, inner_h = min(width, INNER_SIDE), min(height, INNER_SIDE)
        seed_rng = np.random.default_rng(_stable_seed("seed", params.seed))
        z = features.reshape(-1) + 0.03 * seed_rng.normal(size=features.size)
        h = np.tanh(self._w1 @ z + self._b1)
        half = HIDDEN // 2
        u = np.concatenate([h, h[:half] * h[half:]])  # pairwise products: blocks interact
        p = self._w2 @ u + self._b2
        p = p + 0.4 * (self.conditioning(params.prompt) if cond is None else cond)
        p = p - 0.15 * (self.conditioning(params.negative_prompt) if uncond is None else uncond)
        waves = p.reshape(WAVES, PARAMS_PER_WAVE)
        # Where the waves run is fixed by the prompt; the merge sets their colours, phase
        # shifts and sharpness, so the image moves smoothly with every weight.
        geometry = np.random.default_rng(_stable_seed("layout", self.arch.value, params.prompt))
        freqs = geometry.uniform(0.5, 3.5, size=(WAVES, 2))
        base_phase = geometry.uniform(0.0, 2 * math.pi, size=WAVES)

        cfg_gain = 0.6 + 0.4 * math.tanh(float(params.cfg_scale) / 7.0)
        contrast = 1.0 - math.exp(-max(1, int(params.steps)) / 6.0)
        yy, xx = np.meshgrid(
            np.linspace(0.0, 1.0, inner_h, endpoint=False),
            np.linspace(0.0, 1.0, inner_w, endpoint=False),
            indexing="ij",
        )
        acc = np.zeros((3, inner_h, inner_w))
        for m, (r, g, b, shift, sharp) in enumerate(waves):
            angle = 2 * math.pi * (freqs[m, 0] * xx + freqs[m, 1] * yy)
            wave = np.sin(angle + base_phase[m] + 0.8 * math.tanh(shift))
            wave = np.tanh((1.0 + 1.5 / (1.0 + math.exp(-sharp))) * wave)
            for c, amp in enumerate((r, g, b)):
                acc[c] += 0.6 * math.tanh(amp) * wave
        img = 0.5 + 0.45 * np.tanh(cfg_gain * contrast * acc)
        noise = seed_rng.normal(size=img.shape) / math.sqrt(max(1, params.steps) / 20)
        img = img + 0.015 * noise
        pixels = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)
        if (inner_w, inner_h) == (width, height):
            return pixels
        scaled = Image.fromarray(pixels, "RGB").resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(scaled)


def _text_vector(text: str, n: int) -> np.ndarray:
    if not text:
        return np.zeros(n)
    return np.random.default_rng(_stable_seed("text", text.strip())).normal(size=n)
