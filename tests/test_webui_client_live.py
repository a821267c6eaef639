"""WebUIClient over real loopback HTTP: the /progress stall watchdog, dropped and refused
connections. The server is a small stdlib ``ThreadingHTTPServer`` scripted per test (the full
simulated WebUI is exercised in test_webui_client_sim.py)."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from autombw_cli.webui import endpoints as ep
from autombw_cli.webui.client import WebUIClient
from autombw_cli.webui.errors import WebUITimeout, WebUIUnreachable
from autombw_cli.webui.timeouts import ClientTimeouts, RetryPolicy

pytestmark = pytest.mark.anyio


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class Script:
    """What the fake WebUI does with txt2img: ``ok``, ``stall`` (no progress until
    interrupted), ``slow`` (advances a step every 50 ms for ``steps`` steps), ``drop`` (closes
    the connection without an answer)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.steps = 30
        self.step = 0
        self.posts = 0
        self.interrupts = 0
        self.interrupted = threading.Event()
        self.lock = threading.Lock()


class FakeWebUI(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: Script

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:
        s = self.script
        if self.path.startswith(ep.PROGRESS):
            with s.lock:
                step = s.step
            state = {"job": "txt2img", "job_count": 1, "job_no": 0, "sampling_step": step,
                     "sampling_steps": s.steps, "job_timestamp": "20260101000000"}  # fmt: skip
            self._json(200, {"progress": step / s.steps, "eta_relative": 1.0, "state": state})
        elif self.path == ep.PING:
            self._json(200, {})
        else:
            self._json(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        s = self.script
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        if self.path == ep.INTERRUPT:
            s.interrupts += 1
            s.interrupted.set()
            self._json(200, {})
            return
        if self.path != ep.TXT2IMG:
            self._json(404, {"detail": "Not Found"})
            return
        s.posts += 1
        if s.mode == "drop":
            self.close_connection = True
            return
        if s.mode == "stall":
            s.interrupted.wait(10)
        elif s.mode == "slow":
            for _ in range(s.steps):
                if s.interrupted.wait(0.05):
                    break
                with s.lock:
                    s.step += 1
        info = {"all_seeds": [1], "index_of_first_image": 0}
        self._json(200, {"images": [_png()], "parameters": {}, "info": json.dumps(info)})


@pytest.fixture
def webui() -> Iterator[tuple[str, Script]]:
    script = Script()
    handler = type("Handler", (FakeWebUI,), {"script": script})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        script.interrupted.set()
        server.shutdown()
        server.server_close()


TIMEOUTS = ClientTimeouts(stall=0.5, poll_interval=0.05, read=5.0)


async def test_stalled_generation_times_out_and_is_interrupted(
    webui: tuple[str, Script],
) -> None:
    url, script = webui
    script.mode = "stall"
    async with WebUIClient(url, label="gpu0", timeouts=TIMEOUTS) as c:
        with pytest.raises(WebUITimeout) as exc:
            await c.txt2img({"prompt": "x"})
        assert exc.value.stalled_s is not None and exc.value.stalled_s >= TIMEOUTS.stall
        assert "made no progress" in str(exc.value) and "stall" in str(exc.value)
        assert script.interrupts == 1 and script.posts == 1
        await c.ping()  # the client stays usable


async def test_stall_without_interrupt_when_turned_off(webui: tuple[str, Script]) -> None:
    url, script = webui
    script.mode = "stall"
    t = TIMEOUTS.model_copy(update={"interrupt_on_stall": False})
    async with WebUIClient(url, timeouts=t) as c:
        with pytest.raises(WebUITimeout):
            await c.txt2img({"prompt": "x"})
    assert script.interrupts == 0


async def test_long_generation_that_progresses_is_not_a_stall(webui: tuple[str, Script]) -> None:
    url, script = webui
    script.mode = "slow"  # 30 steps x 50 ms: three times the stall limit in all
    async with WebUIClient(url, timeouts=TIMEOUTS) as c:
        result = await c.txt2img({"prompt": "x"})
    assert len(result.images) == 1
    assert script.step == script.steps and script.interrupts == 0


async def test_dropped_connection_is_reported_and_not_reposted(webui: tuple[str, Script]) -> None:
    url, script = webui
    script.mode = "drop"
    async with WebUIClient(url, timeouts=TIMEOUTS, retry=RetryPolicy(backoff=0)) as c:
        with pytest.raises(WebUIUnreachable) as exc:
            await c.txt2img({"prompt": "x"})
        assert exc.value.request_sent and script.posts == 1
        script.mode = "ok"
        assert len((await c.txt2img({"prompt": "x"})).images) == 1


async def test_refused_connection_is_retried_then_reported() -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    retry = RetryPolicy(attempts=2, backoff=0)
    async with WebUIClient(f"127.0.0.1:{port}", retry=retry, label="gpu9") as c:
        with pytest.raises(WebUIUnreachable) as exc:
            await c.ping()
    assert "connection refused (2 attempts)" in str(exc.value)
    assert str(exc.value).startswith("gpu9: ") and not exc.value.request_sent
