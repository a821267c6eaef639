"""Our batched ImageReward equals upstream ``ImageReward.score`` image by image.

The hub is unreachable here and in CI, so every test builds its own random-weight checkpoint,
``med_config.json`` and a small ``vocab.txt`` (`autombw_cli.scoring.testing`). The reference is
the UPSTREAM ``ImageReward`` class from the installed image-reward package and its per-image
``score()``; two things in it are patched for the test (and only for the reference model):

- ``init_tokenizer``: upstream calls ``BertTokenizer.from_pretrained("bert-base-uncased")``, a
  hub download; the patch builds the same tokenizer (plus ``[DEC]``/``[ENC]``) from the local
  vocab file. This is a mock of a hub download, nothing else.
- on the CPU only, ``create_vit``: upstream hard-codes the 24-layer ViT-L (8 s per image on a
  2-core CI machine), so the CPU test uses a 2-block ViT and a 2-layer BERT. The GPU test uses
  the full architecture and patches only the tokenizer.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from autombw_cli.errors import ScorerError
from autombw_cli.scoring import ScorerConfig, ScorerPaths, create_scorer
from autombw_cli.scoring.imagereward import ImageRewardScorer
from autombw_cli.scoring.imagereward_model import (
    ImageRewardFiles,
    import_upstream,
    load_tokenizer,
    resolve_files,
)
from autombw_cli.scoring.testing import TINY_VIT, synthetic_images, write_random_imagereward

PROMPTS = [
    "a photo of a cat",
    "a red house in the city at night",
    "a photo of a cat",
    "masterpiece, best quality, girl with long hair, smiling, " * 4,  # > 35 tokens: truncated
    "",
    "a photo of a cat",
]


def _upstream_modules() -> types.SimpleNamespace:
    """The upstream modules: the installed package if it imports (CI), else the model modules
    alone (GPU machines without diffusers/datasets); both are upstream's own code."""
    try:
        import ImageReward
        from ImageReward.models.BLIP import blip_pretrain, vit

        return types.SimpleNamespace(
            load=ImageReward.load, blip_pretrain=blip_pretrain, vit=vit, package=True
        )
    except ImportError:
        up = import_upstream()
        return types.SimpleNamespace(
            load=None,
            blip_pretrain=up.blip_pretrain,
            vit=up.vit,
            image_reward=up.image_reward,
            package=False,
        )


@contextlib.contextmanager
def upstream_model(files: ImageRewardFiles, device: str, *, tiny: bool) -> Iterator[object]:
    """Upstream ``ImageReward`` loaded from ``files`` (see the module docstring for patches)."""
    up = _upstream_modules()
    mp = pytest.MonkeyPatch()
    try:
        # mock of the hub download of bert-base-uncased: the same tokenizer from a local file
        mp.setattr(up.blip_pretrain, "init_tokenizer", lambda: load_tokenizer(files.tokenizer))
        if tiny:

            def tiny_vit(vit, image_size, *args, **kwargs):
                shape = TINY_VIT
                net = up.vit.VisionTransformer(
                    img_size=image_size,
                    patch_size=shape.patch_size,
                    embed_dim=shape.embed_dim,
                    depth=shape.depth,
                    num_heads=shape.num_heads,
                )
                return net, shape.embed_dim

            mp.setattr(up.blip_pretrain, "create_vit", tiny_vit)
        if up.load is not None:  # the public upstream loader, given local paths
            model = up.load(str(files.checkpoint), device=device, med_config=str(files.med_config))
        else:  # the same steps as ImageReward.load
            state = torch.load(files.checkpoint, map_location="cpu", weights_only=True)
            model = up.image_reward.ImageReward(med_config=str(files.med_config), device=device)
            model = model.to(device)
            model.load_state_dict(state, strict=False)
            model.eval()
        yield model
    finally:
        mp.undo()


def upstream_scores(model: object, images: list, prompts: list[str]) -> list[float]:
    with torch.no_grad():
        return [model.score(p, im) for p, im in zip(prompts, images, strict=True)]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> ImageRewardFiles:
    return write_random_imagereward(tmp_path_factory.mktemp("ir-tiny"), scale="tiny", seed=1)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    imgs = synthetic_images(4, size=320, seed=7)
    wide = synthetic_images(1, size=480, seed=8)[0].resize((640, 480))  # not square: crop
    rgba = synthetic_images(1, size=256, seed=9)[0].convert("RGBA")  # converted after resize
    return [*imgs[:3], wide, rgba, imgs[3].convert("L")]


@pytest.fixture(scope="module")
def reference(tiny_files: ImageRewardFiles, images: list) -> list[float]:
    with upstream_model(tiny_files, "cpu", tiny=True) as model:
        return upstream_scores(model, images, PROMPTS)


def test_scores_differ_between_images(reference: list[float]) -> None:
    assert max(reference) - min(reference) > 0.05  # otherwise the equality test proves little


