"""``WebUIClient``: the async client of one AUTOMATIC1111 WebUI instance (plus its bridge).

One client per instance, one ``httpx.AsyncClient`` per client::

    async with WebUIClient("http://127.0.0.1:7860", auth=("user", "pass"), label="gpu0") as c:
        await c.set_checkpoint("modelA.safetensors")
        merge = await c.bridge_merge("modelA.safetensors", "modelB.safetensors", weights)
        result = await c.txt2img(body, expect_merge_id=merge.merge_id)

Retries (``RetryPolicy``) happen only for connection-level failures, and only where a retry
cannot do a job twice:

- the request never left (connect refused/timed out, write failed): every call is retried;
- the connection broke after the request was sent (reset, "server disconnected"): only
  idempotent calls are retried (GETs, ``/options`` POST, interrupt, refresh, bridge merge and
  restore). ``txt2img`` and bridge ``save`` are not: the WebUI may have started the job and
  would run it twice, breaking "one generation per instance"; the caller gets
  ``WebUIUnreachable(request_sent=True)`` and decides (the scheduler fails the trial and
  re-checks the instance).
- an HTTP error answer (4xx/5xx) or a timeout is never retried here.

Everything that touches the model (txt2img, set_checkpoint, bridge merge/restore/save) holds
this client's ``asyncio.Lock``, so one client never has two of them in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import enum
import logging
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx
from pydantic import TypeAdapter

from autombw_cli.blocks import Weights
from autombw_cli.errors import ConfigError
from autombw_cli.redact import redact_url, redact_urls
from autombw_cli.webui import endpoints as ep
from autombw_cli.webui.errors import (
    BridgeTooOld,
    CheckpointNotLoaded,
    MergeLost,
    WebUIError,
    WebUIHTTPError,
    WebUITimeout,
    WebUIUnreachable,
    WebUIValidationError,
)
from autombw_cli.webui.images import decode_txt2img
from autombw_cli.webui.mapping import (
    describe_transport_error,
    parse_answer,
    raise_for_status,
    timeout_text,
)
from autombw_cli.webui.models import (
    BridgeStatus,
    Memory,
    MergeResult,
    Options,
    PingResult,
    Progress,
    RestoreResult,
    Sampler,
    SaveResult,
    SDModel,
    Txt2ImgResponse,
    Txt2ImgResult,
)
from autombw_cli.webui.timeouts import ClientTimeouts, RetryPolicy, httpx_limits, httpx_timeout

log = logging.getLogger(__name__)

M = TypeVar("M")

_SD_MODELS = TypeAdapter(list[SDModel])
_SAMPLERS = TypeAdapter(list[Sampler])

# Connection failures where the request certainly did not reach the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.WriteError)
# Connection failures after the request went out (the server may be working on it).
_SENT = (httpx.ReadError, httpx.RemoteProtocolError, httpx.CloseError)


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


def split_url(url: str) -> tuple[str, tuple[str, str] | None]:
    """``"http://u:p@host:7860/"`` -> (``"http://host:7860"``, (u, p)). A bare ``host:port``
    gets ``http://``. The returned URL never carries credentials."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parsed = httpx.URL(text)
    except httpx.InvalidURL as e:
        raise ConfigError(
            f"WebUI URL {redact_url(url)!r} is not a valid URL ({redact_urls(str(e))})"
        ) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(
            f"WebUI URL {redact_url(url)} is not an http(s) URL",
            hint="write it like http://127.0.0.1:7860",
        )
    auth = None
    if parsed.username or parsed.password:
        auth = (parsed.username, parsed.password)
    clean = parsed.copy_with(username=None, password=None, query=None, fragment=None)
    return str(clean).rstrip("/"), auth


