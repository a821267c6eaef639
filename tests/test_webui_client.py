"""WebUIClient against httpx.MockTransport: error mapping, 422/500 bodies, auth, retries,
checkpoint verification, bridge calls and txt2img decoding (no sockets).

The handlers below answer with the JSON shapes of A1111 1.x (modules/api/api.py) and FastAPI.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError

from autombw_cli.blocks import Arch, Weights
from autombw_cli.errors import ConfigError, WebUIError
from autombw_cli.webui import endpoints as ep
from autombw_cli.webui.client import WebUIClient, split_url
from autombw_cli.webui.errors import (
    ApiNotEnabled,
    BridgeMissing,
    CheckpointNotLoaded,
    MergeLost,
    WebUIAuthError,
    WebUIBadResponse,
    WebUIHTTPError,
    WebUIServerError,
    WebUITimeout,
    WebUIUnreachable,
    WebUIValidationError,
)
from autombw_cli.webui.timeouts import ClientTimeouts, RetryPolicy

pytestmark = pytest.mark.anyio

Handler = Callable[[httpx.Request], httpx.Response]
FAST = ClientTimeouts(poll_interval=0.01, stall=5.0)
SECRET = "hunter2-s3cret"


def client(handler: Handler, **kw: Any) -> WebUIClient:
    kw.setdefault("retry", RetryPolicy(attempts=3, backoff=0))
    kw.setdefault("timeouts", FAST)
    return WebUIClient(
        "http://webui.test:7860", label="gpu0", transport=httpx.MockTransport(handler), **kw
    )


def not_found(_: httpx.Request) -> httpx.Response:
    return httpx.Response(404, json={"detail": "Not Found"})


def png_b64(color: tuple[int, int, int] = (200, 10, 10), fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def txt2img_answer(images: list[str], **info: Any) -> dict[str, Any]:
    info.setdefault("all_seeds", [1] * len(images))
    return {"images": images, "parameters": {"prompt": "x"}, "info": json.dumps(info)}


IDLE = {"progress": 0, "eta_relative": 0, "state": {"job_count": 0}, "textinfo": None}


# --- 404, 401, 422, 500 ----------------------------------------------------------------------
async def test_404_on_sdapi_says_start_with_api() -> None:
    async with client(not_found) as c:
        with pytest.raises(ApiNotEnabled) as exc:
            await c.sd_models()
    assert "--api" in str(exc.value)
    assert exc.value.status_code == 404 and exc.value.exit_code == 3
    assert str(exc.value).startswith("gpu0: ")


async def test_404_on_bridge_says_install_extension() -> None:
    async with client(not_found) as c:
        with pytest.raises(BridgeMissing) as exc:
            await c.bridge_status()
    assert "autombw webui install-extension" in str(exc.value)


async def test_route_own_404_is_not_a_missing_route() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        body = {"error": "HTTPException", "detail": "Sampler not found", "body": "", "errors": ""}
        return httpx.Response(404, json=body)

    async with client(handler) as c:
        with pytest.raises(WebUIHTTPError) as exc:
            await c.samplers()
    assert not isinstance(exc.value, ApiNotEnabled)
    assert "Sampler not found" in str(exc.value)


async def test_401_without_credentials() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert "authorization" not in request.headers
        return httpx.Response(401, json={"detail": "Not authenticated"})

    async with client(handler) as c:
        with pytest.raises(WebUIAuthError) as exc:
            await c.get_options()
    assert "wants a user name and password" in str(exc.value)
    assert "environment variables" in str(exc.value)


async def test_basic_auth_is_sent_and_never_shown() -> None:
    expected = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        return httpx.Response(401, json={"detail": "Incorrect username or password"})

    c = client(handler, auth=("alice", SECRET))
    async with c:
        with pytest.raises(WebUIAuthError) as exc:
            await c.progress()
    assert seen == [expected]
    assert "'alice'" in str(exc.value) and "rejected" in str(exc.value)
    for text in (str(exc.value), repr(exc.value), repr(c), str(vars(exc.value))):
        assert SECRET not in text


async def test_credentials_in_url_move_to_auth() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        assert SECRET not in str(request.url)
        return httpx.Response(200, json={})

    c = WebUIClient(f"http://bob:{SECRET}@webui.test:7860/", transport=httpx.MockTransport(handler))
    async with c:
        await c.ping()
    assert seen == ["Basic " + base64.b64encode(f"bob:{SECRET}".encode()).decode()]
    assert c.url == "http://webui.test:7860" and SECRET not in repr(c) + c.label


async def test_422_lists_offending_fields_pydantic2() -> None:
    detail = [
        {"type": "int_parsing", "loc": ["body", "steps"], "msg": "Input should be a valid integer",
         "input": "many"},
        {"type": "missing", "loc": ["body", "override_settings", "CLIP_stop_at_last_layers"],
         "msg": "Field required", "input": {}},
    ]  # fmt: skip

    async with client(lambda r: httpx.Response(422, json={"detail": detail})) as c:
        with pytest.raises(WebUIValidationError) as exc:
            await c.txt2img({"steps": "many"})
    fields = [f.field for f in exc.value.fields]
    assert fields == ["steps", "override_settings.CLIP_stop_at_last_layers"]
    msg = str(exc.value)
    assert "steps: Input should be a valid integer (got 'many')" in msg
    assert "override_settings.CLIP_stop_at_last_layers: Field required" in msg
    assert "payload file" in msg


async def test_422_pydantic1_shape_and_string_detail() -> None:
    body = {"detail": [{"loc": ["body", "width"], "msg": "value is not a valid integer",
                        "type": "type_error.integer"}]}  # fmt: skip
    async with client(lambda r: httpx.Response(422, json=body)) as c:
        with pytest.raises(WebUIValidationError) as exc:
            await c.txt2img({"width": "wide"})
    assert [str(f) for f in exc.value.fields] == ["width: value is not a valid integer"]

    a1111 = {"error": "HTTPException", "detail": "Script 'foo' not found", "body": "", "errors": ""}
    async with client(lambda r: httpx.Response(422, json=a1111)) as c:
        with pytest.raises(WebUIValidationError) as exc:
            await c.txt2img({"script_name": "foo"})
    assert "Script 'foo' not found" in str(exc.value)


async def test_500_cuda_oom_carries_server_text() -> None:
    body = {
        "error": "OutOfMemoryError",
        "detail": "",
        "body": "",
        "errors": "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total)",
    }
    async with client(lambda r: httpx.Response(500, json=body)) as c:
        with pytest.raises(WebUIServerError) as exc:
            await c.txt2img({"prompt": "x"})
    err = exc.value
    assert err.out_of_memory and err.error_type == "OutOfMemoryError"
    assert "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" in str(err)
    assert "--medvram" in str(err)


async def test_500_other_errors() -> None:
    body = {"error": "RuntimeError", "detail": "", "body": "", "errors": "model 'x' not found"}
    async with client(lambda r: httpx.Response(500, json=body)) as c:
        with pytest.raises(WebUIServerError) as exc:
            await c.set_options({"sd_model_checkpoint": "x"})
    assert not exc.value.out_of_memory
    assert "RuntimeError: model 'x' not found" in str(exc.value)

    async with client(lambda r: httpx.Response(502, text="Bad Gateway from nginx")) as c:
        with pytest.raises(WebUIServerError) as exc:
            await c.memory()
    assert exc.value.status_code == 502 and "Bad Gateway from nginx" in str(exc.value)


async def test_bad_json_and_wrong_shape() -> None:
    async with client(lambda r: httpx.Response(200, text="<html>gradio</html>")) as c:
        with pytest.raises(WebUIBadResponse, match="not JSON"):
            await c.progress()
    async with client(lambda r: httpx.Response(200, json=[{"name": 3}])) as c:
        with pytest.raises(WebUIBadResponse, match="unexpected answer"):
            await c.samplers()


# --- retries ---------------------------------------------------------------------------------
async def test_connect_errors_are_retried_then_succeed() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return httpx.Response(200, json=[{"name": "Euler", "aliases": ["k_euler"]}])

    async with client(handler) as c:
        samplers = await c.samplers()
    assert calls == 3 and samplers[0].name == "Euler"


async def test_connect_errors_exhaust_retries() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    async with client(handler) as c:
        with pytest.raises(WebUIUnreachable) as exc:
            await c.progress()
    assert calls == 3
    assert not exc.value.request_sent
    assert "connection refused (3 attempts)" in str(exc.value)
    assert "--api" in str(exc.value)


async def test_txt2img_is_not_reposted_after_the_connection_dropped() -> None:
    posts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        if request.url.path == ep.PROGRESS:
            return httpx.Response(200, json=IDLE)
        posts += 1
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    async with client(handler) as c:
        with pytest.raises(WebUIUnreachable) as exc:
            await c.txt2img({"prompt": "x"})
    assert posts == 1
    assert exc.value.request_sent and "may still be running" in str(exc.value)


async def test_txt2img_connect_failure_is_retried() -> None:
    posts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        if request.url.path == ep.PROGRESS:
            return httpx.Response(200, json=IDLE)
        posts += 1
        if posts == 1:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return httpx.Response(200, json=txt2img_answer([png_b64()]))

    async with client(handler) as c:
        result = await c.txt2img({"prompt": "x"})
    assert posts == 2 and len(result.images) == 1


async def test_idempotent_get_is_retried_after_a_drop() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ReadError("connection reset by peer", request=request)
        return httpx.Response(200, json={"ram": {"used": 1}, "cuda": {}})

    async with client(handler) as c:
        mem = await c.memory()
    assert calls == 2 and mem.ram == {"used": 1}


async def test_http_errors_and_timeouts_are_not_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if request.url.path == ep.MEMORY:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(500, json={"error": "RuntimeError", "errors": "boom"})

    async with client(handler) as c:
        with pytest.raises(WebUIServerError):
            await c.get_options()
        assert calls == 1
        with pytest.raises(WebUITimeout, match="no answer within 30 s"):
            await c.memory()
        assert calls == 2


def test_retry_policy_backoff_doubles_and_caps() -> None:
    p = RetryPolicy(attempts=5, backoff=0.5, backoff_max=1.5)
    assert [p.delay(i) for i in range(4)] == [0.5, 1.0, 1.5, 1.5]


def test_keepalive_must_stay_below_gradio_cutoff() -> None:
    with pytest.raises(ValidationError, match="below 5"):
        ClientTimeouts(keepalive_expiry=5.0)
    assert ClientTimeouts().keepalive_expiry < 5
    with pytest.raises(ValidationError):
        ClientTimeouts(stall=1, bogus=2)  # type: ignore[call-arg]


# --- txt2img decoding ------------------------------------------------------------------------
async def test_txt2img_decodes_png_jpeg_webp_and_skips_the_grid() -> None:
    grid = png_b64((0, 0, 0))
    imgs = [png_b64((255, 0, 0)), png_b64((0, 255, 0), "JPEG"), png_b64((0, 0, 255), "WEBP")]
    extra = png_b64((9, 9, 9))  # e.g. a ControlNet map after the generated images
    answer = txt2img_answer(
        [grid, *imgs, extra], all_seeds=[5, 6, 7], index_of_first_image=1, sd_model_name="A"
    )
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == ep.TXT2IMG:
            bodies.append(json.loads(request.content))
            return httpx.Response(200, json=answer)
        return httpx.Response(200, json=IDLE)

    async with client(handler) as c:
        r = await c.txt2img({"prompt": "cat", "seed": 5, "batch_size": 3})
    # "scheduler" is filled in: A1111 1.9+ logs an autocorrection for every image without it
    assert bodies == [{"prompt": "cat", "seed": 5, "batch_size": 3, "scheduler": "Automatic"}]
    assert r.formats == ["png", "jpeg", "webp"]
    assert [im.getpixel((4, 4))[1] > 200 for im in r.images] == [False, True, False]
    assert r.images[0].getpixel((4, 4))[0] > 200 and r.images[2].getpixel((4, 4))[2] > 200
    assert len(r.extra_images) == 2 and r.seeds == [5, 6, 7] and r.sd_model_name == "A"
    assert r.raw_images[0] == base64.b64decode(imgs[0])
    assert r.parameters == {"prompt": "x"}


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (base64.b64encode(b"GIF89a not ours").decode(), "not a PNG, JPEG or WebP"),
        ("@@@not-base64@@@", "not valid base64"),
        (base64.b64encode(base64.b64decode(png_b64())[:-20]).decode(), "truncated"),
    ],
)
async def test_txt2img_rejects_bad_image_data(image: str, match: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == ep.TXT2IMG:
            return httpx.Response(200, json=txt2img_answer([image]))
        return httpx.Response(200, json=IDLE)

    async with client(handler) as c:
        with pytest.raises(WebUIBadResponse, match=match) as exc:
            await c.txt2img({"prompt": "x"})
    assert "txt2img image 0" in str(exc.value)


async def test_unknown_sampler_fallback_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == ep.TXT2IMG:
            return httpx.Response(200, json=txt2img_answer([png_b64()], sampler_name="Euler"))
        return httpx.Response(200, json=IDLE)

    with caplog.at_level(logging.WARNING, logger="autombw_cli.webui.client"):
        async with client(handler) as c:
            await c.txt2img({"sampler_name": "Euler Karras"})  # scheduler split off: fine
            assert "unknown" not in caplog.text
            await c.txt2img({"sampler_name": "DPM++ 9M"})
            await c.txt2img({"sampler_name": "DPM++ 9M"})
    assert "'DPM++ 9M' is unknown" in caplog.text
    assert caplog.text.count("is unknown") == 1  # once per client and sampler


async def test_one_generation_in_flight_per_client() -> None:
    active = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        if request.url.path != ep.TXT2IMG:
            return httpx.Response(200, json=IDLE)
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return httpx.Response(200, json=txt2img_answer([png_b64()]))

    async with client(handler) as c:  # type: ignore[arg-type]
        results = await asyncio.gather(*(c.txt2img({"prompt": str(i)}) for i in range(4)))
    assert len(results) == 4 and peak == 1


# --- checkpoints -----------------------------------------------------------------------------
class FakeCheckpoints:
    """A1111's checkpoint routes: a list, the current option, a load that may fail."""

    def __init__(self, load_fails: bool = False) -> None:
        self.models = [
            {"title": "modelA.safetensors [6ce0161689]", "model_name": "modelA",
             "hash": "6ce0161689", "sha256": None,
             "filename": "/m/Stable-diffusion/modelA.safetensors", "config": None},
            {"title": "sub/modelB.ckpt", "model_name": "sub_modelB", "hash": None, "sha256": None,
             "filename": "C:\\m\\Stable-diffusion\\sub\\modelB.ckpt", "config": None},
        ]  # fmt: skip
        self.current = "modelA.safetensors [6ce0161689]"
        self.load_fails = load_fails
        self.posts: list[str] = []
        self.refreshes = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == ep.SD_MODELS:
            return httpx.Response(200, json=self.models)
        if path == ep.REFRESH_CHECKPOINTS:
            self.refreshes += 1
            return httpx.Response(200, json=None)
        if path == ep.OPTIONS and request.method == "GET":
            return httpx.Response(200, json={"sd_model_checkpoint": self.current, "x": 1})
        if path == ep.OPTIONS:
            title = json.loads(request.content)["sd_model_checkpoint"]
            self.posts.append(title)
            if not self.load_fails:
                self.current = title
            return httpx.Response(200, json=None)
        return not_found(request)


