"""The ``sim`` scorer: how close an image is to what a hidden target merge would render.

The simulated WebUI renders from the live merged tensors (`sim.render`); this scorer builds
the same built-in checkpoints in memory (same seeds, same fp16 kernels as the bridge), merges
them with the **target** weights (a weighted sum of simA and simB, with ``formula:
add_difference`` simA + (simB - simC) * w, with ``formula: lora`` simA with the built-in LoRA
simLora at the target strengths), and renders the target image with the parameters the
simulator stored in each PNG (``autombw_sim`` text chunk: prompt, seed, size, steps, cfg).

    score = 1 / (1 + 20 * rmse(image, target_image))      # in (0, 1]; exactly 1 at the target

So the optimum (`optimum_score`, 1.0 for the simulator's built-in pair merged A=simA, B=simB)
and the regret of a search are known. The default target is fixed (`DEFAULT_TARGET`).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autombw_cli.blocks import Arch, Weights, layout, parse_weights
from autombw_cli.errors import ScorerError
from autombw_cli.recipe import Formula

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from autombw_cli.merging.lora import PlacedLora
    from autombw_cli.sim.render import Renderer

OPTIMUM_SCORE = 1.0
SCORE_SCALE = 20.0
_RENDER_CACHE = 64


def default_target(arch: Arch | str = Arch.SD1) -> Weights:
    """The fixed hidden target: a smooth pattern on the 0.1 grid, every value in 0.1..0.9."""
    slots = layout(arch).slots
    values = {s: round(0.5 + 0.4 * math.sin(1.7 * i + 0.3), 1) for i, s in enumerate(slots)}
    return Weights(Arch(arch), values)


DEFAULT_TARGET = default_target(Arch.SD1)


class SimScorer:
    """Scores simulator images by closeness to the target merge's image (higher is better)."""

    name = "sim"

    def __init__(
        self,
        arch: str = "sd1",
        target: Mapping[str, float] | Sequence[float] | str | None = None,
        seed_a: int = 1,
        seed_b: int = 2,
        model_a: str | Path | None = None,
        model_b: str | Path | None = None,
        formula: str = "weighted_sum",
        seed_c: int = 3,
        model_c: str | Path | None = None,
        **_ignored: Any,
    ) -> None:
        from autombw_cli.sim.render import Renderer

        self.arch = Arch(arch)
        self.formula = Formula(formula)
        self.target_weights = _target(self.arch, target)
        self.renderer: Renderer = Renderer(self.arch)
        state_a = _state(self.arch, model_a, seed_a)
        if self.formula is Formula.LORA:  # model_b: a LoRA file (default: the built-in)
            target = lora_state(state_a, _lora(self.arch, model_b), self.target_weights)
        else:
            state_b = _state(self.arch, model_b, seed_b)
            state_c = _state(self.arch, model_c, seed_c) if self.formula.needs_c else None
            target = merge_state(state_a, state_b, self.target_weights, state_c)
        self._target_features = self.renderer.unet_features(target)
        self._cache: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()

    @property
    def optimum_score(self) -> float:
        return OPTIMUM_SCORE

    def regret(self, score: float) -> float:
        return OPTIMUM_SCORE - score

    def score(self, images: Sequence[Image], prompts: Sequence[str]) -> list[float]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        return [self._score_one(img, prompt) for img, prompt in zip(images, prompts, strict=True)]

    def target_image(self, params: Any) -> np.ndarray:
        """The target merge's image (``(h, w, 3)`` uint8) for `sim.render.RenderParams`."""
        key = (
            params.prompt,
            params.negative_prompt,
            params.seed,
            params.width,
            params.height,
            params.steps,
            params.cfg_scale,
        )
        hit = self._cache.get(key)
        if hit is None:
            hit = self.renderer.render(self._target_features, params)
            self._cache[key] = hit
            if len(self._cache) > _RENDER_CACHE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return hit

    def _score_one(self, image: Image, prompt: str) -> float:
        from autombw_cli.sim.render import RenderParams

        raw = getattr(image, "info", {}).get("autombw_sim")
        if raw is None:
            raise ScorerError(
                "the sim scorer can only score images from the simulated WebUI "
                "(this one has no autombw_sim PNG chunk)",
                hint="use scorer.name: imagereward with a real WebUI",
            )
        meta = json.loads(raw)
        if meta.get("arch", self.arch.value) != self.arch.value:
            raise ScorerError(
                f"image comes from a {meta.get('arch')} simulator, the sim scorer is set up "
                f"for {self.arch.value}",
                hint="set scorer.options.arch to the simulator's --arch",
            )
        params = RenderParams(
            prompt=meta.get("prompt", prompt),
            negative_prompt=meta.get("negative_prompt", ""),
            seed=int(meta.get("seed", 1)),
            width=int(meta.get("width", image.width)),
            height=int(meta.get("height", image.height)),
            steps=int(meta.get("steps", 20)),
            cfg_scale=float(meta.get("cfg_scale", 7.0)),
        )
        target = self.target_image(params).astype(np.float64) / 255.0
        got = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
        if got.shape != target.shape:
            raise ScorerError(
                f"image is {got.shape[1]}x{got.shape[0]}, the simulator rendered "
                f"{target.shape[1]}x{target.shape[0]}"
            )
        rmse = float(np.sqrt(((got - target) ** 2).mean()))
        return 1.0 / (1.0 + SCORE_SCALE * rmse)