class WebUIClient:
    """Async client of one WebUI instance. Use as ``async with WebUIClient(...) as c``.

    ``url``: base URL (``http://host:port``; credentials in it are moved into ``auth``).
    ``auth``: ``(user, password)`` for ``--api-auth``; kept out of every message and repr.
    ``label``: the instance's name in messages and logs (default: the URL).
    ``transport``: an httpx transport for tests (``httpx.MockTransport``).
    """

    def __init__(
        self,
        url: str,
        *,
        auth: tuple[str, str] | None = None,
        label: str | None = None,
        timeouts: ClientTimeouts | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        base, url_auth = split_url(url)
        auth = auth if auth is not None else url_auth
        self.url = base
        self.label = label or base
        self.timeouts = timeouts or ClientTimeouts()
        self.retry = retry or RetryPolicy()
        self._user = auth[0] if auth else None
        self._http = httpx.AsyncClient(
            base_url=base,
            auth=httpx.BasicAuth(auth[0], auth[1]) if auth else None,
            timeout=httpx_timeout(self.timeouts, self.timeouts.read),
            limits=httpx_limits(self.timeouts),
            transport=transport,
            follow_redirects=False,
            headers={"User-Agent": "autombw"},
        )
        self._model_lock = asyncio.Lock()
        self._state = _State.OPEN
        self._warned_sampler: set[str] = set()

    def __repr__(self) -> str:
        auth = f", auth={self._user!r}:***" if self._user is not None else ""
        return f"WebUIClient(label={self.label!r}, url={self.url!r}{auth})"

    # --- lifecycle --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections; a closed client cannot be used again."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        await self._http.aclose()

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise RuntimeError(f"{self!r} is closed")

    # --- A1111 API --------------------------------------------------------------------------
    async def ping(self) -> PingResult:
        """``GET /internal/ping``: the server answers (needs neither --api nor credentials).

        An API-only WebUI (``--nowebui``) has no ``/internal/ping`` (A1111 adds it with the UI):
        its router's 404 ``{"detail": "Not Found"}`` proves the server is up just as well."""
        t0 = time.monotonic()
        try:
            await self._request("GET", ep.PING, what="ping")
        except WebUIHTTPError as exc:
            if exc.status_code == 404 and exc.detail == "Not Found" and exc.json_answer:
                log.debug("%s: no %s (an API-only WebUI, --nowebui): up", self.label, ep.PING)
            elif exc.status_code in (401, 403) or (exc.status_code or 0) >= 500:
                raise  # a WebUI behind auth, or one in trouble: its own message says it
            else:
                raise WebUIHTTPError(
                    f"{redact_url(self.url)} answers HTTP but is not an AUTOMATIC1111 WebUI "
                    f"(GET {ep.PING} answered {exc.status_code})",
                    hint=self._not_a_webui_hint(),
                    instance=self.label,
                    status_code=exc.status_code,
                    method=exc.method,
                    path=exc.path,
                    detail=exc.detail,
                ) from exc
        return PingResult(elapsed_s=time.monotonic() - t0)

    def _not_a_webui_hint(self) -> str:
        path = httpx.URL(self.url).path.rstrip("/")
        if path:
            return (
                f"give only scheme://host:port, without {path!r} (unless the WebUI runs with "
                f"--subpath {path})"
            )
        return "check the port: another program answers there"

    async def get_options(self) -> Options:
        resp = await self._request("GET", ep.OPTIONS, what="reading the options")
        return self._parse(resp, Options, "reading the options")

    async def set_options(self, values: Mapping[str, Any]) -> None:
        """``POST /options`` (waits behind running jobs). Use ``set_checkpoint`` for the
        checkpoint: it verifies the switch."""
        await self._request(
            "POST",
            ep.OPTIONS,
            json=dict(values),
            read=self.timeouts.model_load,
            what="setting options",
        )

    async def sd_models(self) -> list[SDModel]:
        resp = await self._request("GET", ep.SD_MODELS, what="listing checkpoints")
        return self._parse(resp, _SD_MODELS, "listing checkpoints")

    async def refresh_checkpoints(self) -> None:
        """Rescan the WebUI's checkpoint folder."""
        await self._request(
            "POST",
            ep.REFRESH_CHECKPOINTS,
            read=self.timeouts.model_load,
            what="refreshing the checkpoint list",
        )

    async def samplers(self) -> list[Sampler]:
        resp = await self._request("GET", ep.SAMPLERS, what="listing samplers")
        return self._parse(resp, _SAMPLERS, "listing samplers")

    async def progress(self) -> Progress:
        resp = await self._request(
            "GET", ep.PROGRESS, params={"skip_current_image": "true"}, what="reading progress"
        )
        return self._parse(resp, Progress, "reading progress")

    async def interrupt(self) -> None:
        """Ask the WebUI to stop the running generation (answers at once)."""
        await self._request("POST", ep.INTERRUPT, what="interrupting")

    async def memory(self) -> Memory:
        resp = await self._request("GET", ep.MEMORY, what="reading memory use")
        return self._parse(resp, Memory, "reading memory use")

    async def find_checkpoint(self, name: str) -> SDModel:
        """The checkpoint called ``name`` (title, model name or file name, with or without
        extension or ``[hash]``); rescans the folder once if it is not listed."""
        for attempt in range(2):
            models = await self.sd_models()
            found = _pick_checkpoint(name, models, self.label)
            if found is not None:
                return found
            if attempt == 0:
                await self.refresh_checkpoints()
        names = sorted({m.model_name for m in models} | {m.file_name for m in models})
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
        raise CheckpointNotLoaded(
            f"no checkpoint {name!r} in this WebUI's model folder ({len(models)} listed)",
            hint=f"close names: {', '.join(close)}"
            if close
            else "copy the file into the WebUI's models/Stable-diffusion folder",
            instance=self.label,
        )

    async def set_checkpoint(self, name: str) -> SDModel:
        """Load checkpoint ``name`` and check with ``GET /options`` that the WebUI really
        switched (a failed load answers 200 and silently keeps the old model)."""
        async with self._model_lock:
            model = await self.find_checkpoint(name)
            current = (await self.get_options()).sd_model_checkpoint or ""
            if model.matches(current):
                return model
            await self._request(
                "POST",
                ep.OPTIONS,
                json={"sd_model_checkpoint": model.title},
                read=self.timeouts.model_load,
                what=f"loading checkpoint {model.title}",
            )
            after = (await self.get_options()).sd_model_checkpoint or ""
            if not model.matches(after):
                raise CheckpointNotLoaded(
                    f"the WebUI did not switch to {model.title}; it still has {after or 'none'}",
                    hint="the load failed inside the WebUI (out of memory, a corrupt or "
                    "incompatible file?); see the WebUI console",
                    instance=self.label,
                )
            log.info("%s: checkpoint %s loaded", self.label, model.title)
            return model

    async def txt2img(
        self, body: Mapping[str, Any], *, expect_merge_id: str | None = None
    ) -> Txt2ImgResult:
        """Render ``body`` (A1111 txt2img fields) and decode the images.

        No read timeout: a watcher polls ``/progress`` on a second connection and raises
        ``WebUITimeout`` when nothing advances for ``timeouts.stall`` seconds (then sends
        ``/interrupt`` if ``timeouts.interrupt_on_stall``). With ``expect_merge_id`` the bridge's
        merge is checked before and after rendering (``MergeLost``), so images of a lost merge
        are never returned.
        """
        async with self._model_lock:
            if expect_merge_id is not None:
                await self.ensure_merge_live(expect_merge_id)
            t0 = time.monotonic()
            resp = await self._watched_post(ep.TXT2IMG, with_scheduler(body), what="txt2img")
            result = await asyncio.to_thread(self._decode_txt2img, resp, time.monotonic() - t0)
            if expect_merge_id is not None:
                await self.ensure_merge_live(expect_merge_id)
        self._check_sampler(body, result)
        return result

    # --- bridge -----------------------------------------------------------------------------
    async def bridge_status(self) -> BridgeStatus:
        resp = await self._request("GET", ep.BRIDGE_STATUS, what="reading the bridge status")
        return self._parse(resp, BridgeStatus, "reading the bridge status")

    async def bridge_merge(
        self,
        model_a: str,
        model_b: str,
        weights: Weights,
        *,
        model_c: str | None = None,
        cache_device: str = "auto",
        formula: str | None = None,
    ) -> MergeResult:
        """Merge A and B in the WebUI's memory with ``weights`` (with ``model_c``: the add
        difference ``A + (B - C) * w``; with ``formula="lora"``: B is a LoRA, A + w * delta(B));
        the result's ``merge_id`` names this merge (check it
        with ``ensure_merge_live`` or ``txt2img(expect_merge_id=)``).

        A bridge too old for add difference refuses the request (`BridgeTooOld`); it never
        quietly merges a weighted sum instead."""
        body: dict[str, Any] = {
            "model_a": model_a,
            "model_b": model_b,
            "weights": weights.to_dict(),
            "cache_device": cache_device,
        }
        if model_c is not None:  # only then: bridges before bridge_api 2 refuse the fields
            body["formula"] = "add_difference"
            body["model_c"] = model_c
        if formula is not None:  # bridges before bridge_api 3 refuse "lora"
            body["formula"] = formula
        if weights.text_encoder is not None:
            body["text_encoder_weight"] = weights.text_encoder
        async with self._model_lock:
            try:
                resp = await self._request(
                    "POST",
                    ep.BRIDGE_MERGE,
                    json=body,
                    read=self.timeouts.model_load,
                    what="bridge merge",
                )
            except WebUIValidationError as exc:
                refused = "unknown field" in exc.detail and "formula" in exc.detail
                if formula == "lora" and ("formula must be one of" in exc.detail or refused):
                    raise self._too_old(
                        exc, "LoRA block weights (it refused formula lora)"
                    ) from exc
                if model_c is not None and refused:
                    raise self._too_old(
                        exc, "add-difference merges (it refused the formula and model_c fields)"
                    ) from exc
                raise
        return self._parse(resp, MergeResult, "bridge merge")

    def _too_old(self, exc: WebUIValidationError, what: str) -> BridgeTooOld:
        """A bridge's 422 to a merge it predates, as the error that says so."""
        return BridgeTooOld(
            f"its autombw bridge is too old for {what}",
            hint="run `autombw webui install-extension WEBUI_DIR` with this autombw "
            "and restart the WebUI",
            instance=self.label,
            status_code=422,
            method="POST",
            path=ep.BRIDGE_MERGE,
            detail=exc.detail,
            json_answer=exc.json_answer,
        )

    async def bridge_restore(self, free_caches: bool = False) -> RestoreResult:
        """Put A's original weights back; ``free_caches`` also drops the bridge's block caches."""
        async with self._model_lock:
            resp = await self._request(
                "POST",
                ep.BRIDGE_RESTORE,
                json={"free_caches": free_caches},
                read=self.timeouts.model_load,
                what="bridge restore",
            )
        return self._parse(resp, RestoreResult, "bridge restore")

    async def bridge_save(
        self,
        name: str,
        weights: Weights,
        *,
        dtype: str = "fp16",
        overwrite: bool = False,
        fmt: str = "safetensors",
    ) -> SaveResult:
        """Write the merge with ``weights`` as a checkpoint into the WebUI's model folder
        (``fmt``: ``safetensors`` or ``ckpt``)."""
        body: dict[str, Any] = {
            "name": name,
            "weights": weights.to_dict(),
            "dtype": dtype,
            "overwrite": overwrite,
        }
        if fmt != "safetensors":  # bridges before the format field know only safetensors
            body["format"] = fmt
        if weights.text_encoder is not None:
            body["text_encoder_weight"] = weights.text_encoder
        async with self._model_lock:
            resp = await self._request(
                "POST",
                ep.BRIDGE_SAVE,
                json=body,
                read=self.timeouts.model_load,
                idempotent=False,
                what="bridge save",
            )
        return self._parse(resp, SaveResult, "bridge save")

    async def ensure_merge_live(self, merge_id: str) -> BridgeStatus:
        """Raise ``MergeLost`` unless the bridge still holds merge ``merge_id`` in the model."""
        status = await self.bridge_status()
        if status.merge_id != merge_id:
            raise MergeLost(
                f"the bridge holds merge {status.merge_id or 'none'}, not {merge_id}",
                hint="another client or a WebUI restart replaced the merge; merge again",
                instance=self.label,
                expected=merge_id,
                current=status.merge_id,
            )
        if not status.merge_live:
            why = status.lost_reason or "the WebUI reloaded its checkpoint"
            raise MergeLost(
                f"merge {merge_id} is no longer in the model: {why}",
                hint="merge again before rendering; images of a lost merge are never scored",
                instance=self.label,
                expected=merge_id,
                current=status.merge_id,
            )
        return status

    # --- transport --------------------------------------------------------------------------
    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        read: float | Literal[True] | None = True,
        idempotent: bool = True,
        attempts: int | None = None,
        what: str = "",
    ) -> httpx.Response:
        """Send with retries for connection-level failures; map errors; return a 2xx answer.

        ``read``: True the control read timeout, None no read timeout, a number that many s.
        """
        self._check_open()
        what = what or f"{method} {path}"
        read_s = self.timeouts.read if read is True else read
        timeout = httpx_timeout(self.timeouts, read_s)
        tries = attempts if attempts is not None else self.retry.attempts
        last: httpx.TransportError | None = None
        sent = False
        for attempt in range(tries):
            try:
                resp = await self._http.request(
                    method, path, json=json, params=params, timeout=timeout
                )
            except _NOT_SENT as e:
                last, sent = e, False
            except _SENT as e:
                last, sent = e, True
                if not idempotent:
                    break
            except httpx.TimeoutException as e:  # read/pool timeout: no retry
                raise WebUITimeout(
                    f"{what} timed out ({type(e).__name__}, {timeout_text(e, timeout)})",
                    hint="the WebUI is busy or hung; raise the timeouts in the instance config "
                    "if it is just slow",
                    instance=self.label,
                ) from e
            except httpx.TransportError as e:  # proxy/protocol/unsupported: not retryable
                raise WebUIUnreachable(
                    f"{what} failed: {describe_transport_error(e)}",
                    hint=f"check that {self.url} is a running WebUI",
                    instance=self.label,
                ) from e
            else:
                _log_response(self.label, method, path, resp)
                raise_for_status(
                    resp,
                    method=method,
                    path=path,
                    what=what,
                    instance=self.label,
                    url=self.url,
                    user=self._user,
                )
                return resp
            if attempt + 1 < tries:
                delay = self.retry.delay(attempt)
                log.info(
                    "%s: %s failed (%s); retry %d/%d in %.1f s",
                    self.label,
                    what,
                    describe_transport_error(last),
                    attempt + 1,
                    tries - 1,
                    delay,
                )
                await asyncio.sleep(delay)
        assert last is not None
        if sent:
            raise WebUIUnreachable(
                f"{what}: the connection dropped before an answer "
                f"({describe_transport_error(last)})",
                hint="the WebUI may have crashed or restarted; check its console"
                + ("" if idempotent else "; the job may still be running there"),
                instance=self.label,
                request_sent=True,
            ) from last
        raise WebUIUnreachable(
            f"cannot reach {self.url} for {what}: {describe_transport_error(last)}"
            + (f" ({tries} attempts)" if tries > 1 else ""),
            hint="is the WebUI running on that port (started with --api)? a WebUI on another "
            "machine needs --listen",
            instance=self.label,
        ) from last

    async def _watched_post(self, path: str, body: dict[str, Any], *, what: str) -> httpx.Response:
        """POST without read timeout while polling /progress; give up after a stall."""
        t = self.timeouts
        loop = asyncio.get_running_loop()
        post = asyncio.create_task(
            self._request("POST", path, json=body, read=None, idempotent=False, what=what)
        )
        last_fp: tuple[object, ...] | None = None
        last_change = loop.time()
        stalled = 0.0
        try:
            while True:
                done, _ = await asyncio.wait({post}, timeout=t.poll_interval)
                if done:
                    return post.result()
                fp = await self._poll_fingerprint()
                now = loop.time()
                if fp is not None and fp != last_fp:
                    last_fp, last_change = fp, now
                elif now - last_change >= t.stall:
                    stalled = now - last_change
                    break
        finally:
            if not post.done():
                post.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebUIError):
                    await post
        if t.interrupt_on_stall:
            try:
                await self._request("POST", ep.INTERRUPT, attempts=1, what="interrupting")
            except WebUIError as e:
                log.debug("%s: interrupt after stall failed: %s", self.label, e)
        raise WebUITimeout(
            f"{what} made no progress for {stalled:.0f} s; gave up",
            hint="the WebUI is hung or stuck (check its console); raise timeouts.stall in the "
            "instance config if a step really takes that long (model loads, hires fix)",
            instance=self.label,
            stalled_s=stalled,
        )

    async def _poll_fingerprint(self) -> tuple[object, ...] | None:
        """One /progress poll; None when it fails (counts as no progress)."""
        t = self.timeouts
        try:
            resp = await self._request(
                "GET",
                ep.PROGRESS,
                params={"skip_current_image": "true"},
                read=min(t.read, t.stall),
                attempts=1,
                what="reading progress",
            )
            return self._parse(resp, Progress, "reading progress").fingerprint()
        except WebUIError as e:
            log.debug("%s: progress poll failed: %s", self.label, e)
            return None

    # --- answers ----------------------------------------------------------------------------
    def _parse(self, resp: httpx.Response, model: type[M] | TypeAdapter[M], what: str) -> M:
        return parse_answer(resp, model, what=what, instance=self.label, url=self.url)

    def _decode_txt2img(self, resp: httpx.Response, elapsed: float) -> Txt2ImgResult:
        raw = self._parse(resp, Txt2ImgResponse, "txt2img")
        return decode_txt2img(raw, instance=self.label, elapsed=elapsed)

    def _check_sampler(self, body: Mapping[str, Any], result: Txt2ImgResult) -> None:
        """A1111 silently falls back to another sampler for an unknown name: say so once.
        (1.9+ reports "DPM++ 2M" for "DPM++ 2M Karras", scheduler split off: not a fallback.)"""
        asked = body.get("sampler_name") or body.get("sampler_index")
        used = result.info.get("sampler_name")
        if not asked or not used or str(asked).lower().startswith(str(used).lower()):
            return
        if asked not in self._warned_sampler:
            self._warned_sampler.add(str(asked))
            log.warning(
                "%s: sampler %r is unknown to this WebUI; it rendered with %r instead "
                "(GET /sdapi/v1/samplers lists the valid names)",
                self.label,
                asked,
                used,
            )


