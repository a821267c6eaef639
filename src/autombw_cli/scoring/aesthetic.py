"""CLIP aesthetic scorers: ``laion`` (LAION aesthetic predictor v2) and ``chad``.

Both are the improved-aesthetic-predictor MLP (768 → 1024 → 128 → 64 → 16 → 1, no activations)
on the L2-normalised image embedding of OpenAI CLIP ViT-L/14, as auto-MBW-rt's
``score_laion_avs2``/``score_chadscorer`` and sd-webui-bayesian-merger compute them; they differ
only in the head's weights:

- ``laion``: ``sac+logos+ava1-l14-linearMSE.pth`` from
  https://github.com/christophschuhmann/improved-aesthetic-predictor
- ``chad``: ``chadscorer.pth`` (grexzen/SD-Chad).

CLIP comes from the ``clip`` package (openai-clip, already needed by image-reward):
``paths.clip`` is a local ``ViT-L-14.pt`` (unset: downloaded by ``clip`` into
``paths.download_root`` or ``~/.cache/clip``); ``paths.head`` must be a local file. Scores are
roughly 1..10 and ignore the prompt. Batching, threaded preprocessing and autocast work as for
ImageReward.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autombw_cli.errors import ScorerError
from autombw_cli.scoring.imagereward import resolve_device, resolve_precision
from autombw_cli.scoring.preprocess import Preprocessor, normalize

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image
    from torch import nn

    from autombw_cli.scoring.settings import ScorerSpec

__all__ = ["HEADS", "AestheticScorer", "aesthetic_head"]

log = logging.getLogger(__name__)

HEADS = {
    "laion": (
        "sac+logos+ava1-l14-linearMSE.pth",
        "https://github.com/christophschuhmann/improved-aesthetic-predictor",
    ),
    "chad": ("chadscorer.pth", "https://github.com/grexzen/SD-Chad"),
}


def aesthetic_head(input_size: int = 768) -> nn.Module:
    """The improved-aesthetic-predictor MLP; its state-dict keys are ``layers.{0,2,4,6,7}.*``."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(input_size, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


def _load_head(path: Path, input_size: int) -> nn.Module:
    import torch
    from torch import nn

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ScorerError(f"cannot read the aesthetic head {path}: {exc}") from exc
    head = nn.Module()
    head.layers = aesthetic_head(input_size)
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise ScorerError(
            f"{path} is not an aesthetic-predictor head for a {input_size}-wide CLIP: {exc}",
            hint="laion: sac+logos+ava1-l14-linearMSE.pth; chad: chadscorer.pth (ViT-L/14)",
        ) from exc
    return head.eval().requires_grad_(False)


def _clip_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """OpenAI ships ViT-L-14.pt as a TorchScript archive; a plain state dict works too.
    (``clip.load`` itself cannot read a state dict with current torch: after the failed
    TorchScript attempt it reads on from the end of the file.)"""
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu").state_dict()
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=True)


def load_clip(path: Path | None, download_root: Path | None) -> nn.Module:
    """OpenAI CLIP ViT-L/14 as float32 on the CPU, from a local file (JIT archive or state
    dict) or downloaded by the ``clip`` package."""
    try:
        import clip
    except ImportError as exc:
        raise ScorerError(
            f"the clip package (openai-clip) cannot be imported: {exc}",
            hint='pip install "autombw[imagereward]" (it needs setuptools<81)',
        ) from exc
    if path is not None and not path.expanduser().is_file():
        raise ScorerError(
            f"scorer.paths.clip: {path} does not exist (OpenAI CLIP ViT-L/14 weights)",
            hint="it comes from the clip package's download of ViT-L/14 (ViT-L-14.pt)",
        )
    try:
        if path is None:
            root = str(download_root.expanduser()) if download_root is not None else None
            model, _ = clip.load("ViT-L/14", device="cpu", jit=False, download_root=root)
        else:
            model = clip.model.build_model(_clip_state_dict(path.expanduser()))
    except Exception as exc:
        raise ScorerError(
            f"cannot load CLIP from {path or 'the clip download of ViT-L/14'}: "
            f"{type(exc).__name__}: {exc}",
            hint="set scorer.paths.clip to a local ViT-L-14.pt",
        ) from exc
    return model.float().eval().requires_grad_(False)


class AestheticScorer:
    """Batched CLIP + aesthetic MLP scorer (``laion`` / ``chad``)."""

    def __init__(
        self,
        clip_model: nn.Module,
        head: nn.Module,
        *,
        name: str = "laion",
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        precision: str = "auto",
        workers: int | None = None,
    ) -> None:
        import torch

        self.name = name
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.clip = clip_model.to(self.device).eval()
        self.head = head.to(self.device).eval()
        self._prep = Preprocessor(int(self.clip.visual.input_resolution), workers=workers)
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: ScorerSpec) -> AestheticScorer:
        kind = spec.name if spec.name in HEADS else "laion"
        filename, source = HEADS[kind]
        if spec.paths.head is None:
            raise ScorerError(
                f"scorer {spec.name!r} needs scorer.paths.head: the aesthetic MLP head",
                hint=f"download {filename} from {source} and point paths.head at it",
            )
        head_path = spec.paths.head.expanduser()
        if not head_path.is_file():
            raise ScorerError(
                f"scorer.paths.head: {head_path} does not exist",
                hint=f"download {filename} from {source}",
            )
        clip_model = load_clip(spec.paths.clip, spec.paths.download_root)
        head = _load_head(head_path, int(clip_model.visual.output_dim))
        options: dict[str, Any] = dict(spec.options)
        unknown = set(options) - {"workers"}
        if unknown:
            raise ScorerError(f"unknown {spec.name} option(s): {', '.join(sorted(unknown))}")
        return cls(
            clip_model,
            head,
            name=spec.name,
            device=resolve_device(spec.device),
            batch_size=spec.batch_size,
            precision=spec.precision,
            **options,
        )

    def score(self, images: Sequence[Image], prompts: Sequence[str]) -> list[float]:
        """Aesthetic score per image; the prompts are not used."""
        import torch
        import torch.nn.functional as F

        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return []
        with self._lock, torch.inference_mode():
            bs = self.batch_size
            spans = [(i, min(i + bs, len(images))) for i in range(0, len(images), bs)]
            pending = [self._prep.submit(images[a:b], a) for a, b in spans]
            outputs = []
            for batch in pending:
                pixels = torch.from_numpy(batch.result())
                if self.device.type == "cuda":
                    pixels = pixels.pin_memory()
                pixels = normalize(pixels.to(self.device, non_blocking=True))
                with torch.autocast(
                    self.device.type,
                    dtype=self.autocast_dtype or torch.float32,
                    enabled=self.autocast_dtype is not None,
                ):
                    features = self.clip.encode_image(pixels)
                features = F.normalize(features.float(), dim=-1)
                outputs.append(self.head.layers(features).squeeze(-1))
            scores = torch.cat(outputs).cpu()
        if not torch.isfinite(scores).all():
            raise ScorerError(f"{self.name} produced a non-finite score")
        return [float(s) for s in scores.tolist()]

    def close(self) -> None:
        self._prep.close()
