"""Route paths of the AUTOMATIC1111 API and of the autombw bridge (one place for all of them).

Shared by the client (``webui.client``), the bridge extension's route code and the simulated
WebUI. Standard library only and no imports from the rest of the package, so the bridge
extension can carry this file into a WebUI unchanged.
"""

from __future__ import annotations

SDAPI_PREFIX = "/sdapi/v1"

TXT2IMG = f"{SDAPI_PREFIX}/txt2img"
OPTIONS = f"{SDAPI_PREFIX}/options"  # GET reads, POST sets (e.g. sd_model_checkpoint)
SD_MODELS = f"{SDAPI_PREFIX}/sd-models"
REFRESH_CHECKPOINTS = f"{SDAPI_PREFIX}/refresh-checkpoints"
SAMPLERS = f"{SDAPI_PREFIX}/samplers"
PROGRESS = f"{SDAPI_PREFIX}/progress"
INTERRUPT = f"{SDAPI_PREFIX}/interrupt"
MEMORY = f"{SDAPI_PREFIX}/memory"

# Not under /sdapi: answers without --api and without --api-auth credentials.
PING = "/internal/ping"

BRIDGE_PREFIX = "/autombw/v1"

BRIDGE_STATUS = f"{BRIDGE_PREFIX}/status"  # GET
BRIDGE_MERGE = f"{BRIDGE_PREFIX}/merge"  # POST
BRIDGE_RESTORE = f"{BRIDGE_PREFIX}/restore"  # POST
BRIDGE_SAVE = f"{BRIDGE_PREFIX}/save"  # POST

# The ``error`` of every bridge answer in a WebUI the bridge cannot merge in (Forge): 501.
UNSUPPORTED_WEBUI = "UnsupportedWebUI"


def is_sdapi(path: str) -> bool:
    """True for a route of A1111's own API (present only when the WebUI runs with ``--api``)."""
    return path.startswith(SDAPI_PREFIX + "/")


def is_bridge(path: str) -> bool:
    """True for a route added by the autombw bridge extension."""
    return path.startswith(BRIDGE_PREFIX + "/")
