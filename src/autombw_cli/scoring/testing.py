"""Random-weight ImageReward files and synthetic images, for tests and benchmarks.

The hub is unreachable in CI, so tests and ``benchmarks/scoring.py`` build their own checkpoint:
the real architecture (``scale="full"``: BLIP ViT-L/16 + 12-layer BERT, ~447M parameters, the
cost of the real model) or a shrunken one for fast CPU tests (``scale="tiny"``: a 2-block ViT and
a 2-layer BERT with the real widths where the upstream code hard-codes them). The MLP head is
re-drawn with a larger spread than upstream's init so that different images get clearly
different scores. A small ``vocab.txt`` stands in for bert-base-uncased's.
"""

from __future__ import annotations

import contextlib
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from autombw_cli.scoring.imagereward_model import (
    ImageRewardFiles,
    VitShape,
    build_network,
    import_upstream,
    load_tokenizer,
)

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "FULL_VIT",
    "TINY_VIT",
    "med_config",
    "synthetic_images",
    "upstream_imagereward",
    "write_random_imagereward",
]

TINY_VIT = VitShape(embed_dim=256, depth=2, patch_size=16, image_size=224, mlp_ratio=4.0)
FULL_VIT = VitShape(embed_dim=1024, depth=24, patch_size=16, image_size=224, mlp_ratio=4.0)

_WORDS = (  # noqa: SIM905
    "a an the of in on with and photo painting portrait landscape cat dog girl boy woman man "
    "red blue green sky tree house city night day sun moon river mountain detailed best quality "
    "masterpiece anime style sitting standing flower field dress hair long short smiling"
).split()


def med_config(layers: int = 12, intermediate: int = 3072, vocab_size: int = 30524) -> dict:
    """ImageReward's ``med_config.json`` (BERT-base with cross-attention), optionally smaller."""
    return {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": 12,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
        "encoder_width": 768,
        "add_cross_attention": True,
    }


def write_random_imagereward(
    folder: Path, *, scale: Literal["full", "tiny"] = "tiny", seed: int = 0
) -> ImageRewardFiles:
    """Write ``ImageReward.pt``, ``med_config.json`` and ``vocab.txt`` with random weights."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = (
        med_config(vocab_size=len(vocab) + 2)
        if scale == "full"
        else med_config(layers=2, intermediate=1024, vocab_size=len(vocab) + 2)
    )
    (folder / "med_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    torch.manual_seed(seed)
    model = build_network(
        import_upstream(), folder / "med_config.json", FULL_VIT if scale == "full" else TINY_VIT
    )
    with torch.no_grad():
        for layer in model.mlp.layers:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0.0, 1.0 / layer.in_features**0.5)
                layer.bias.zero_()
    torch.save(model.state_dict(), folder / "ImageReward.pt")
    return ImageRewardFiles(
        folder / "ImageReward.pt", folder / "med_config.json", folder / "vocab.txt"
    )


def synthetic_images(n: int, size: int = 512, seed: int = 0) -> list[Image]:
    """``n`` different RGB images: colour gradients, blobs and noise (never all zeros)."""
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = []
    for _ in range(n):
        a, b, c = rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3), rng.uniform(0, 1, 3)
        base = c + a * xx[..., None] + b * yy[..., None]
        cx, cy, r = [*rng.uniform(0.2, 0.8, 2).tolist(), rng.uniform(0.05, 0.3)]
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        base = base + blob * rng.uniform(-1, 1, 3) + rng.normal(0, 0.05, (size, size, 3))
        pixels = (np.clip(base, 0, 1) * 255).astype(np.uint8)
        images.append(PILImage.fromarray(pixels, "RGB"))
    return images


def _upstream_modules(prefer_package: bool) -> types.SimpleNamespace:
    if prefer_package:
        try:
            import ImageReward
            from ImageReward.models.BLIP import blip_pretrain, vit

            return types.SimpleNamespace(
                load=ImageReward.load, blip_pretrain=blip_pretrain, vit=vit
            )
        except ImportError:  # e.g. diffusers/datasets missing: use the model modules alone
            pass
    up = import_upstream()
    return types.SimpleNamespace(
        load=None, blip_pretrain=up.blip_pretrain, vit=up.vit, image_reward=up.image_reward
    )


@contextlib.contextmanager
def upstream_imagereward(
    files: ImageRewardFiles,
    device: str = "cpu",
    *,
    vit: VitShape | None = None,
    prefer_package: bool = True,
) -> Iterator[Any]:
    """The UPSTREAM ``ImageReward`` model (its class, and its ``ImageReward.load`` when the full
    package imports), loaded from ``files``, for comparisons.

    Two upstream functions are swapped while it loads and put back afterwards:
    ``init_tokenizer`` (upstream downloads bert-base-uncased from the hub; this builds the same
    tokenizer from ``files.tokenizer``: a mock of a hub download) and, when ``vit`` is given,
    ``create_vit`` (upstream hard-codes ViT-L; this builds the shrunken ViT of a tiny checkpoint).
    """
    import torch

    up = _upstream_modules(prefer_package)
    module = up.blip_pretrain
    saved = {name: getattr(module, name) for name in ("init_tokenizer", "create_vit")}
    module.init_tokenizer = lambda: load_tokenizer(files.tokenizer)
    if vit is not None:

        def small_vit(kind: str, image_size: int, *args: object, **kwargs: object) -> tuple:
            net = up.vit.VisionTransformer(
                img_size=image_size,
                patch_size=vit.patch_size,
                embed_dim=vit.embed_dim,
                depth=vit.depth,
                num_heads=vit.num_heads,
                mlp_ratio=vit.mlp_ratio,
            )
            return net, vit.embed_dim

        module.create_vit = small_vit
    try:
        if up.load is not None:  # the public upstream loader, given local paths
            model = up.load(str(files.checkpoint), device=device, med_config=str(files.med_config))
        else:  # the same steps as ImageReward.load
            state = torch.load(files.checkpoint, map_location="cpu", weights_only=True)
            model = up.image_reward.ImageReward(med_config=str(files.med_config), device=device)
            model = model.to(device)
            model.load_state_dict(state, strict=False)
            model.eval()
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
    yield model