async def test_set_checkpoint_switches_and_verifies() -> None:
    fake = FakeCheckpoints()
    async with client(fake) as c:
        model = await c.set_checkpoint("modelB")
        assert model.title == "sub/modelB.ckpt" and fake.posts == ["sub/modelB.ckpt"]
        assert (await c.get_options()).sd_model_checkpoint == "sub/modelB.ckpt"
        # already loaded (by any of its names): no second load
        await c.set_checkpoint("modelB.ckpt")
        assert fake.posts == ["sub/modelB.ckpt"]


async def test_set_checkpoint_detects_a_failed_load() -> None:
    fake = FakeCheckpoints(load_fails=True)
    async with client(fake) as c:
        with pytest.raises(CheckpointNotLoaded) as exc:
            await c.set_checkpoint("sub/modelB.ckpt")
    assert "did not switch to sub/modelB.ckpt" in str(exc.value)
    assert "modelA.safetensors [6ce0161689]" in str(exc.value)


async def test_set_checkpoint_unknown_name_refreshes_once_and_lists_close_names() -> None:
    fake = FakeCheckpoints()
    async with client(fake) as c:
        with pytest.raises(CheckpointNotLoaded) as exc:
            await c.set_checkpoint("modelC")
    assert fake.refreshes == 1 and fake.posts == []
    assert "modelA" in str(exc.value)


