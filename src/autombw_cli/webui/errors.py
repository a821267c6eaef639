"""The errors the WebUI client raises, all ``WebUIError`` (CLI exit code 3).

::

    WebUIError (autombw_cli.errors)
    ├── WebUIUnreachable        cannot connect, connection refused/reset, dropped mid-request
    ├── WebUITimeout            a control call timed out, or txt2img made no progress (stall)
    ├── WebUIHTTPError          the instance answered with an error status
    │   ├── WebUIAuthError          401: credentials missing or rejected (--api-auth)
    │   ├── ApiNotEnabled           404 on /sdapi/...: the WebUI runs without --api
    │   ├── BridgeMissing           404 on /autombw/...: the bridge extension is not installed
    │   ├── WebUIValidationError    422: the request has bad fields (``.fields``)
    │   └── WebUIServerError        5xx: the server's own error text (``.out_of_memory``)
    ├── WebUIBadResponse        not JSON / not the expected shape / not an image / truncated image
    ├── CheckpointNotLoaded     the WebUI did not switch to the requested checkpoint
    └── MergeLost               the bridge's in-memory merge is gone or is another merge

How a caller may react (the scheduler's policy, not enforced here):

- ``WebUIUnreachable``, ``WebUITimeout``: the instance is down or hung; the trial failed and
  the worker should back off and re-check the instance (``ping``/``progress``).
- ``WebUIServerError``: this request failed (e.g. CUDA out of memory); record the trial as
  failed, the instance is usually fine.
- ``WebUIAuthError``, ``ApiNotEnabled``, ``BridgeMissing``, ``WebUIValidationError``: a setup
  or payload problem that repeats on every request; stop and tell the user.
- ``MergeLost``: redo the merge before rendering; never record a score for that evaluation.

No message, ``repr`` or attribute holds credentials: the client strips them before it builds
an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from autombw_cli.errors import WebUIError

__all__ = [
    "ApiNotEnabled",
    "BridgeMissing",
    "CheckpointNotLoaded",
    "FieldError",
    "MergeLost",
    "WebUIAuthError",
    "WebUIBadResponse",
    "WebUIError",
    "WebUIHTTPError",
    "WebUIServerError",
    "WebUITimeout",
    "WebUIUnreachable",
    "WebUIValidationError",
    "is_out_of_memory",
]


class WebUIUnreachable(WebUIError):
    """No answer: connection refused, reset, DNS failure, or the connection dropped mid-request.

    ``request_sent`` is True when the request may have reached the server before the
    connection broke (then a txt2img may still be running there).
    """

    instance_down = True

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        instance: str | None = None,
        request_sent: bool = False,
    ) -> None:
        super().__init__(message, hint=hint, instance=instance)
        self.request_sent = request_sent


class WebUITimeout(WebUIError):
    """A control call timed out, or a generation stopped making progress.

    ``stalled_s`` is set for the txt2img watchdog: seconds without progress when it gave up.
    """

    instance_down = True

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        instance: str | None = None,
        stalled_s: float | None = None,
    ) -> None:
        super().__init__(message, hint=hint, instance=instance)
        self.stalled_s = stalled_s


class WebUIHTTPError(WebUIError):
    """The instance answered ``status_code`` to ``method path``; ``detail`` is its error text,
    ``kind`` the error's ``error`` field (the bridge's refusal kind, e.g. ``OutputExists``),
    ``json_answer`` whether the answer was a JSON object (as FastAPI's and A1111's are)."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        instance: str | None = None,
        status_code: int | None = None,
        method: str = "",
        path: str = "",
        detail: str = "",
        kind: str = "",
        json_answer: bool = False,
    ) -> None:
        super().__init__(message, hint=hint, instance=instance, status_code=status_code)
        self.method = method
        self.path = path
        self.detail = detail
        self.kind = kind
        self.json_answer = json_answer  # the error came as a JSON object (FastAPI, A1111)


class WebUIAuthError(WebUIHTTPError):
    """401: the instance wants HTTP Basic credentials, or rejected the ones given."""


class ApiNotEnabled(WebUIHTTPError):
    """404 on an /sdapi route: the WebUI was started without ``--api``."""


class BridgeMissing(WebUIHTTPError):
    """404 on an /autombw route: the bridge extension is not installed or not loaded."""


class UnsupportedWebUI(WebUIHTTPError):
    """The bridge is installed in a WebUI it cannot merge in (Stable Diffusion WebUI Forge):
    every bridge route answers 501 with ``error: UnsupportedWebUI``. Retrying cannot help."""

    @property
    def needs_attention(self) -> bool:
        return True


class BridgeTooOld(WebUIHTTPError):
    """The bridge refused a field it predates (an add-difference merge asked of a bridge older
    than ``bridge_api`` 2). Retrying cannot help: the extension must be reinstalled."""

    @property
    def needs_attention(self) -> bool:
        return True


@dataclass(frozen=True)
class FieldError:
    """One offending field of a 422 answer: ``field`` is a dotted path (``steps``,
    ``override_settings.CLIP_stop_at_last_layers``), ``message`` the server's words."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class WebUIValidationError(WebUIHTTPError):
    """422: FastAPI rejected the request body; ``fields`` lists what to fix."""

    def __init__(
        self,
        message: str,
        *,
        fields: tuple[FieldError, ...] = (),
        hint: str | None = None,
        instance: str | None = None,
        method: str = "",
        path: str = "",
        detail: str = "",
        json_answer: bool = False,
    ) -> None:
        super().__init__(
            message,
            hint=hint,
            instance=instance,
            status_code=422,
            method=method,
            path=path,
            detail=detail,
            json_answer=json_answer,
        )
        self.fields = fields


class WebUIServerError(WebUIHTTPError):
    """5xx: the request failed inside the WebUI. ``error_type`` is A1111's ``error`` field
    (an exception class name such as ``OutOfMemoryError``); ``out_of_memory`` flags CUDA OOM."""

    def __init__(
        self,
        message: str,
        *,
        error_type: str = "",
        hint: str | None = None,
        instance: str | None = None,
        status_code: int | None = 500,
        method: str = "",
        path: str = "",
        detail: str = "",
        json_answer: bool = False,
    ) -> None:
        super().__init__(
            message,
            hint=hint,
            instance=instance,
            status_code=status_code,
            method=method,
            path=path,
            detail=detail,
            json_answer=json_answer,
        )
        self.error_type = error_type

    @property
    def out_of_memory(self) -> bool:
        return is_out_of_memory(f"{self.error_type} {self.detail}")


def is_out_of_memory(text: str) -> bool:
    """True for CUDA/torch out-of-memory error texts."""
    low = text.lower()
    return "out of memory" in low or "outofmemory" in low


class WebUIBadResponse(WebUIError):
    """The answer is not what the API promises: not JSON, wrong shape, or bad image data."""


class CheckpointNotLoaded(WebUIError):
    """The WebUI did not end up on the requested checkpoint (unknown name or a failed load)."""


class MergeLost(WebUIError):
    """The bridge no longer holds the merge a caller relied on (a reload, a restart, or
    another merge replaced it). ``expected`` and ``current`` are merge ids."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        instance: str | None = None,
        expected: str | None = None,
        current: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, instance=instance)
        self.expected = expected
        self.current = current
