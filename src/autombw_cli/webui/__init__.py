"""The async AUTOMATIC1111 WebUI client (and, in ``webui.bridge``, the bridge extension).

Public names are imported lazily, so ``autombw_cli.webui.endpoints`` (and the bridge code
shipped into a WebUI) can be imported without httpx, pydantic 2 or PIL.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "WebUIClient": "client",
    "split_url": "client",
    "ClientTimeouts": "timeouts",
    "RetryPolicy": "timeouts",
    "BridgeStatus": "models",
    "MergeResult": "models",
    "RestoreResult": "models",
    "SaveResult": "models",
    "SDModel": "models",
    "Sampler": "models",
    "Progress": "models",
    "Memory": "models",
    "Options": "models",
    "PingResult": "models",
    "Txt2ImgResult": "models",
    "WebUIError": "errors",
    "WebUIUnreachable": "errors",
    "WebUITimeout": "errors",
    "WebUIHTTPError": "errors",
    "WebUIAuthError": "errors",
    "ApiNotEnabled": "errors",
    "BridgeMissing": "errors",
    "UnsupportedWebUI": "errors",
    "WebUIValidationError": "errors",
    "WebUIServerError": "errors",
    "WebUIBadResponse": "errors",
    "CheckpointNotLoaded": "errors",
    "MergeLost": "errors",
    "FieldError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
