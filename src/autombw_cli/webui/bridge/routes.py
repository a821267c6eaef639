"""The bridge's HTTP routes (``/autombw/v1/...``) on a FastAPI app.

Plain ``def`` handlers (FastAPI runs them in a worker thread), each holding the host's queue
lock so a merge never runs while the WebUI generates or loads a model. Request bodies are plain
dicts validated by hand: A1111 1.x ships pydantic 1, Forge a newer one. Errors answer in
A1111's shape ``{"error", "detail", "body", "errors"}`` (plus ``hint``) with a real status.

Only fastapi, torch, safetensors and the standard library (copied into the WebUI extension).
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse

from autombw_cli.webui.bridge.core import BridgeCore, BridgeError
from autombw_cli.webui.endpoints import BRIDGE_MERGE, BRIDGE_RESTORE, BRIDGE_SAVE, BRIDGE_STATUS

log = logging.getLogger("autombw.bridge")

Credentials = Callable[[], dict[str, str] | None]


def error_response(
    status: int, kind: str, message: str, *, hint: str = "", headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error in AUTOMATIC1111's shape (what its API middleware answers)."""
    errors = f"{message} (hint: {hint})" if hint else message
    content = {"error": kind, "detail": message, "body": "", "errors": errors, "hint": hint}
    return JSONResponse(status_code=status, content=content, headers=headers)


def check_basic_auth(request: Request, credentials: dict[str, str] | None) -> JSONResponse | None:
    """None when ``credentials`` is None (no --api-auth) or the request carries a valid pair;
    otherwise the 401 answer A1111 gives."""
    if not credentials:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return _unauthorized("Not authenticated")
    try:
        user, _, password = base64.b64decode(encoded).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return _unauthorized("Invalid authentication credentials")
    expected = credentials.get(user)
    if expected is None or not secrets.compare_digest(password, expected):
        return _unauthorized("Incorrect username or password")
    return None


def _unauthorized(detail: str) -> JSONResponse:
    return JSONResponse(
        status_code=401, content={"detail": detail}, headers={"WWW-Authenticate": "Basic"}
    )


def register_routes(
    app: FastAPI,
    core: BridgeCore | Callable[[], BridgeCore],
    *,
    credentials: Credentials | None = None,
) -> None:
    """Add the four bridge routes to ``app``.

    ``core`` is the engine, or a function returning the current one (the simulator replaces
    its engine on a simulated restart); ``credentials`` gives the --api-auth pairs (None: no
    auth, as A1111 without --api-auth).
    """
    current: Callable[[], BridgeCore] = core if callable(core) else (lambda: core)

    def run(request: Request, action: Callable[[BridgeCore], Any]) -> Any:
        refused = check_basic_auth(request, credentials() if credentials else None)
        if refused is not None:
            return refused
        engine = current()
        try:
            with engine.host.queue_lock:
                return action(engine)
        except BridgeError as exc:
            return error_response(exc.status, exc.kind, exc.message, hint=exc.hint)
        except Exception as exc:  # the WebUI's own errors (e.g. CUDA OOM)
            log.exception("autombw bridge: %s %s failed", request.method, request.url.path)
            return error_response(500, type(exc).__name__, str(exc))

    def status(request: Request) -> Any:
        return run(request, lambda engine: engine.status())

    def merge(request: Request, body: Any = Body(default=None)) -> Any:
        def action(engine: BridgeCore) -> Any:
            data = _require_object(body)
            _reject_unknown(
                data,
                {
                    "model_a",
                    "model_b",
                    "weights",
                    "cache_device",
                    "text_encoder_weight",
                    "extrapolation",
                },
            )
            outcome = engine.merge(
                _require(data, "model_a"),
                _require(data, "model_b"),
                _require(data, "weights"),
                cache_device=_get_str(data, "cache_device", "auto"),
                text_encoder_weight=data.get("text_encoder_weight"),
                extrapolation=_get_bool(data, "extrapolation", False),
            )
            return outcome.to_json()

        return run(request, action)

    def restore(request: Request, body: Any = Body(default=None)) -> Any:
        def action(engine: BridgeCore) -> Any:
            data = {} if body is None else _require_object(body)
            _reject_unknown(data, {"free_caches"})
            return engine.restore(free_caches=_get_bool(data, "free_caches", False))

        return run(request, action)

    def save(request: Request, body: Any = Body(default=None)) -> Any:
        def action(engine: BridgeCore) -> Any:
            data = _require_object(body)
            _reject_unknown(
                data,
                {
                    "name",
                    "weights",
                    "dtype",
                    "format",
                    "overwrite",
                    "text_encoder_weight",
                    "extrapolation",
                },
            )
            outcome = engine.save(
                _require(data, "name"),
                data.get("weights"),
                dtype=_get_str(data, "dtype", "fp16"),
                overwrite=_get_bool(data, "overwrite", False),
                text_encoder_weight=data.get("text_encoder_weight"),
                extrapolation=_get_bool(data, "extrapolation", False),
                fmt=_get_str(data, "format", "safetensors"),
            )
            return outcome.to_json()

        return run(request, action)

    app.add_api_route(BRIDGE_STATUS, status, methods=["GET"])
    app.add_api_route(BRIDGE_MERGE, merge, methods=["POST"])
    app.add_api_route(BRIDGE_RESTORE, restore, methods=["POST"])
    app.add_api_route(BRIDGE_SAVE, save, methods=["POST"])


# --- hand validation (no pydantic: A1111 1.x has v1, Forge v2) ------------------------------
def _invalid(message: str) -> BridgeError:
    return BridgeError(message, status=422, kind="ValidationError")


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object")
    return body


def _reject_unknown(data: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise _invalid(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def _require(data: dict[str, Any], name: str) -> Any:
    if data.get(name) is None:
        raise _invalid(f"field {name} is required")
    return data[name]


def _get_str(data: dict[str, Any], name: str, default: str) -> str:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _invalid(f"field {name} must be a string")
    return value


def _get_bool(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"field {name} must be true or false")
    return value
