"""Scorer protocol, registry (built-ins + entry points), ensembles and the scorer config."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from autombw_cli.errors import ConfigError, ScorerError
from autombw_cli.scoring import (
    EnsembleScorer,
    Member,
    Normalization,
    Scorer,
    ScorerConfig,
    create_scorer,
    known_scorer_names,
    sigmoid,
)
from autombw_cli.scoring.ensemble import RunningStats
from autombw_cli.scoring.protocol import MemberScorer
from autombw_cli.scoring.testing import synthetic_images


class BrightnessScorer:
    """A tiny real scorer: mean brightness in [-1, 1] (negative for dark images) + offset."""

    name = "brightness"

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.calls: list[int] = []

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        if len(images) != len(prompts):
            raise ValueError("length mismatch")
        self.calls.append(len(images))
        return [
            float(np.asarray(im.convert("L"), dtype=np.float64).mean() / 127.5 - 1 + self.offset)
            for im in images
        ]

    def close(self) -> None:
        """Holds nothing."""


def solid(value: int) -> Image.Image:
    return Image.new("RGB", (64, 64), (value, value, value))


# ---------------------------------------------------------------------------- contract
SCORERS = {
    "brightness": lambda: BrightnessScorer(),
    "ensemble-raw": lambda: EnsembleScorer([Member(BrightnessScorer(), 2.0)]),
}


@pytest.fixture(params=sorted(SCORERS))
def scorer(request: pytest.FixtureRequest) -> Scorer:
    return SCORERS[request.param]()


class TestScorerContract:
    def test_is_a_scorer(self, scorer: Scorer) -> None:
        assert isinstance(scorer, Scorer)
        assert isinstance(scorer.name, str) and scorer.name
        # the optional capability is declared by the ensemble only
        assert isinstance(scorer, MemberScorer) == isinstance(scorer, EnsembleScorer)

    def test_batch_equals_per_image(self, scorer: Scorer) -> None:
        images = synthetic_images(5, size=64, seed=3)
        prompts = [f"prompt {i % 2}" for i in range(5)]
        batch = scorer.score(images, prompts)
        single = [scorer.score([im], [p])[0] for im, p in zip(images, prompts, strict=True)]
        assert batch == pytest.approx(single, abs=1e-9)
        assert len(set(batch)) == 5

    def test_negative_scores_survive(self, scorer: Scorer) -> None:
        scores = scorer.score([solid(10), solid(240)], ["dark", "bright"])
        assert scores[0] < 0 < scores[1]

    def test_empty_and_mismatch(self, scorer: Scorer) -> None:
        assert scorer.score([], []) == []
        with pytest.raises(ValueError):
            scorer.score([solid(1)], [])


# ---------------------------------------------------------------------------- ensemble
def test_ensemble_weights_and_normalisations() -> None:
    a, b = BrightnessScorer(), BrightnessScorer(offset=3.0)
    ens = EnsembleScorer(
        [
            Member(a, 0.5, Normalization.RAW),
            Member(b, 2.0, Normalization.SIGMOID),
        ]
    )
    images = [solid(0), solid(255)]
    combined, raw = ens.score_members(images, ["", ""])
    ra, rb = raw["brightness"], raw["brightness#2"]
    expected = [0.5 * x + 2.0 * sigmoid(y) for x, y in zip(ra, rb, strict=True)]
    assert combined == pytest.approx(expected)
    assert ra == pytest.approx([-1.0, 1.0])


def test_ensemble_zscore_freezes_after_warmup() -> None:
    ens = EnsembleScorer([Member(BrightnessScorer(), 1.0, Normalization.ZSCORE)], zscore_warmup=4)
    first = ens.score([solid(0), solid(100), solid(200), solid(255)], ["x"] * 4)
    assert np.mean(first) == pytest.approx(0.0, abs=1e-9)
    assert np.std(first, ddof=1) == pytest.approx(1.0)
    # after the warm-up the statistics are frozen: the same image keeps its score
    again = ens.score([solid(100)], ["x"])
    later = ens.score([solid(255), solid(255), solid(100)], ["x"] * 3)
    assert again[0] == pytest.approx(first[1])
    assert later[2] == pytest.approx(first[1])


def test_running_stats_single_value_uses_unit_std() -> None:
    s = RunningStats(limit=10)
    s.update([3.0])
    assert (s.mean, s.std) == (3.0, 1.0)
    s.update([3.0, 3.0])
    assert s.std == 1.0  # no spread yet


# ---------------------------------------------------------------------------- registry
def _install_entry_point(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real installed distribution (dist-info on sys.path) with an autombw.scorers entry."""
    (root / "thirdparty_scorer.py").write_text(
        textwrap.dedent(
            """
            class Offset:
                name = "offset"

                def __init__(self, offset=0.0):
                    self.offset = offset

                def score(self, images, prompts):
                    return [self.offset - i for i in range(len(images))]


            class WithSpec:
                name = "withspec"

                def __init__(self, batch_size):
                    self.batch_size = batch_size

                @classmethod
                def from_spec(cls, spec):
                    return cls(spec.batch_size)

                def score(self, images, prompts):
                    return [float(self.batch_size)] * len(images)


            class NotAScorer:
                pass
            """
        )
    )
    dist = root / "thirdparty_scorer-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-scorer\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[autombw.scorers]\n"
        "offset = thirdparty_scorer:Offset\n"
        "withspec = thirdparty_scorer:WithSpec\n"
        "broken = thirdparty_scorer:DoesNotExist\n"
        "notascorer = thirdparty_scorer:NotAScorer\n"
        "imagereward = thirdparty_scorer:Offset\n"
    )
    monkeypatch.syspath_prepend(str(root))