def merge_state(
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    weights: Weights,
    state_c: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The merged state dict exactly as the bridge computes it (same policy, same kernel,
    same dtype); with ``state_c`` the add difference ``A + (B - C) * w``."""
    from autombw_cli.merging.kernels import merge_tensor
    from autombw_cli.merging.plan import weight_of

    out = {}
    for key, a in state_a.items():
        step = weight_of(key, weights)
        if step is None:
            out[key] = a
            continue
        c = None if state_c is None else state_c[key].to(a.dtype)
        out[key] = merge_tensor(a, state_b[key].to(a.dtype), c, step[1])
    return out


def lora_state(
    state_a: Mapping[str, torch.Tensor], placed: PlacedLora, weights: Weights
) -> dict[str, torch.Tensor]:
    """A with the LoRA baked in at ``weights``' strengths, exactly as the bridge and the
    offline bake compute it (`PlacedLora.patched`)."""
    return {key: placed.patched(key, a, weights) for key, a in state_a.items()}


def _lora(arch: Arch, path: str | Path | None) -> PlacedLora:
    """The LoRA of a LoRA search, placed on the built-in checkpoints (their shapes)."""
    from autombw_cli.merging.lora import place_lora, place_modules
    from autombw_cli.sim.checkpoints import key_shapes

    shapes = key_shapes(arch, "tiny")
    try:
        if path is not None:
            return place_lora(path, shapes)
        from autombw_cli.sim.loras import lora_state_dict
        from autombw_cli.sim.server import BUILTIN_LORA, BUILTIN_LORA_SEED

        modules: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in lora_state_dict(arch, seed=BUILTIN_LORA_SEED).items():
            module, _, part = key.partition(".")
            modules.setdefault(module, {})[part] = t
        return place_modules(modules, shapes, source=BUILTIN_LORA)
    except Exception as exc:
        raise ScorerError(f"sim scorer: cannot place the LoRA {path or ''}: {exc}") from exc


def _state(arch: Arch, path: str | Path | None, seed: int) -> dict[str, torch.Tensor]:
    if path is not None:
        from autombw_cli.merging.checkpoint_io import checkpoint

        try:
            with checkpoint(path) as reader:
                return {k: reader.get(k) for k in reader.keys()}  # noqa: SIM118
        except Exception as exc:
            raise ScorerError(f"sim scorer: cannot read {path}: {exc}") from exc
    import torch

    from autombw_cli.sim.checkpoints import random_state_dict

    return random_state_dict(arch, "tiny", seed, torch.float16)


def _target(arch: Arch, target: Mapping[str, float] | Sequence[float] | str | None) -> Weights:
    if target is None:
        return default_target(arch)
    if isinstance(target, Weights):
        return target
    if isinstance(target, Mapping):
        return Weights.from_mapping(arch, target)
    if isinstance(target, str):
        return parse_weights(target, arch)
    from autombw_cli.blocks import Ordering

    return Weights.from_list(arch, [float(v) for v in target], Ordering.RECIPE)
