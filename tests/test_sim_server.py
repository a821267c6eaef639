"""The simulated WebUI over real loopback HTTP: A1111 response and error shapes, auth on
/sdapi only, faults, deterministic renders that react to every block, and the sim scorer."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from autombw_cli.blocks import Arch, layout
from autombw_cli.errors import ConfigError, ScorerError
from autombw_cli.merging.kernels import lerp_tensor
from autombw_cli.sim.checkpoints import random_state_dict
from autombw_cli.sim.faults import FaultPlan, parse_faults
from autombw_cli.sim.render import Renderer, RenderParams
from autombw_cli.sim.scorer import OPTIMUM_SCORE, SimScorer, default_target
from autombw_cli.sim.server import SimulatorHandle, start_simulator_in_thread

SLOTS = layout(Arch.SD1).slots
SMALL = {"prompt": "a lighthouse", "seed": 5, "steps": 6, "width": 48, "height": 40}


@pytest.fixture
def sim_options(tmp_path: Path) -> dict[str, object]:  # for conftest's `sim` and `http`
    return {"arch": "sd1", "model_dir": tmp_path}


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def render_with(http: httpx.Client, weights: dict[str, float], **body: object) -> Image.Image:
    r = http.post(
        "/autombw/v1/merge", json={"model_a": "simA", "model_b": "simB", "weights": weights}
    )
    assert r.status_code == 200, r.text
    r = http.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert r.status_code == 200, r.text
    return decode(r.json()["images"][0])


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0


def test_txt2img_answers_like_a1111(http: httpx.Client) -> None:
    r = http.post("/sdapi/v1/txt2img", json={**SMALL, "batch_size": 2, "n_iter": 2})
    body = r.json()
    assert set(body) == {"images", "parameters", "info"}
    assert len(body["images"]) == 4 and not body["images"][0].startswith("data:")
    info = json.loads(body["info"])  # a JSON *string*, as A1111 sends it
    assert info["all_seeds"] == [5, 6, 7, 8] and info["sd_model_name"] == "simA"
    assert info["infotexts"][0].startswith("a lighthouse\nSteps: 6")
    img = decode(body["images"][0])
    assert img.format == "PNG" and img.size == (48, 40)
    assert "Seed: 5" in img.info["parameters"]
    assert body["parameters"]["prompt"] == "a lighthouse"
    unknown = json.loads(
        http.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Nope"}).json()["info"]
    )
    assert unknown["sampler_name"] == "Euler"  # falls back silently, like A1111


def test_a1111_error_shapes(http: httpx.Client) -> None:
    r = http.post("/sdapi/v1/txt2img", json={"steps": "many"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "steps"]
    r = http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "missing"})
    assert r.status_code == 500
    assert r.json() == {
        "error": "RuntimeError",
        "detail": "",
        "body": "",
        "errors": "model 'missing' not found",
    }


def test_options_switch_checkpoint_and_models_list(http: httpx.Client) -> None:
    models = http.get("/sdapi/v1/sd-models").json()
    assert {m["model_name"] for m in models} == {"simA", "simB"}
    assert all(
        set(m) == {"title", "model_name", "hash", "sha256", "filename", "config"} for m in models
    )
    assert http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "simB"}).status_code == 200
    assert http.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("simB")
    assert http.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert http.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0
    assert http.post("/sdapi/v1/interrupt").json() == {}
    assert "Euler a" in {s["name"] for s in http.get("/sdapi/v1/samplers").json()}
    assert "ram" in http.get("/sdapi/v1/memory").json()


def test_renders_are_deterministic_and_react_to_every_block(http: httpx.Client) -> None:
    base = dict.fromkeys(SLOTS, 0.5)
    first = pixels(render_with(http, base))
    assert np.array_equal(first, pixels(render_with(http, base)))
    for slot in SLOTS:
        moved = pixels(render_with(http, {**base, slot: 0.6}))
        assert not np.array_equal(moved, first), slot
    assert not np.array_equal(pixels(render_with(http, base, seed=6)), first)
    assert not np.array_equal(pixels(render_with(http, base, prompt="a cave")), first)


def test_render_is_smooth_in_a_weight_and_blocks_interact() -> None:
    renderer = Renderer(Arch.SD1)
    a = random_state_dict(Arch.SD1, "tiny", 1)
    b = random_state_dict(Arch.SD1, "tiny", 2)
    lay = layout(Arch.SD1)
    params = RenderParams(prompt="x", seed=1, width=32, height=32, steps=20)

    def image(weights: dict[str, float]) -> np.ndarray:
        merged = {
            k: lerp_tensor(t, b[k], weights[lay.slot_of(k)]) if lay.slot_of(k) else t
            for k, t in a.items()
        }
        return renderer.render(renderer.unet_features(merged), params).astype(np.float64)

    base = dict.fromkeys(SLOTS, 0.5)
    steps = [np.abs(image({**base, "IN04": 0.5 + d}) - image(base)).mean() for d in (0.01, 0.1)]
    assert 0 < steps[0] < steps[1]  # a small change moves the image a little
    # Interaction: moving IN04 changes the image differently depending on OUT03.
    d_low = image({**base, "IN04": 0.9}) - image(base)
    other = {**base, "OUT03": 1.0}
    d_high = image({**other, "IN04": 0.9}) - image(other)
    assert np.abs(d_low - d_high).mean() > 0.5


def test_sim_scorer_knows_the_optimum(http: httpx.Client) -> None:
    scorer = SimScorer(arch="sd1")
    assert scorer.optimum_score == OPTIMUM_SCORE
    target = scorer.target_weights.to_dict()
    assert scorer.target_weights == default_target(Arch.SD1)
    best = render_with(http, target)
    near = render_with(http, {**target, "M00": min(1.0, target["M00"] + 0.2)})
    far = render_with(http, dict.fromkeys(SLOTS, 0.0))
    scores = scorer.score([best, near, far], [SMALL["prompt"]] * 3)
    assert scores[0] == pytest.approx(OPTIMUM_SCORE)
    assert scores[0] > scores[1] > scores[2] > 0
    custom = SimScorer(arch="sd1", target=dict.fromkeys(SLOTS, 0.0))
    assert custom.score([far], ["x"])[0] == pytest.approx(OPTIMUM_SCORE)
    with pytest.raises(ScorerError, match="simulated WebUI"):
        scorer.score([Image.new("RGB", (8, 8))], ["x"])


def test_faults_oom_drop_restart_and_refused_auth(sim: SimulatorHandle, http: httpx.Client) -> None:
    assert http.post("/sim/faults", json={"oom_every": 2}).status_code == 200
    assert http.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
    oom = http.post("/sdapi/v1/txt2img", json=SMALL)
    assert oom.status_code == 500 and oom.json()["error"] == "OutOfMemoryError"
    assert "CUDA out of memory" in oom.json()["errors"]

    sim.sim.set_faults(oom_every=0, drop_every=1)
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/sdapi/v1/txt2img", json=SMALL)

    sim.sim.set_faults(drop_every=0, restart_every=1)
    render_with_id = http.post(
        "/autombw/v1/merge",
        json={"model_a": "simA", "model_b": "simB", "weights": dict.fromkeys(SLOTS, 0.3)},
    ).json()["merge_id"]
    with pytest.raises(httpx.HTTPError):
        http.post("/sdapi/v1/txt2img", json=SMALL)
    status = http.get("/autombw/v1/status").json()
    assert status["merge_id"] != render_with_id and status["merge_live"] is False
    assert http.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("simA")

    sim.sim.set_faults(restart_every=0, refuse_auth=True)
    assert http.get("/sdapi/v1/options").status_code == 401
    assert http.get("/internal/ping").status_code == 200
    assert http.post("/sim/faults", json={"nonsense": 1}).status_code == 422


def test_control_routes_need_the_credentials_too(tmp_path: Path) -> None:
    """/sim/faults and /sim/restart can stop or break the simulator: with --auth they are
    guarded like /sdapi (the refuse-auth fault leaves them alone, so a test can lift it)."""
    with start_simulator_in_thread(model_dir=tmp_path, auth=("u", "p")) as handle:
        url = handle.url
        assert httpx.get(url + "/sim/faults").status_code == 401
        assert httpx.post(url + "/sim/faults", json={"oom_every": 1}).status_code == 401
        assert httpx.post(url + "/sim/restart").status_code == 401
        assert httpx.get(url + "/sim/faults", auth=("u", "wrong")).status_code == 401
        assert handle.sim.faults.oom_every == 0
        lifted = {"refuse_auth": False}
        handle.sim.set_faults(refuse_auth=True)
        assert httpx.post(url + "/sim/faults", json=lifted, auth=("u", "p")).status_code == 200
        assert httpx.get(url + "/sdapi/v1/options", auth=("u", "p")).status_code == 200


def test_stall_freezes_progress(tmp_path: Path) -> None:
    faults = FaultPlan(stall_every=1, stall_seconds=60)
    with start_simulator_in_thread(model_dir=tmp_path, faults=faults) as handle:
        result: list[object] = []
        worker = threading.Thread(
            target=lambda: result.append(_post_quietly(handle.url + "/sdapi/v1/txt2img", SMALL))
        )
        worker.start()
        seen = []
        while len(seen) < 5:
            state = httpx.get(handle.url + "/sdapi/v1/progress").json()["state"]
            if state["job_count"]:
                seen.append(state["sampling_step"])
            time.sleep(0.05)
        assert set(seen) == {0}  # busy but not advancing
    worker.join(30)
    assert not worker.is_alive()  # stopping the server ends the stalled request


def _post_quietly(url: str, body: dict[str, object]) -> object:
    try:
        return httpx.post(url, json=body, timeout=60).status_code
    except httpx.HTTPError as exc:
        return exc


def test_parse_faults() -> None:
    plan = parse_faults(["oom-every=3", "stall-seconds=2.5", "refuse-auth"])
    assert (plan.oom_every, plan.stall_seconds, plan.refuse_auth) == (3, 2.5, True)
    for bad in (["oom-every"], ["oom-every=x"], ["meteor=1"], ["drop-every=-1"]):
        with pytest.raises(ConfigError):
            parse_faults(bad)


@pytest.mark.slow
def test_cli_simulate_serves_until_stopped(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autombw_cli",
            "webui",
            "simulate",
            "--port",
            str(port),
            "--auth",
            "u:p",
            "--fault",
            "oom-every=1",
            "--models-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/internal/ping")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert httpx.get(url + "/sdapi/v1/options").status_code == 401
        r = httpx.post(url + "/sdapi/v1/txt2img", json=SMALL, auth=("u", "p"), timeout=30)
        assert r.status_code == 500 and r.json()["error"] == "OutOfMemoryError"
        assert (tmp_path / "simA.safetensors").exists()
    finally:
        proc.terminate()
        proc.wait(30)
