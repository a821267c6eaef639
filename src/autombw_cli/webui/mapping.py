"""Translating HTTP answers and transport failures into typed results and ``WebUIError``s.

The one place that knows A1111's error shapes: ``{"error", "detail", "body", "errors"}`` from
its exception middleware, FastAPI's ``{"detail": ...}`` (a list for 422 validation errors, in
the pydantic 1 or 2 form), and the router's own ``{"detail": "Not Found"}`` for a route that
does not exist (which is how a WebUI without ``--api`` or without the bridge answers).
"""

from __future__ import annotations

import json
import socket
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from autombw_cli.webui import endpoints as ep
from autombw_cli.webui.errors import (
    ApiNotEnabled,
    BridgeMissing,
    FieldError,
    UnsupportedWebUI,
    WebUIAuthError,
    WebUIBadResponse,
    WebUIHTTPError,
    WebUIServerError,
    WebUIValidationError,
    is_out_of_memory,
)

M = TypeVar("M")

DETAIL_MAX = 600  # characters of a server's error text kept in a message


def parse_answer(
    resp: httpx.Response, model: type[M] | TypeAdapter[M], *, what: str, instance: str, url: str
) -> M:
    """The JSON answer validated into ``model``; ``WebUIBadResponse`` when it does not fit."""
    try:
        data = resp.json()
    except ValueError:
        raise WebUIBadResponse(
            f"{what}: the answer is not JSON ({resp.status_code}, "
            f"{resp.headers.get('content-type', 'no content type')}: "
            f"{clip(resp.text, 120)!r})",
            hint=f"is {url} an AUTOMATIC1111 WebUI? a proxy or another program may "
            "answer on that port",
            instance=instance,
        ) from None
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(data)
        assert issubclass(model, BaseModel)
        return model.model_validate(data)  # type: ignore[return-value]
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "answer"
        raise WebUIBadResponse(
            f"{what}: unexpected answer ({loc}: {first['msg']})",
            hint="this WebUI version answers differently than autombw expects; check that "
            "the WebUI and the bridge extension are up to date",
            instance=instance,
        ) from e


def raise_for_status(
    resp: httpx.Response,
    *,
    method: str,
    path: str,
    what: str,
    instance: str,
    url: str,
    user: str | None,
) -> None:
    """Raise the ``WebUIHTTPError`` subclass an error answer means (nothing for 2xx)."""
    if resp.is_success:
        return
    status = resp.status_code
    try:
        body: Any = resp.json()
    except ValueError:
        body = None
    detail = error_text(body, resp.text)
    common = {
        "instance": instance,
        "method": method,
        "path": path,
        "detail": detail,
        "json_answer": isinstance(body, dict),
    }
    if status == 401:
        who = (
            f"the credentials of user {user!r} were rejected"
            if user is not None
            else "the instance wants a user name and password"
        )
        raise WebUIAuthError(
            f"{what} refused (401 Unauthorized): {who}",
            hint="the WebUI runs with --api-auth user:password; set the instance's "
            "credentials through the environment variables named in the config",
            status_code=401,
            **common,
        )
    if status == 404 and route_missing(body):
        if ep.is_sdapi(path):
            raise ApiNotEnabled(
                f"{path} not found (404): the WebUI's API is off",
                hint="start the WebUI with --api (add it to COMMANDLINE_ARGS in "
                "webui-user.sh / webui-user.bat)",
                status_code=404,
                **common,
            )
        if ep.is_bridge(path):
            raise BridgeMissing(
                f"{path} not found (404): the autombw bridge extension is not installed",
                hint="run `autombw webui install-extension WEBUI_DIR` and restart the WebUI",
                status_code=404,
                **common,
            )
        raise WebUIHTTPError(
            f"{path} not found (404)",
            hint=f"is {url} an AUTOMATIC1111 WebUI (1.6 or newer)?",
            status_code=404,
            **common,
        )
    if status == 422:
        fields = field_errors(body)
        listed = "; ".join(str(f) for f in fields) or detail
        raise WebUIValidationError(
            f"{what} rejected (422): {listed}",
            hint="fix these fields" + (" in the payload file" if path == ep.TXT2IMG else ""),
            fields=fields,
            **common,
        )
    if isinstance(body, dict) and body.get("error") == ep.UNSUPPORTED_WEBUI:
        server_hint = body.get("hint")
        raise UnsupportedWebUI(
            f"{what} refused ({status}): {detail}",
            hint=server_hint if isinstance(server_hint, str) and server_hint else None,
            status_code=status,
            kind=ep.UNSUPPORTED_WEBUI,
            **common,
        )
    if status >= 500:
        error_type = str(body.get("error") or "") if isinstance(body, dict) else ""
        raise WebUIServerError(
            f"{what} failed on the server ({status}): {detail or 'no error text'}",
            error_type=error_type,
            status_code=status,
            hint="the GPU ran out of memory: lower width/height/batch_size or the hires-fix "
            "scale, or start the WebUI with --medvram"
            if is_out_of_memory(f"{error_type} {detail}")
            else "the WebUI console shows the full traceback",
            **common,
        )
    server_hint = body.get("hint") if isinstance(body, dict) else None
    kind = body.get("error") if isinstance(body, dict) else None
    raise WebUIHTTPError(
        f"{what} refused ({status}): {detail or resp.reason_phrase}",
        hint=server_hint if isinstance(server_hint, str) and server_hint else None,
        status_code=status,
        kind=kind if isinstance(kind, str) else "",
        **common,
    )


