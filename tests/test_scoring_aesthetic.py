"""The CLIP aesthetic scorers (laion, chad): batched scores equal the per-image computation of
upstream's ``AestheticScore.score`` / auto-MBW-rt's ``score_chadscorer``.

No hub here: the test builds a small random CLIP with the ``clip`` package's own classes
(2 vision blocks instead of 24, the real 768-wide embedding the head expects), saves it as a
state dict and loads it through ``clip.load`` like a real ``ViT-L-14.pt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autombw_cli.errors import ScorerError
from autombw_cli.scoring import ScorerConfig, ScorerPaths, create_scorer
from autombw_cli.scoring.aesthetic import AestheticScorer, aesthetic_head
from autombw_cli.scoring.testing import synthetic_images

clip = pytest.importorskip("clip")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("aesthetic")
    torch.manual_seed(0)
    model = clip.model.CLIP(
        embed_dim=768,
        image_resolution=224,
        vision_layers=2,
        vision_width=128,
        vision_patch_size=32,
        context_length=77,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=1,
    )
    torch.save(model.state_dict(), folder / "ViT-L-14.pt")
    head = nn.Module()
    head.layers = aesthetic_head(768)
    with torch.no_grad():
        for layer in head.layers:
            if isinstance(layer, nn.Linear):
                layer.weight.normal_(0, 2.0 / layer.in_features**0.5)
    torch.save(head.state_dict(), folder / "head.pth")
    return folder / "ViT-L-14.pt", folder / "head.pth"


def reference_scores(clip_path: Path, head_path: Path, images: list) -> list[float]:
    """Upstream ``AestheticScore.score`` per image (clip.load + preprocess + normalize + MLP)."""
    # clip.load cannot read a plain state dict with current torch (see aesthetic.py); build the
    # model and its preprocessing the way clip.load does
    model = clip.model.build_model(torch.load(clip_path, weights_only=True)).float().eval()
    preprocess = clip.clip._transform(model.visual.input_resolution)
    head = nn.Module()
    head.layers = aesthetic_head(768)
    head.load_state_dict(torch.load(head_path, weights_only=True))
    head.eval()
    out = []
    with torch.no_grad():
        for im in images:
            x = preprocess(im).unsqueeze(0)
            features = F.normalize(model.encode_image(x)).float()
            out.append(head.layers(features).item())
    return out


def test_batched_equals_per_image_reference(weights: tuple[Path, Path]) -> None:
    clip_path, head_path = weights
    images = synthetic_images(5, size=300, seed=4)
    expected = reference_scores(clip_path, head_path, images)
    assert max(expected) - min(expected) > 1e-3
    for name in ("laion", "chad"):
        scorer = create_scorer(
            ScorerConfig(
                name=name,
                device="cpu",
                batch_size=2,
                paths=ScorerPaths(clip=clip_path, head=head_path),
            )
        )
        assert isinstance(scorer, AestheticScorer)
        assert scorer.name == name
        try:
            ours = scorer.score(images, ["ignored"] * 5)
            assert ours == pytest.approx(expected, abs=1e-4)
            assert scorer.score(images[:1], ["a different prompt"]) == pytest.approx(
                expected[:1], abs=1e-4
            )
        finally:
            scorer.close()


def test_missing_or_wrong_files(weights: tuple[Path, Path], tmp_path: Path) -> None:
    clip_path, head_path = weights
    with pytest.raises(ScorerError, match=r"needs scorer\.paths\.head") as err:
        create_scorer(ScorerConfig(name="laion", device="cpu", paths=ScorerPaths(clip=clip_path)))
    assert "improved-aesthetic-predictor" in (err.value.hint or "")
    with pytest.raises(ScorerError, match=r"paths\.clip: .* does not exist"):
        create_scorer(
            ScorerConfig(
                name="chad",
                device="cpu",
                paths=ScorerPaths(clip=tmp_path / "none.pt", head=head_path),
            )
        )
    small = nn.Module()
    small.layers = aesthetic_head(512)
    torch.save(small.state_dict(), tmp_path / "b32.pth")
    with pytest.raises(ScorerError, match="not an aesthetic-predictor head for a 768-wide CLIP"):
        create_scorer(
            ScorerConfig(
                name="laion",
                device="cpu",
                paths=ScorerPaths(clip=clip_path, head=tmp_path / "b32.pth"),
            )
        )


def test_torchscript_archive_like_openai_ships(weights: tuple[Path, Path], tmp_path: Path) -> None:
    clip_path, head_path = weights
    model = clip.model.build_model(torch.load(clip_path, weights_only=True)).float().eval()
    with torch.no_grad():
        traced = torch.jit.trace(
            model, (torch.zeros(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long))
        )
    traced.save(str(tmp_path / "ViT-L-14.pt"))
    images = synthetic_images(2, size=224, seed=5)
    expected = reference_scores(clip_path, head_path, images)
    scorer = create_scorer(
        ScorerConfig(
            name="laion",
            device="cpu",
            paths=ScorerPaths(clip=tmp_path / "ViT-L-14.pt", head=head_path),
        )
    )
    try:
        assert scorer.score(images, ["", ""]) == pytest.approx(expected, abs=1e-4)
    finally:
        scorer.close()


@pytest.mark.gpu
def test_cuda_fp16_autocast_close_to_fp32_reference(weights: tuple[Path, Path]) -> None:
    clip_path, head_path = weights
    images = synthetic_images(40, size=512, seed=6)
    expected = reference_scores(clip_path, head_path, images)
    scorer = create_scorer(
        ScorerConfig(
            name="laion",
            device="cuda",
            batch_size=16,
            paths=ScorerPaths(clip=clip_path, head=head_path),
        )
    )
    try:
        ours = scorer.score(images, [""] * len(images))
    finally:
        scorer.close()
    diff = max(abs(a - b) for a, b in zip(ours, expected, strict=True))
    print(f"laion fp16 autocast vs fp32 reference: max abs diff {diff:.2e}")
    assert diff < 1e-2