# --- bridge ----------------------------------------------------------------------------------
class FakeBridge:
    def __init__(self) -> None:
        self.merges: list[dict[str, Any]] = []
        self.status: dict[str, Any] = {"version": "0.1.0", "merge_id": None, "merge_live": False}
        self.on_txt2img: Callable[[], None] = lambda: None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == ep.BRIDGE_MERGE:
            body = json.loads(request.content)
            self.merges.append(body)
            mid = f"m{len(self.merges)}"
            self.status.update(merge_id=mid, merge_live=True, weights=body["weights"])
            return httpx.Response(
                200,
                json={"merge_id": mid, "changed_blocks": ["IN00"], "elapsed_s": 0.1,
                      "model_a": body["model_a"], "model_b": body["model_b"], "arch": "sd1"},
            )  # fmt: skip
        if path == ep.BRIDGE_STATUS:
            return httpx.Response(200, json=self.status)
        if path == ep.TXT2IMG:
            self.on_txt2img()
            return httpx.Response(200, json=txt2img_answer([png_b64()]))
        if path == ep.PROGRESS:
            return httpx.Response(200, json=IDLE)
        if path == ep.BRIDGE_SAVE:
            body = json.loads(request.content)
            return httpx.Response(200, json={"name": body["name"], "path": "/m/" + body["name"]})
        if path == ep.BRIDGE_RESTORE:
            return httpx.Response(200, json={"restored": True, "freed_bytes": 12})
        return not_found(request)


