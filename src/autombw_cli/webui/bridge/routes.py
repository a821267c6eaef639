"""The bridge's HTTP routes (``/autombw/v1/...``) on a FastAPI app.

The handlers read and check the request first (size, JSON, fields: `register_routes`), then run
the engine's call in a worker thread holding the host's queue lock, so a merge never runs while
the WebUI generates or loads a model, and a bad request never waits for (or holds) that lock.
Request bodies are plain dicts validated by hand: A1111 1.x ships pydantic 1, newer WebUIs
pydantic 2. The routes check the request's shape (size, JSON, known fields, types of the plain
fields); what needs the checkpoints (names, weights for the pair's architecture) is checked by
the engine. Every refusal is a `BridgeError` carrying its status (`bridge.errors`), answered
here in A1111's shape ``{"error", "detail", "body", "errors"}`` (plus ``hint``).

Only fastapi, torch, safetensors and the standard library (copied into the WebUI extension).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from autombw_cli.webui.bridge.core import BridgeCore
from autombw_cli.webui.bridge.errors import BridgeError, RequestTooLarge, ValidationError
from autombw_cli.webui.endpoints import BRIDGE_MERGE, BRIDGE_RESTORE, BRIDGE_SAVE, BRIDGE_STATUS

log = logging.getLogger("autombw.bridge")

Credentials = Callable[[], dict[str, str] | None]


def error_response(exc: BridgeError) -> JSONResponse:
    """A refusal in AUTOMATIC1111's shape (what its API middleware answers), with the status
    the error's class carries: the one place a `BridgeError` becomes an HTTP answer."""
    return _error_json(exc.status, exc.kind, exc.message, hint=exc.hint or "")


def _error_json(status: int, kind: str, message: str, *, hint: str = "") -> JSONResponse:
    errors = f"{message} (hint: {hint})" if hint else message
    content = {"error": kind, "detail": message, "body": "", "errors": errors, "hint": hint}
    return JSONResponse(status_code=status, content=content)


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

    Each request is checked in this order, and only the last step waits for the WebUI: the
    credentials; the body (at most `MAX_BODY_BYTES`, JSON, known fields, strings of at most
    `MAX_STRING` characters, at most `MAX_WEIGHTS` weights); then, in a worker thread under
    the queue lock, the engine's call. A huge or malformed request never holds the lock.
    """
    current: Callable[[], BridgeCore] = core if callable(core) else (lambda: core)

    async def run(
        request: Request,
        known: set[str] | None,
        action: Callable[[BridgeCore, dict[str, Any]], Any],
    ) -> Any:
        refused = check_basic_auth(request, credentials() if credentials else None)
        if refused is not None:
            return refused
        try:
            data = await _read_object(request) if known is not None else {}
            _check_fields(data, known or set())
        except BridgeError as exc:
            return error_response(exc)
        return await run_in_threadpool(locked, request, data, action)

    def locked(
        request: Request, data: dict[str, Any], action: Callable[[BridgeCore, dict[str, Any]], Any]
    ) -> Any:
        engine = current()
        try:
            with engine.host.queue_lock:
                return action(engine, data)
        except BridgeError as exc:
            return error_response(exc)
        except Exception as exc:  # the WebUI's own errors (e.g. CUDA OOM)
            log.exception("autombw bridge: %s %s failed", request.method, request.url.path)
            return _error_json(500, type(exc).__name__, str(exc))

    async def status(request: Request) -> Any:
        return await run(request, None, lambda engine, _data: engine.status())

    async def merge(request: Request) -> Any:
        def action(engine: BridgeCore, data: dict[str, Any]) -> Any:
            outcome = engine.merge(
                _require(data, "model_a"),
                _require(data, "model_b"),
                _require(data, "weights"),
                cache_device=_get_str(data, "cache_device", "auto"),
                text_encoder_weight=data.get("text_encoder_weight"),
                extrapolation=_get_bool(data, "extrapolation", False),
                formula=_get_optional_str(data, "formula"),
                model_c=data.get("model_c"),
            )
            return outcome.to_json()

        return await run(request, MERGE_FIELDS, action)

    async def restore(request: Request) -> Any:
        def action(engine: BridgeCore, data: dict[str, Any]) -> Any:
            return engine.restore(free_caches=_get_bool(data, "free_caches", False))

        return await run(request, RESTORE_FIELDS, action)

    async def save(request: Request) -> Any:
        def action(engine: BridgeCore, data: dict[str, Any]) -> Any:
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

        return await run(request, SAVE_FIELDS, action)

    app.add_api_route(BRIDGE_STATUS, status, methods=["GET"])
    app.add_api_route(BRIDGE_MERGE, merge, methods=["POST"])
    app.add_api_route(BRIDGE_RESTORE, restore, methods=["POST"])
    app.add_api_route(BRIDGE_SAVE, save, methods=["POST"])


MERGE_FIELDS = {
    "model_a",
    "model_b",
    "weights",
    "cache_device",
    "text_encoder_weight",
    "extrapolation",
    "formula",  # bridge_api 2: add_difference (with model_c) or weighted_sum (the default); 3: lora
    "model_c",
}
RESTORE_FIELDS = {"free_caches"}
SAVE_FIELDS = {
    "name",
    "weights",
    "dtype",
    "format",
    "overwrite",
    "text_encoder_weight",
    "extrapolation",
}
MAX_BODY_BYTES = 1 << 20  # a merge request is ~1 KB
MAX_STRING = 1024  # characters of a checkpoint name or any other string field
MAX_WEIGHTS = 64  # entries of ``weights`` (SDXL has 20 slots, SD1 27 with aliases)
MAX_SLOT_NAME = 32  # characters of a weights key (``TIME_EMBED``, ``OUT11``)


async def _read_object(request: Request) -> dict[str, Any]:
    """The JSON object of the body, read up to `MAX_BODY_BYTES` (413 beyond, before parsing);
    an empty body is ``{}``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large(size)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, an int of 4300+ digits
        raise _invalid("the request body is not valid JSON") from None
    return _require_object(body)


def _too_large(size: int) -> BridgeError:
    return RequestTooLarge(
        f"the request body is {size} bytes; the bridge takes at most {MAX_BODY_BYTES}"
    )


def _check_fields(data: dict[str, Any], known: set[str]) -> None:
    """Refuse unknown fields, over-long strings and oversized weight maps (no lock held)."""
    _reject_unknown(data, known)
    for name, value in data.items():
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise _invalid(f"field {name} is {len(value)} characters long; at most {MAX_STRING}")
    weights = data.get("weights")
    if isinstance(weights, dict):
        if len(weights) > MAX_WEIGHTS:
            raise _invalid(f"weights has {len(weights)} entries; at most {MAX_WEIGHTS}")
        for key in weights:
            if len(key) > MAX_SLOT_NAME:
                raise _invalid(
                    f"weights: a key of {len(key)} characters is no block name "
                    f"(at most {MAX_SLOT_NAME})"
                )


# --- hand validation (no pydantic: A1111 1.x has v1, others v2) ------------------------------
def _invalid(message: str) -> BridgeError:
    return ValidationError(message)


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


def _get_optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"field {name} must be a string")
    return value


def _get_bool(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"field {name} must be true or false")
    return value
