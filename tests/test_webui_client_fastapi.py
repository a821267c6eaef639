"""Error mapping against answers produced by real FastAPI, not hand-written JSON.

The app below is built the way A1111 1.x builds its API (modules/api/api.py): routes on a
FastAPI app, HTTP Basic auth as a route dependency, and an exception middleware that turns any
exception into ``{"error", "detail", "body", "errors"}``. It runs in-process through
``httpx.ASGITransport`` (no sockets)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel

from autombw_cli.webui import endpoints as ep
from autombw_cli.webui.client import WebUIClient
from autombw_cli.webui.errors import (
    ApiNotEnabled,
    BridgeMissing,
    WebUIAuthError,
    WebUIHTTPError,
    WebUIServerError,
    WebUIValidationError,
)
from autombw_cli.webui.timeouts import RetryPolicy

pytestmark = pytest.mark.anyio


class Txt2ImgRequest(BaseModel):
    prompt: str = ""
    steps: int = 20
    width: int = 512


def a1111_like_app(*, api: bool = True, auth: tuple[str, str] | None = None) -> FastAPI:
    app = FastAPI()

    def handle_exception(e: Exception) -> JSONResponse:  # as in A1111's api_middleware
        err = {
            "error": type(e).__name__,
            "detail": vars(e).get("detail", ""),
            "body": vars(e).get("body", ""),
            "errors": str(e),
        }
        return JSONResponse(status_code=vars(e).get("status_code", 500), content=err)

    @app.middleware("http")
    async def exception_handling(request: Request, call_next: Any) -> Any:
        try:
            return await call_next(request)
        except Exception as e:
            return handle_exception(e)

    @app.exception_handler(HTTPException)
    async def http_exception_handler(request: Request, e: HTTPException) -> JSONResponse:
        return handle_exception(e)

    def check_auth(credentials: HTTPBasicCredentials = Depends(HTTPBasic())) -> None:
        if auth is None or (credentials.username, credentials.password) != auth:
            raise HTTPException(
                status_code=401,
                detail="Incorrect username or password",
                headers={"WWW-Authenticate": "Basic"},
            )

    deps = [Depends(check_auth)] if auth else []

    @app.get(ep.PING)
    def ping() -> dict[str, Any]:
        return {}

    if api:

        @app.post(ep.TXT2IMG, dependencies=deps)
        def txt2img(req: Txt2ImgRequest) -> dict[str, Any]:
            if req.prompt == "oom":
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
            if req.prompt == "sampler":
                raise HTTPException(status_code=404, detail="Sampler not found")
            return {"images": [], "parameters": {}, "info": "{}"}

        @app.get(ep.OPTIONS, dependencies=deps)
        def options() -> dict[str, Any]:
            return {"sd_model_checkpoint": "a.safetensors"}

    return app


def client_for(app: FastAPI, **kw: Any) -> WebUIClient:
    return WebUIClient(
        "http://webui.test",
        transport=httpx.ASGITransport(app=app),
        retry=RetryPolicy(attempts=1),
        **kw,
    )


async def test_webui_without_api_and_without_bridge() -> None:
    async with client_for(a1111_like_app(api=False)) as c:
        await c.ping()  # the server is there...
        with pytest.raises(ApiNotEnabled):  # ...but its API is off
            await c.get_options()
        with pytest.raises(BridgeMissing):
            await c.bridge_status()


async def test_real_fastapi_422_names_the_fields() -> None:
    async with client_for(a1111_like_app()) as c:
        with pytest.raises(WebUIValidationError) as exc:
            await c.txt2img({"steps": "many", "width": [1]})
    assert sorted(f.field for f in exc.value.fields) == ["steps", "width"]
    assert "steps: Input should be a valid integer" in str(exc.value)


async def test_exception_in_route_gives_server_error_text() -> None:
    async with client_for(a1111_like_app()) as c:
        with pytest.raises(WebUIServerError) as exc:
            await c.txt2img({"prompt": "oom"})
        assert exc.value.out_of_memory and exc.value.error_type == "RuntimeError"
        assert "CUDA out of memory. Tried to allocate 20.00 GiB" in str(exc.value)

        with pytest.raises(WebUIHTTPError) as exc404:
            await c.txt2img({"prompt": "sampler"})
        assert not isinstance(exc404.value, ApiNotEnabled)
        assert "Sampler not found" in str(exc404.value)


async def test_api_auth() -> None:
    app = a1111_like_app(auth=("alice", "pw-123"))
    async with client_for(app) as c:
        with pytest.raises(WebUIAuthError, match="wants a user name"):
            await c.get_options()
        await c.ping()  # /internal/ping needs no credentials
    async with client_for(app, auth=("alice", "wrong")) as c:
        with pytest.raises(WebUIAuthError, match="'alice' were rejected"):
            await c.get_options()
    async with client_for(app, auth=("alice", "pw-123")) as c:
        assert (await c.get_options()).sd_model_checkpoint == "a.safetensors"
