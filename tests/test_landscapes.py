"""The ``sim`` landscape is the simulated WebUI + ``sim`` scorer without HTTP: check that its
closed-form features and scores agree with the real simulator's merge, render and scorer."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from autombw_cli.blocks import Arch
from autombw_cli.sim.checkpoints import random_state_dict
from autombw_cli.sim.render import Renderer, RenderParams
from autombw_cli.sim.scorer import SimScorer, merge_state
from autombw_cli.testing.landscapes import SIM_PROMPTS, SIM_SIDE, _slot_dots, sim


@pytest.fixture(scope="module")
def states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return (
        random_state_dict(Arch.SD1, "tiny", 1, torch.float16),
        random_state_dict(Arch.SD1, "tiny", 2, torch.float16),
    )


def test_closed_form_features_match_the_simulators_merge(states) -> None:
    renderer = Renderer(Arch.SD1)
    dots = _slot_dots(Arch.SD1, renderer)
    land = sim(3)
    rng = np.random.default_rng(1)
    for _ in range(3):
        values = rng.uniform(0, 1, len(land.target.values)).round(1)
        w = land.target.replace(dict(zip(land.target.values, values.tolist(), strict=True)))
        x = np.array(list(w.values.values()))
        real = renderer.unet_features(merge_state(*states, w))
        # the bridge merges in fp16; the closed form is exact: agree to fp16 rounding
        np.testing.assert_allclose(dots.features(x), real, atol=2e-3)


def test_sim_landscape_scores_like_the_sim_scorer(states) -> None:
    land = sim(5)
    scorer = SimScorer(arch="sd1", target=land.target)
    renderer = Renderer(Arch.SD1)
    w = land.target.replace({"IN03": 0.0, "OUT07": 1.0, "M00": 0.5})
    feats = renderer.unet_features(merge_state(*states, w))
    images, prompts = [], []
    for k, prompt in enumerate(SIM_PROMPTS):
        params = RenderParams(prompt=prompt, seed=5 * 1000 + k, width=SIM_SIDE, height=SIM_SIDE)
        img = Image.fromarray(renderer.render(feats, params), "RGB")
        meta = {"prompt": prompt, "seed": params.seed, "width": SIM_SIDE, "height": SIM_SIDE}
        buf = io.BytesIO()
        info = PngInfo()
        info.add_text("autombw_sim", json.dumps(meta))
        img.save(buf, "PNG", pnginfo=info)
        images.append(Image.open(io.BytesIO(buf.getvalue())))
        prompts.append(prompt)
    real = float(np.mean(scorer.score(images, prompts)))
    assert land(w) == pytest.approx(real, abs=0.01)
    assert land(w) < 0.95 and land(land.target) == pytest.approx(1.0)
