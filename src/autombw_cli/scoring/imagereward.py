"""Fast batched ImageReward scoring, equal to upstream ``ImageReward.score`` per image.

Upstream scores one image at a time in float32 and re-tokenises the prompt for every image.
Here, per `score` call:

- images are resized/cropped in a thread pool (`Preprocessor`), batch k+1 while the GPU runs
  batch k; only uint8 pixels travel to the device, normalisation happens there;
- each distinct prompt is tokenised once (and cached across calls: payload prompts are fixed);
- ``batch_size`` images go through the BLIP ViT, the BERT cross-attention encoder and the head
  in one forward pass, under autocast (fp16 by default on CUDA; ``model.half()`` breaks the
  upstream model, autocast does not), the MLP head in float32 as upstream;
- the ViT's attention runs through ``scaled_dot_product_attention`` (flash attention on CUDA),
  the same maths as upstream's explicit softmax;
- with ``compile: true`` the encoder is ``torch.compile``d; on CUDA in "reduce-overhead" mode,
  i.e. replayed as CUDA graphs, which removes the Python/launch overhead that otherwise competes
  with the preprocessing threads (+50% at batch 32 on an H200, see BENCHMARKS.md; plain
  "default" mode gained only 3-12%). Shapes are static: a batch of n images is padded to the
  next power of two (at most ``batch_size``), and each such size compiles once (~25 s).

In float32 the scores equal upstream's within 1e-3 (tests/test_scoring_imagereward.py; in
practice ~1e-6); under fp16/bf16 autocast see the tolerance measured in BENCHMARKS.md.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autombw_cli.errors import ScorerError
from autombw_cli.scoring.imagereward_model import (
    IMAGEREWARD_MEAN,
    IMAGEREWARD_STD,
    build_model,
    load_tokenizer,
    require_extra,
    resolve_files,
)
from autombw_cli.scoring.preprocess import Preprocessor, normalize

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image
    from torch import nn

    from autombw_cli.scoring.settings import ScorerSpec

__all__ = ["ImageRewardScorer", "resolve_device", "resolve_precision"]

log = logging.getLogger(__name__)

MAX_PROMPT_TOKENS = 35  # upstream: padding="max_length", truncation=True, max_length=35
_TOKEN_CACHE_SIZE = 4096


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device if present, else the CPU; checks CUDA devices exist."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ScorerError(
                f"scorer.device is {name!r} but this torch sees no CUDA device",
                hint="install a CUDA build of torch, or set scorer.device: cpu (slow)",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ScorerError(
                f"scorer.device is {name!r} but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible",
                hint="pick an index below that (check CUDA_VISIBLE_DEVICES)",
            )
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32."""
    import torch

    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def vit_forward_sdpa(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Upstream BLIP ``VisionTransformer.forward`` (eval mode) with fused attention."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    x = vit.patch_embed(x)
    x = torch.cat((vit.cls_token.expand(b, -1, -1), x), dim=1)
    x = x + vit.pos_embed[:, : x.size(1), :]
    for blk in vit.blocks:
        attn = blk.attn
        y = blk.norm1(x)
        n, c = y.shape[1], y.shape[2]
        qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, c // attn.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        x = x + attn.proj(y.transpose(1, 2).reshape(b, n, c))
        x = x + blk.mlp(blk.norm2(x))
    return vit.norm(x)


class ImageRewardScorer:
    """The ``imagereward`` scorer. Build it with `from_spec` (config) or `from_files`."""

    name = "imagereward"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        precision: str = "auto",
        compile: bool | str = False,
        attention: str = "sdpa",
        workers: int | None = None,
    ) -> None:
        import torch

        if attention not in {"sdpa", "upstream"}:
            raise ValueError(f"attention must be 'sdpa' or 'upstream', not {attention!r}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.attention = attention
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        vit = self.model.blip.visual_encoder
        self.image_size = int(vit.patch_embed.img_size[0])
        self._prep = Preprocessor(self.image_size, workers=workers)
        self._tokens: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        if compile is True:  # CUDA graphs where they exist (see the module docstring)
            compile = "reduce-overhead" if self.device.type == "cuda" else "default"
        self._compile_mode: str | None = compile or None
        self._encode = self._encode_eager
        if self._compile_mode is not None:
            self._encode = torch.compile(self._encode_eager, mode=self._compile_mode, dynamic=False)
        if self.device.type == "cpu":
            log.warning("ImageReward runs on the CPU: expect seconds per image (set scorer.device)")

    # construction ------------------------------------------------------------------------
    @classmethod
    def from_files(
        cls,
        checkpoint: Path | None = None,
        med_config: Path | None = None,
        tokenizer: Path | None = None,
        download_root: Path | None = None,
        **kwargs: Any,
    ) -> ImageRewardScorer:
        """Load from local files; anything unset is fetched from the hub (and cached)."""
        require_extra()
        files = resolve_files(checkpoint, med_config, tokenizer, download_root)
        return cls(build_model(files), load_tokenizer(files.tokenizer), **kwargs)

    @classmethod
    def from_spec(cls, spec: ScorerSpec) -> ImageRewardScorer:
        options = dict(spec.options)
        unknown = set(options) - {"attention", "workers"}
        if unknown:
            raise ScorerError(
                f"unknown imagereward option(s): {', '.join(sorted(unknown))}",
                hint="imagereward takes options: attention (sdpa|upstream), workers",
            )
        p = spec.paths
        return cls.from_files(
            p.checkpoint,
            p.med_config,
            p.tokenizer,
            p.download_root,
            device=resolve_device(spec.device),
            batch_size=spec.batch_size,
            precision=spec.precision,
            compile=spec.compile,
            **options,
        )

    # scoring -----------------------------------------------------------------------------
    def _tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[N, 35]`` ids and attention mask, each distinct prompt tokenised once."""
        import torch

        missing = [p for p in dict.fromkeys(prompts) if p not in self._tokens]
        if missing:
            enc = self.tokenizer(
                missing,
                padding="max_length",
                truncation=True,
                max_length=MAX_PROMPT_TOKENS,
                return_tensors="pt",
            )
            for i, prompt in enumerate(missing):
                self._tokens[prompt] = (enc.input_ids[i], enc.attention_mask[i])
        for prompt in dict.fromkeys(prompts):
            self._tokens.move_to_end(prompt)
        while len(self._tokens) > _TOKEN_CACHE_SIZE:
            self._tokens.popitem(last=False)
        ids = torch.stack([self._tokens[p][0] for p in prompts])
        mask = torch.stack([self._tokens[p][1] for p in prompts])
        return ids, mask

    def _encode_eager(
        self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Pixels ``[B,3,H,W]`` float32 + prompt tokens → the text encoder's CLS feature."""
        import torch

        blip = self.model.blip
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            if self.attention == "sdpa":
                image_embeds = vit_forward_sdpa(blip.visual_encoder, pixels)
            else:
                image_embeds = blip.visual_encoder(pixels)
            image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=pixels.device)
            out = blip.text_encoder(
                ids,
                attention_mask=mask,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_atts,
                return_dict=True,
            )
        return out.last_hidden_state[:, 0, :].float()

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        rewards = self.model.mlp(features)  # float32, outside autocast, as upstream
        return ((rewards - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).squeeze(-1)

    def score(self, images: Sequence[Image], prompts: Sequence[str]) -> list[float]:
        """One raw ImageReward score per image (``prompts[i]`` belongs to ``images[i]``)."""
        import torch

        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return []
        with self._lock, torch.inference_mode():
            ids, mask = self._tokenize(prompts)
            bs = self.batch_size
            spans = [(i, min(i + bs, len(images))) for i in range(0, len(images), bs)]
            pending = [self._prep.submit(images[a:b], a) for a, b in spans]
            outputs = []
            for (a, b), batch in zip(spans, pending, strict=True):
                pixels = torch.from_numpy(batch.result())
                if self.device.type == "cuda":
                    pixels = pixels.pin_memory()
                pixels = normalize(pixels.to(self.device, non_blocking=True))
                bids = ids[a:b].to(self.device, non_blocking=True)
                bmask = mask[a:b].to(self.device, non_blocking=True)
                n = b - a
                bucket = min(bs, 1 << (n - 1).bit_length())
                if self._compile_mode is not None and n < bucket:  # static shapes: pad
                    pad = bucket - n
                    pixels = torch.cat([pixels, pixels[-1:].expand(pad, -1, -1, -1)])
                    bids = torch.cat([bids, bids[-1:].expand(pad, -1)])
                    bmask = torch.cat([bmask, bmask[-1:].expand(pad, -1)])
                if self._compile_mode == "reduce-overhead":
                    torch.compiler.cudagraph_mark_step_begin()
                features = self._encode(pixels, bids, bmask)[:n].clone()
                outputs.append(self._head(features))
            scores = torch.cat(outputs).cpu()
        if not torch.isfinite(scores).all():
            raise ScorerError(
                "ImageReward produced a non-finite score",
                hint="try scorer.precision: fp32 or bf16 (fp16 overflowed)",
            )
        return [float(s) for s in scores.tolist()]

    def close(self) -> None:
        """Stop the preprocessing threads (the model is freed with the object)."""
        self._prep.close()

    def __enter__(self) -> ImageRewardScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