async def test_bridge_merge_sends_named_weights_and_checks_liveness() -> None:
    fake = FakeBridge()
    w = Weights.uniform(Arch.SD1, 0.25, text_encoder=0.5).replace({"OUT": 1.0})
    async with client(fake) as c:
        merge = await c.bridge_merge("A.safetensors", "B.safetensors", w, cache_device="cpu")
        assert merge.merge_id == "m1" and merge.changed_blocks == ["IN00"]
        body = fake.merges[0]
        assert body["weights"]["OUT"] == 1.0 and body["weights"]["IN00"] == 0.25
        assert len(body["weights"]) == 27 and body["text_encoder_weight"] == 0.5
        assert body["cache_device"] == "cpu"
        status = await c.ensure_merge_live("m1")
        assert status.merge_live and status.weights and status.weights["OUT"] == 1.0

        with pytest.raises(MergeLost, match="holds merge m1, not m0"):
            await c.ensure_merge_live("m0")
        fake.status.update(merge_live=False, lost_reason="checkpoint reloaded")
        with pytest.raises(MergeLost, match="checkpoint reloaded") as exc:
            await c.ensure_merge_live("m1")
        assert exc.value.expected == "m1"


async def test_txt2img_refuses_images_of_a_merge_lost_mid_render() -> None:
    fake = FakeBridge()
    w = Weights.uniform(Arch.SD1, 0.5)
    async with client(fake) as c:
        merge = await c.bridge_merge("A", "B", w)
        ok = await c.txt2img({"prompt": "x"}, expect_merge_id=merge.merge_id)
        assert len(ok.images) == 1

        def reload() -> None:  # the WebUI reloads its checkpoint while rendering
            fake.status.update(merge_live=False)

        fake.on_txt2img = reload
        with pytest.raises(MergeLost):
            await c.txt2img({"prompt": "x"}, expect_merge_id=merge.merge_id)