def test_entry_point_scorers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_entry_point(tmp_path, monkeypatch)
    names = known_scorer_names()
    assert {"imagereward", "laion", "chad", "sim", "ensemble", "offset", "withspec"} <= set(names)
    offset = create_scorer(ScorerConfig(name="offset", options={"offset": -2.5}))
    assert offset.score([solid(1), solid(2)], ["a", "b"]) == [-2.5, -3.5]
    with_spec = create_scorer(ScorerConfig(name="WithSpec", batch_size=7))
    assert with_spec.score([solid(1)], ["a"]) == [7.0]
    # a plugin without close() still is a full Scorer: the registry adds a no-op one
    assert isinstance(offset, Scorer) and not isinstance(offset, MemberScorer)
    offset.close()
    with pytest.raises(ScorerError, match=r"'broken' \(entry point .*\) cannot be loaded"):
        create_scorer(ScorerConfig(name="broken"))
    with pytest.raises(ScorerError, match="lacks name / score"):
        create_scorer(ScorerConfig(name="notascorer"))


def test_ensemble_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_entry_point(tmp_path, monkeypatch)
    config = ScorerConfig.model_validate(
        {
            "name": "ensemble",
            "device": "cpu",
            "ensemble": [
                {"name": "offset", "weight": 2.0, "options": {"offset": 1.0}},
                {"name": "withspec", "weight": 0.5, "normalize": "sigmoid", "batch_size": 2},
            ],
        }
    )
    assert [m.device for m in config.member_specs()] == ["cpu", "cpu"]
    ens = create_scorer(config)
    assert isinstance(ens, EnsembleScorer)
    assert ens.score([solid(1), solid(2)], ["a", "b"]) == pytest.approx(
        [2.0 * 1.0 + 0.5 * sigmoid(2.0), 2.0 * 0.0 + 0.5 * sigmoid(2.0)]
    )


def test_unknown_scorer_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown scorer 'nope'") as err:
        create_scorer(ScorerConfig(name="nope"))
    assert "imagereward" in (err.value.hint or "")


def test_importing_scoring_is_light() -> None:
    code = (
        "import sys, autombw_cli.scoring as s; s.known_scorer_names(); "
        "bad = [m for m in ('torch', 'transformers', 'autombw_cli.sim', 'clip') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------- config
def test_config_defaults_and_validation() -> None:
    c = ScorerConfig()
    assert (c.name, c.device, c.batch_size, c.precision, c.tally.value) == (
        "imagereward",
        "auto",
        32,
        "auto",
        "arithmetic",
    )
    assert ScorerConfig(device="CUDA:1").device == "cuda:1"
    for bad in ({"device": "gpu"}, {"batch_size": 0}, {"precision": "fp8"}, {"bogus": 1}):
        with pytest.raises(ValidationError):
            ScorerConfig.model_validate(bad)
    with pytest.raises(ValidationError, match="non-empty 'ensemble'"):
        ScorerConfig(name="ensemble")
    with pytest.raises(ValidationError, match="use name: ensemble"):
        ScorerConfig.model_validate({"name": "imagereward", "ensemble": [{"name": "laion"}]})
    with pytest.raises(ValidationError, match="cannot itself be an ensemble"):
        ScorerConfig.model_validate({"name": "ensemble", "ensemble": [{"name": "ensemble"}]})


def test_config_positive_only_tally_with_sigmoid_ensemble() -> None:
    ok = ScorerConfig.model_validate(
        {
            "name": "ensemble",
            "tally": "harmonic",
            "ensemble": [
                {"name": "imagereward", "normalize": "sigmoid"},
                {"name": "laion"},
            ],
        }
    )
    assert ok.scores_positive()
    with pytest.raises(ValidationError, match="needs positive scores"):
        ScorerConfig.model_validate(
            {
                "name": "ensemble",
                "tally": "harmonic",
                "ensemble": [{"name": "imagereward", "normalize": "zscore"}],
            }
        )


def test_sim_scorer_is_built_lazily_from_its_options() -> None:
    scorer = create_scorer(ScorerConfig(name="sim", options={"arch": "sd1"}))
    assert scorer.name == "sim"
    assert isinstance(scorer, Scorer)


def test_broken_image_is_a_scorer_error() -> None:
    import io

    from autombw_cli.scoring.preprocess import Preprocessor

    buf = io.BytesIO()
    solid(128).save(buf, format="PNG")
    broken = Image.open(io.BytesIO(buf.getvalue()[:60]))  # header only: fails when loaded
    with Preprocessor(224, workers=2) as prep:
        assert prep.submit([solid(1)], 0).result().shape == (1, 224, 224, 3)
        with pytest.raises(ScorerError, match="image 5 of the batch cannot be read"):
            prep.submit([solid(1), broken], 4).result()


def test_preprocessing_is_bit_identical_to_upstream_transform() -> None:
    import torch
    from torchvision.transforms import (
        CenterCrop,
        Compose,
        InterpolationMode,
        Normalize,
        Resize,
        ToTensor,
    )

    from autombw_cli.scoring.preprocess import CLIP_MEAN, CLIP_STD, normalize, resize_crop

    # upstream ImageReward._transform(224) / clip._transform(224), written out
    upstream = Compose(
        [
            Resize(224, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(224),
            lambda im: im.convert("RGB"),
            ToTensor(),
            Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    base = synthetic_images(1, size=333, seed=2)[0]
    for image in (base, base.resize((500, 300)), base.convert("RGBA"), base.convert("L")):
        ours = normalize(torch.from_numpy(resize_crop(image, 224)[None]))[0]
        assert torch.equal(ours, upstream(image))
