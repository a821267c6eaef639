"""The bridge routes over real loopback HTTP, served by the simulated WebUI (same BridgeCore as
the A1111 extension): status codes and A1111-shaped error bodies, bit-exact restore, saving
only into the checkpoint folder, lost merges after a restart, auth and the queue lock."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from autombw_cli.blocks import Arch, Weights, layout
from autombw_cli.sim.checkpoints import random_state_dict
from autombw_cli.sim.server import SimulatorHandle, start_simulator_in_thread
from autombw_cli.webui.client import WebUIClient
from autombw_cli.webui.errors import MergeLost

SLOTS = layout(Arch.SD1).slots
ERROR_KEYS = {"error", "detail", "body", "errors"}


def uniform(w: float) -> dict[str, float]:
    return dict.fromkeys(SLOTS, w)


@pytest.fixture
def sim_options(tmp_path: Path) -> dict[str, object]:  # for conftest's `sim` and `http`
    return {"arch": "sd1", "model_dir": tmp_path / "models"}


def merge(http: httpx.Client, weights: dict[str, float], **extra: Any) -> httpx.Response:
    return http.post(
        "/autombw/v1/merge",
        json={"model_a": "simA", "model_b": "simB", "weights": weights, **extra},
    )


def live_unet(sim: SimulatorHandle) -> dict[str, torch.Tensor]:
    model = sim.sim.host.live_model()
    assert model is not None
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("model.")}


def test_merge_status_restore_over_http(sim: SimulatorHandle, http: httpx.Client) -> None:
    original = random_state_dict(Arch.SD1, "tiny", 1)
    r = merge(http, uniform(0.4), cache_device="cpu")
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"merge_id", "changed_blocks", "elapsed_s", "model_a", "model_b", "arch"}
    assert body["arch"] == "sd1" and body["changed_blocks"] == list(SLOTS)

    status = http.get("/autombw/v1/status").json()
    assert status["merge_id"] == body["merge_id"] and status["merge_live"] is True
    assert status["cache_device"] == "cpu" and status["cache_bytes"] > 0
    assert status["model_a"]["sha256"] and status["weights"] == uniform(0.4)

    r = http.post("/autombw/v1/restore", json={"free_caches": True})
    assert r.status_code == 200 and r.json()["restored"] is True
    assert r.json()["freed_bytes"] == status["cache_bytes"]
    live = live_unet(sim)
    assert all(torch.equal(t, original[k]) for k, t in live.items())
    status = http.get("/autombw/v1/status").json()
    assert status["merge_id"] is None and status["cache_bytes"] == 0


def test_client_round_trip_and_lost_merge_after_restart(sim: SimulatorHandle) -> None:
    async def scenario() -> None:
        async with WebUIClient(sim.url, label="sim") as c:
            result = await c.bridge_merge("simA", "simB", Weights.uniform(Arch.SD1, 0.6))
            await c.ensure_merge_live(result.merge_id)
            images = await c.txt2img(
                {"prompt": "x", "seed": 1, "steps": 4, "width": 32, "height": 32},
                expect_merge_id=result.merge_id,
            )
            assert images.info["autombw_merge_id"] == result.merge_id
            sim.sim.restart()
            status = await c.bridge_status()
            assert status.merge_live is False
            with pytest.raises(MergeLost):
                await c.ensure_merge_live(result.merge_id)

    asyncio.run(scenario())


def test_reloading_a_checkpoint_through_options_loses_the_merge(http: httpx.Client) -> None:
    merge_id = merge(http, uniform(0.5)).json()["merge_id"]
    assert http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "simB"}).status_code == 200
    status = http.get("/autombw/v1/status").json()
    assert status["merge_id"] == merge_id and status["merge_live"] is False
    assert "simB" in status["lost_reason"]


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"model_a": "simA", "model_b": "simA", "weights": uniform(0.5)}, 400, "SameModel"),
        ({"model_a": "simAX", "model_b": "simB", "weights": uniform(0.5)}, 404, "UnknownModel"),
        ({"model_a": "simA", "model_b": "simB", "weights": uniform(1.5)}, 422, "ValidationError"),
        ({"model_a": "simA", "model_b": "simB"}, 422, "ValidationError"),
        ({"model_a": "simA", "model_b": "simB", "weights": uniform(0.5), "x": 1}, 422, None),
        (
            {"model_a": "simA", "model_b": "simB", "weights": uniform(0.5), "cache_device": "tpu"},
            422,
            None,
        ),
        ([1, 2], 422, "ValidationError"),
    ],
)
def test_merge_refusals_answer_in_a1111_shape(
    http: httpx.Client, body: Any, status: int, kind: str | None
) -> None:
    r = http.post("/autombw/v1/merge", json=body)
    assert r.status_code == status
    data = r.json()
    assert set(data) >= ERROR_KEYS
    if kind:
        assert data["error"] == kind
    assert data["errors"]


def test_unknown_model_error_lists_close_names(http: httpx.Client) -> None:
    r = http.post(
        "/autombw/v1/merge", json={"model_a": "simb", "model_b": "simAA", "weights": uniform(0.5)}
    )
    assert r.status_code == 404
    assert "simA" in r.json()["errors"]


def test_save_writes_only_into_the_checkpoint_folder(
    sim: SimulatorHandle, http: httpx.Client, tmp_path: Path
) -> None:
    assert merge(http, uniform(0.5)).status_code == 200
    folder = sim.sim.model_dir
    ok = http.post("/autombw/v1/save", json={"name": "merged one", "weights": uniform(0.3)})
    assert ok.status_code == 200, ok.text
    saved = Path(ok.json()["path"])
    assert saved.parent == folder.resolve() and saved.name == "merged one.safetensors"
    assert Path(ok.json()["recipe_path"]).read_text().startswith("modelA=simA.safetensors")
    models = http.get("/sdapi/v1/sd-models").json()
    assert "merged one" in {m["model_name"] for m in models}

    outside = tmp_path / "outside.safetensors"
    for name, status in [
        ("../outside", 400),
        (str(outside), 400),
        ("CON", 400),
        ("aux.safetensors", 400),
        ("merged one", 409),
    ]:
        r = http.post("/autombw/v1/save", json={"name": name, "weights": uniform(0.3)})
        assert r.status_code == status, (name, r.text)
        assert set(r.json()) >= ERROR_KEYS
    assert not outside.exists() and not (tmp_path / "outside.safetensors").exists()
    again = http.post(
        "/autombw/v1/save", json={"name": "merged one", "weights": uniform(0.9), "overwrite": True}
    )
    assert again.status_code == 200 and again.json()["sha256"] != ok.json()["sha256"]


def test_bridge_routes_use_the_api_auth_credentials(tmp_path: Path) -> None:
    with start_simulator_in_thread(auth=("alice", "s3cret"), model_dir=tmp_path) as handle:
        assert httpx.get(handle.url + "/autombw/v1/status").status_code == 401
        bad = httpx.get(handle.url + "/autombw/v1/status", auth=("alice", "nope"))
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Basic"
        good = httpx.get(handle.url + "/autombw/v1/status", auth=("alice", "s3cret"))
        assert good.status_code == 200
        assert httpx.get(handle.url + "/internal/ping").status_code == 200


def render_in_background(handle: SimulatorHandle) -> tuple[threading.Thread, threading.Event]:
    """Start a txt2img in a thread and return once the simulator is rendering it (it holds the
    queue lock); the event is set when the render has answered."""
    done = threading.Event()

    def generate() -> None:
        httpx.post(
            handle.url + "/sdapi/v1/txt2img",
            json={"steps": 5, "width": 16, "height": 16},
            timeout=30,
        )
        done.set()

    worker = threading.Thread(target=generate)
    worker.start()
    while httpx.get(handle.url + "/sdapi/v1/progress").json()["state"]["job_count"] == 0:
        assert worker.is_alive()
        time.sleep(0.01)
    return worker, done


def test_merge_waits_for_the_running_generation(tmp_path: Path) -> None:
    """The bridge holds the queue lock: a merge sent while an image renders runs after it."""
    with start_simulator_in_thread(model_dir=tmp_path, latency_per_image=1.0) as handle:
        worker, done = render_in_background(handle)
        r = httpx.post(
            handle.url + "/autombw/v1/merge",
            json={"model_a": "simA", "model_b": "simB", "weights": uniform(0.5)},
            timeout=30,
        )
        assert r.status_code == 200
        assert done.is_set()  # the generation had finished before the merge answered
        worker.join()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (
            {"model_a": "x" * 30_000, "model_b": "simB", "weights": uniform(0.5)},
            422,
            "model_a is 30000 characters long",
        ),
        (
            {"model_a": "simA", "model_b": "simB", "weights": {**uniform(0.5), "in00": 0.2}},
            422,
            "IN00 given twice (IN00 and in00)",
        ),
        (
            {
                "model_a": "simA",
                "model_b": "simB",
                "weights": {**uniform(0.5), "BASE": 0.5},
                "text_encoder_weight": 0.3,
            },
            422,
            "BASE given twice (text_encoder_weight and BASE)",
        ),
        (
            {"model_a": "simA", "model_b": "simB", "weights": {**uniform(0.5), "M00": 10**400}},
            422,
            "M00=inf is outside 0..1",
        ),
        (
            {"model_a": "simA", "model_b": "simB", "weights": {f"k{i}": 0.5 for i in range(65)}},
            422,
            "weights has 65 entries",
        ),
        (
            {"model_a": "simA", "model_b": "simB", "weights": {"IN00" * 20: 0.5}},
            422,
            "no block name",
        ),
        (
            {"model_a": "simA", "model_b": "simB", "weights": uniform(0.5), "pad": "x" * 2**21},
            413,
            "at most 1048576",
        ),
    ],
)
def test_oversized_and_ambiguous_requests_are_refused(
    http: httpx.Client, body: dict[str, Any], status: int, words: str
) -> None:
    """Bounded before the queue lock (a 30 MB name once held it for 13 s); a weight named twice
    in two spellings, or too large for a float (a 500 before), is a clear 422."""
    r = http.post("/autombw/v1/merge", json=body)
    assert r.status_code == status, r.text[:500]
    data = r.json()
    assert set(data) >= ERROR_KEYS and words in data["detail"]
    assert len(r.content) < 4000  # the refused value is not echoed back


def test_not_json_is_a_422(http: httpx.Client) -> None:
    r = http.post(
        "/autombw/v1/merge", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    chunked = http.post("/autombw/v1/merge", content=iter([b"[" * 600_000, b"]" * 600_000]))
    assert chunked.status_code == 413  # no content-length: counted while reading


def test_a_bad_request_does_not_wait_for_the_queue_lock(tmp_path: Path) -> None:
    """Validation happens before the lock: a refused request answers while an image renders."""
    with start_simulator_in_thread(model_dir=tmp_path, latency_per_image=3.0) as handle:
        worker, done = render_in_background(handle)
        r = httpx.post(
            handle.url + "/autombw/v1/merge",
            json={"model_a": "x" * 5_000_000, "model_b": "simB", "weights": uniform(0.5)},
            timeout=30,
        )
        assert r.status_code == 413
        assert not done.is_set()  # answered while the generation still held the lock
        worker.join()