@pytest.mark.parametrize(("batch_size", "attention"), [(4, "sdpa"), (1, "upstream"), (8, "sdpa")])
def test_batched_equals_upstream_fp32_cpu(
    tiny_files: ImageRewardFiles,
    images: list,
    reference: list[float],
    batch_size: int,
    attention: str,
) -> None:
    with ImageRewardScorer.from_files(
        tiny_files.checkpoint,
        tiny_files.med_config,
        tiny_files.tokenizer,
        device="cpu",
        batch_size=batch_size,
        attention=attention,
    ) as scorer:
        ours = scorer.score(images, PROMPTS)
    assert ours == pytest.approx(reference, abs=1e-3)
    assert max(abs(a - b) for a, b in zip(ours, reference, strict=True)) < 1e-4


def test_create_scorer_from_config_with_tokenizer_folder(
    tiny_files: ImageRewardFiles, images: list, reference: list[float], tmp_path: Path
) -> None:
    folder = tmp_path / "bert-base-uncased"
    load_tokenizer(tiny_files.tokenizer).save_pretrained(str(folder))
    config = ScorerConfig(
        device="cpu",
        batch_size=3,
        paths=ScorerPaths(
            checkpoint=tiny_files.checkpoint, med_config=tiny_files.med_config, tokenizer=folder
        ),
    )
    scorer = create_scorer(config)
    assert isinstance(scorer, ImageRewardScorer)
    try:
        assert scorer.score(images, PROMPTS) == pytest.approx(reference, abs=1e-3)
        # a second call hits the prompt cache and gives the same scores
        assert scorer.score(images[:2], PROMPTS[:2]) == pytest.approx(reference[:2], abs=1e-3)
    finally:
        scorer.close()


def test_missing_local_files_are_named(tiny_files: ImageRewardFiles, tmp_path: Path) -> None:
    with pytest.raises(ScorerError, match=r"scorer.paths.checkpoint: .*nope.pt does not exist"):
        resolve_files(tmp_path / "nope.pt", tiny_files.med_config, tiny_files.tokenizer)
    with pytest.raises(ScorerError, match=r"scorer.paths.tokenizer: .*does not exist") as err:
        resolve_files(tiny_files.checkpoint, tiny_files.med_config, tmp_path / "vocab.txt")
    assert "bert-base-uncased" in (err.value.hint or "")


def test_offline_without_files_says_what_to_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ScorerError, match=r"ImageReward\.pt is not in .*HF_HUB_OFFLINE") as err:
        resolve_files(download_root=tmp_path)
    assert "huggingface.co/THUDM/ImageReward" in (err.value.hint or "")
    # files already in download_root are used without the hub
    (tmp_path / "ImageReward.pt").write_bytes(b"x")
    (tmp_path / "med_config.json").write_text("{}")
    files = resolve_files(download_root=tmp_path)
    assert files.checkpoint == tmp_path / "ImageReward.pt"
    assert files.tokenizer is None


def test_wrong_checkpoint_is_refused(tiny_files: ImageRewardFiles, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ScorerError, match="not an ImageReward checkpoint"):
        ImageRewardScorer.from_files(bad, tiny_files.med_config, tiny_files.tokenizer)
    partial = tmp_path / "partial.pt"
    state = torch.load(tiny_files.checkpoint, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("mlp.")}, partial)
    with pytest.raises(ScorerError, match=r"lacks 10 ImageReward weights \(first: mlp"):
        ImageRewardScorer.from_files(partial, tiny_files.med_config, tiny_files.tokenizer)
    med = tmp_path / "med_config.json"
    med.write_text(
        tiny_files.med_config.read_text().replace(
            '"num_hidden_layers": 2', '"num_hidden_layers": 3'
        )
    )
    with pytest.raises(ScorerError, match=r"lacks \d+ ImageReward weights"):
        ImageRewardScorer.from_files(tiny_files.checkpoint, med, tiny_files.tokenizer)


def test_unknown_option_is_refused(tiny_files: ImageRewardFiles) -> None:
    config = ScorerConfig(device="cpu", options={"turbo": True})
    with pytest.raises(ScorerError, match="unknown imagereward option"):
        create_scorer(config)


# ------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
def test_full_architecture_on_gpu(tmp_path: Path) -> None:
    """Full BLIP ViT-L + 12-layer BERT: fp32 batched within 1e-3 of upstream fp32 per image;
    fp16 and bf16 autocast within the tolerance documented in BENCHMARKS.md."""
    files = write_random_imagereward(tmp_path, scale="full", seed=2)
    imgs = synthetic_images(24, size=512, seed=11)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(imgs))]
    with upstream_model(files, "cuda", tiny=False) as model:
        ref = upstream_scores(model, imgs, prompts)
        del model
    torch.cuda.empty_cache()
    assert max(ref) - min(ref) > 0.05
    results = {}
    for precision in ("fp32", "fp16", "bf16"):
        with ImageRewardScorer.from_files(
            files.checkpoint,
            files.med_config,
            files.tokenizer,
            device="cuda",
            batch_size=16,
            precision=precision,
        ) as scorer:
            results[precision] = scorer.score(imgs, prompts)
    diffs = {k: max(abs(a - b) for a, b in zip(v, ref, strict=True)) for k, v in results.items()}
    print("max abs diff vs upstream fp32:", diffs)
    assert diffs["fp32"] < 1e-3
    assert diffs["fp16"] < 0.05
    assert diffs["bf16"] < 0.15