# --- helpers ----------------------------------------------------------------------------------
# A1111 1.9+'s schedulers (modules/sd_schedulers.py: name, label, aliases); a sampler name may
# still end with one ("DPM++ 2M Karras", the pre-1.9 form).
_SCHEDULER_NAMES = (
    *("uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal"),
    *("align_your_steps", "simple", "normal", "ddim", "beta"),
    *("SGM Uniform", "SGMUniform", "KL Optimal", "Align Your Steps"),
)


def with_scheduler(body: Mapping[str, Any]) -> dict[str, Any]:
    """The txt2img body with a ``scheduler``: the payload's, else "Automatic" (what A1111 1.9+
    uses anyway; without the field it logs "Sampler Scheduler autocorrection" on every call).
    A sampler name that ends with a scheduler ("DPM++ 2M Karras") gets none: A1111 splits it
    off itself, and an explicit "Automatic" would override that split."""
    out = dict(body)
    if out.get("scheduler"):
        return out
    sampler = str(out.get("sampler_name") or out.get("sampler_index") or "").lower()
    if not any(sampler.endswith(" " + name.lower()) for name in _SCHEDULER_NAMES):
        out["scheduler"] = "Automatic"
    return out


def _pick_checkpoint(name: str, models: list[SDModel], label: str) -> SDModel | None:
    exact = [m for m in models if name in (m.title, m.model_name)]
    if exact:
        return exact[0]
    matching = [m for m in models if m.matches(name)]
    if len(matching) > 1:
        titles = ", ".join(m.title for m in matching)
        raise CheckpointNotLoaded(
            f"{name!r} matches several checkpoints: {titles}",
            hint="give the full title as the WebUI lists it",
            instance=label,
        )
    return matching[0] if matching else None


def _log_response(label: str, method: str, path: str, resp: httpx.Response) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s: %s %s -> %d (%.2f s)",
            label,
            method,
            path,
            resp.status_code,
            resp.elapsed.total_seconds(),
        )