def route_missing(body: Any) -> bool:
    """A 404 of the router itself (``{"detail": "Not Found"}`` or not JSON), as opposed to a
    route's own 404 (A1111 answers those with an ``error`` field, the bridge with its text)."""
    if body is None:
        return True
    return isinstance(body, dict) and set(body) == {"detail"} and body["detail"] == "Not Found"


def error_text(body: Any, text: str) -> str:
    """The server's words: A1111's ``{error, detail, body, errors}`` or FastAPI's ``detail``."""
    if isinstance(body, dict):
        detail = body.get("detail")
        errors = body.get("errors")
        error = body.get("error")
        msg = ""
        if isinstance(detail, str) and detail:
            msg = detail
        elif isinstance(errors, str) and errors:
            msg = errors
        elif detail:
            msg = json.dumps(detail)
        elif errors:
            msg = json.dumps(errors)
        if isinstance(error, str) and error and error != "HTTPException":
            msg = f"{error}: {msg}" if msg else error
        return clip(msg, DETAIL_MAX)
    return clip(text.strip(), DETAIL_MAX)


def field_errors(body: Any) -> tuple[FieldError, ...]:
    """FastAPI's 422 ``detail`` list (pydantic 1 or 2 shape) as dotted field paths."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, list):
        return ()
    out = []
    for item in detail:
        if not isinstance(item, dict):
            continue
        loc = [str(p) for p in item.get("loc", [])]
        if loc and loc[0] in ("body", "query", "path"):
            loc = loc[1:]
        msg = str(item.get("msg", "invalid"))
        if "input" in item and not isinstance(item["input"], dict | list):
            msg += f" (got {item['input']!r})"
        out.append(FieldError(".".join(loc), msg))
    return tuple(out)


def describe_transport_error(e: BaseException | None) -> str:
    """A short, user-facing cause of a transport error (walks the exception chain)."""
    if e is None:
        return "unknown error"
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cur, ConnectionResetError):
            return "connection reset"
        if isinstance(cur, socket.gaierror):
            return f"host name not found ({cur.strerror})"
        cur = cur.__cause__ or cur.__context__
    text = str(e) or type(e).__name__
    low = text.lower()
    if "refused" in low:
        return "connection refused"
    if "reset" in low:
        return "connection reset"
    if "disconnected" in low or "incomplete" in low:
        return "the server closed the connection"
    from autombw_cli.redact import redact_urls

    return clip(redact_urls(text), 200)


def timeout_text(e: httpx.TimeoutException, timeout: httpx.Timeout) -> str:
    if isinstance(e, httpx.ReadTimeout):
        return f"no answer within {timeout.read:g} s"
    if isinstance(e, httpx.PoolTimeout):
        return f"no free connection within {timeout.pool:g} s"
    if isinstance(e, httpx.WriteTimeout):
        return f"sending took over {timeout.write:g} s"
    return "timed out"


def clip(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters."""
    return text if len(text) <= n else text[: n - 1] + "…"
