"""Timeouts and retry policy of the WebUI client, as frozen values.

``ClientTimeouts`` is a pydantic model (``extra="forbid"``) so the config layer can embed it in
an instance's config section; ``RetryPolicy`` likewise. ``httpx_timeout``/``httpx_limits`` are
the one place they turn into httpx objects.

Why these defaults:

- ``connect`` is short (5 s): a local or LAN WebUI accepts in milliseconds; a refused or
  silent port should fail fast and be retried with backoff.
- ``read`` (30 s) covers control calls (progress, options GET, sd-models, bridge status).
- ``model_load`` (600 s) is the read timeout of calls that may load a checkpoint or wait behind
  the WebUI's queue: ``POST /options``, ``refresh-checkpoints``, bridge merge/restore/save.
  ``None`` turns it off.
- txt2img has no read timeout at all. A second connection polls ``/progress`` every
  ``poll_interval`` seconds, and the client gives up (``WebUITimeout``) when the instance shows
  no progress for ``stall`` seconds. A queued generation waiting behind someone else's job is
  not a stall as long as that job advances. ``stall`` must be longer than the longest
  step-less phase you expect (a checkpoint load, a VAE decode of a large batch, a hires-fix
  upscale): 180 s by default.
- ``keepalive_expiry`` stays below 5 s because Gradio's server drops idle keep-alive sockets
  after about 5 s; reusing such a socket gives "server disconnected" errors.
"""

from __future__ import annotations

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

GRADIO_KEEPALIVE_S = 5.0  # Gradio/uvicorn drop idle keep-alive connections after about this


class ClientTimeouts(BaseModel):
    """Seconds; see the module docstring for what each one bounds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connect: float = Field(5.0, gt=0, description="TCP connect timeout")
    read: float = Field(30.0, gt=0, description="read timeout of control calls")
    write: float = Field(30.0, gt=0, description="write timeout of any request")
    pool: float = Field(30.0, gt=0, description="wait for a free pooled connection")
    model_load: float | None = Field(
        600.0, gt=0, description="read timeout of calls that may load a checkpoint; None: none"
    )
    stall: float = Field(
        180.0, gt=0, description="txt2img gives up after this long without progress"
    )
    poll_interval: float = Field(2.0, gt=0, description="how often txt2img polls /progress")
    keepalive_expiry: float = Field(4.0, ge=0, description="close idle connections after this")
    interrupt_on_stall: bool = Field(
        True, description="send /interrupt to an instance whose generation stalled"
    )

    @field_validator("keepalive_expiry")
    @classmethod
    def _below_gradio(cls, v: float) -> float:
        if v >= GRADIO_KEEPALIVE_S:
            raise ValueError(
                f"keepalive_expiry must stay below {GRADIO_KEEPALIVE_S:g} s "
                "(the WebUI drops idle connections after about 5 s)"
            )
        return v


class RetryPolicy(BaseModel):
    """Retries for connection-level failures only (never for an HTTP error answer).

    Attempt ``n`` (0-based) that fails waits ``min(backoff_max, backoff * 2**n)`` seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempts: int = Field(3, ge=1, description="tries in all, the first included")
    backoff: float = Field(0.5, ge=0, description="seconds before the first retry")
    backoff_max: float = Field(8.0, ge=0, description="cap of the doubling backoff")

    def delay(self, failed_attempt: int) -> float:
        return min(self.backoff_max, self.backoff * (2**failed_attempt))


def httpx_timeout(t: ClientTimeouts, read: float | None) -> httpx.Timeout:
    """The ``httpx.Timeout`` of one request; ``read=None`` means no read timeout (txt2img)."""
    return httpx.Timeout(connect=t.connect, read=read, write=t.write, pool=t.pool)


def httpx_limits(t: ClientTimeouts) -> httpx.Limits:
    """Connection limits: a few connections (txt2img plus its /progress watcher plus control
    calls), idle ones closed before Gradio drops them."""
    return httpx.Limits(
        max_connections=8, max_keepalive_connections=4, keepalive_expiry=t.keepalive_expiry
    )
