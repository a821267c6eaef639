"""What the bridge refuses, each with its HTTP status and error kind.

    BridgeError (AutombwError)       400 "BridgeError"
    ├── BadRequest                   400 BadName, NoCuda, SameModel, Unsupported, ModelMismatch*
    ├── ValidationError              422 a request field (or weight) the bridge cannot use
    ├── RequestTooLarge              413
    ├── UnknownModel                 404
    ├── Conflict                     409 ModelMismatch, NoMerge, OutputExists, OutputIsInput
    ├── ServerError                  500 InternalError, LoadFailed, ModelMismatch*
    └── UnsupportedWebUI             501 (Forge)

``kind`` is the ``error`` field of the answer (part of the HTTP contract the client maps,
`webui.mapping`); the routes turn any `BridgeError` into a response in one place
(`routes.error_response`). (* an unreadable checkpoint is a 400 ModelMismatch, two checkpoints
that do not fit a 409, a live model lacking a key a 500.) Standard library only (copied into
the WebUI extension).
"""

from __future__ import annotations

from autombw_cli.errors import AutombwError
from autombw_cli.webui.endpoints import UNSUPPORTED_WEBUI


class BridgeError(AutombwError):
    """A request the bridge refuses: ``status`` is the HTTP status, ``kind`` the error name."""

    status = 400
    default_kind = "BridgeError"

    def __init__(self, message: str, *, hint: str | None = None, kind: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind or self.default_kind


class BadRequest(BridgeError):
    status = 400


class ValidationError(BridgeError):
    status = 422
    default_kind = "ValidationError"


class RequestTooLarge(BridgeError):
    status = 413
    default_kind = "RequestTooLarge"


class UnknownModel(BridgeError):
    status = 404
    default_kind = "UnknownModel"


class Conflict(BridgeError):
    status = 409


class ServerError(BridgeError):
    status = 500
    default_kind = "InternalError"


class UnsupportedWebUI(BridgeError):
    status = 501
    default_kind = UNSUPPORTED_WEBUI