async def test_bridge_save_and_restore() -> None:
    fake = FakeBridge()
    async with client(fake) as c:
        saved = await c.bridge_save("best-merge", Weights.uniform(Arch.SDXL, 0.3))
        restored = await c.bridge_restore(free_caches=True)
    assert saved.path == "/m/best-merge" and restored.freed_bytes == 12


async def test_bridge_save_is_not_retried_after_a_drop() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ReadError("connection reset", request=request)

    async with client(handler) as c:
        with pytest.raises(WebUIUnreachable):
            await c.bridge_save("x", Weights.uniform(Arch.SD1, 0.3))
    assert calls == 1


# --- misc ------------------------------------------------------------------------------------
async def test_closed_client_refuses_calls() -> None:
    c = client(lambda r: httpx.Response(200, json={}))
    async with c:
        await c.ping()
    assert c.closed
    with pytest.raises(RuntimeError, match="closed"):
        await c.ping()


def test_split_url() -> None:
    assert split_url("127.0.0.1:7860/") == ("http://127.0.0.1:7860", None)
    assert split_url("https://u:p@gpu.box:8443/") == ("https://gpu.box:8443", ("u", "p"))
    with pytest.raises(ConfigError, match="not an http"):
        split_url("ftp://u:pw@host/")
    with pytest.raises(ConfigError) as exc:
        split_url("ftp://u:pw@host/")
    assert "pw" not in str(exc.value)


async def test_every_client_error_is_a_webui_error() -> None:
    async with client(not_found) as c:
        with pytest.raises(WebUIError):
            await c.progress()


async def test_bridge_refusal_keeps_the_servers_text_and_hint() -> None:
    body = {
        "error": "UnknownModel",
        "detail": "no checkpoint 'modelC' in the WebUI",
        "hint": "close names: modelA, modelB",
    }
    async with client(lambda r: httpx.Response(400, json=body)) as c:
        with pytest.raises(WebUIHTTPError) as exc:
            await c.bridge_merge("modelA", "modelC", Weights.uniform(Arch.SD1, 0.5))
    assert exc.value.status_code == 400 and not isinstance(exc.value, BridgeMissing)
    assert "bridge merge refused (400): UnknownModel: no checkpoint 'modelC'" in str(exc.value)
    assert exc.value.hint == "close names: modelA, modelB"
