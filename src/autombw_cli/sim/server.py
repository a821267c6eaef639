"""The simulated AUTOMATIC1111 WebUI: a real HTTP server (FastAPI on uvicorn).

It answers the A1111 routes autombw uses (DOMAIN.md §6) with the same JSON shapes, error
shapes, Basic auth on ``/sdapi`` and one-generation-at-a-time queue lock, plus the bridge
routes served by the very same `BridgeCore` the A1111 extension runs, over tiny synthetic
checkpoints with real LDM key names. Images come from `sim.render` (deterministic in the
merged tensors, prompt, seed, size and steps). Faults (`sim.faults`) are injected on demand.

Extra control routes for tests: ``GET/POST /sim/faults``, ``POST /sim/restart`` (behind the
same Basic auth as ``/sdapi`` when the simulator has credentials; the ``refuse_auth`` fault
leaves them alone, so a test can always lift it).

    handle = start_simulator_in_thread(port=0, arch="sd1")
    ... httpx.get(handle.url + "/sdapi/v1/sd-models") ...
    handle.stop()
"""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, ConfigDict
from starlette.types import Receive, Scope, Send

from autombw_cli import __version__
from autombw_cli.blocks import Arch
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from autombw_cli.sim.faults import OOM_MESSAGE, FaultPlan
from autombw_cli.sim.host import SIM_WEBUI_VERSION, SimHost
from autombw_cli.sim.render import Renderer, RenderParams
from autombw_cli.sim.workdir import SimFolder
from autombw_cli.webui import endpoints as ep
from autombw_cli.webui.bridge.core import BridgeCore
from autombw_cli.webui.bridge.errors import ValidationError
from autombw_cli.webui.bridge.routes import check_basic_auth, error_response, register_routes

log = logging.getLogger("autombw.sim")

BUILTIN_MODELS: dict[str, int] = {"simA": 1, "simB": 2}  # name -> seed of its tensors
BASE_MODEL: dict[str, int] = {"simC": 3}  # model C of an add-difference merge (base_model=True)
BUILTIN_DTYPE = "float16"
BUILTIN_LORA = "simLora"  # in <model dir>/Lora, written with lora=True
BUILTIN_LORA_SEED = 4
SAMPLERS = (
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M Karras",
    "DDIM",
    "UniPC",
)
# A1111 1.10.1's schedulers (modules/sd_schedulers.py): name -> label (aliases as names too)
SCHEDULERS: dict[str, str] = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "SGMUniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
    "beta": "Beta",
}
SIM_PREFIX = "/sim/"
SIM_FAULTS = "/sim/faults"
SIM_RESTART = "/sim/restart"


def write_builtin_models(
    folder: Path, arch: Arch | str, *, base_model: bool = False, lora: bool = False
) -> list[Path]:
    """Write ``simA.safetensors`` and ``simB.safetensors`` (tiny, fp16) unless present, with
    ``base_model`` ``simC.safetensors`` (B's "base" for add-difference merges), with ``lora``
    the LoRA ``Lora/simLora.safetensors`` (for LoRA block-weight searches)."""
    import torch

    if lora:
        from autombw_cli.sim.host import LORA_FOLDER
        from autombw_cli.sim.loras import write_random_lora

        lora_path = folder / LORA_FOLDER / f"{BUILTIN_LORA}.safetensors"
        if not lora_path.exists():
            lora_path.parent.mkdir(parents=True, exist_ok=True)
            write_random_lora(lora_path, arch, seed=BUILTIN_LORA_SEED)

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    models = {**BUILTIN_MODELS, **(BASE_MODEL if base_model else {})}
    for name, seed in models.items():
        path = folder / f"{name}.safetensors"
        if not path.exists():
            write_checkpoint(path, random_state_dict(arch, "tiny", seed, torch.float16))
        paths.append(path)
    return paths


class Txt2ImgRequest(BaseModel):
    """The txt2img fields the simulator reads (A1111 accepts many more; they are echoed)."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    steps: int = 50
    width: int = 512
    height: int = 512
    batch_size: int = 1
    n_iter: int = 1
    cfg_scale: float = 7.0
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = False


@dataclass
class _Progress:
    job_count: int = 0
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    time_start: float = 0.0
    job_timestamp: str = "0"


class SimulatedWebUI:
    """One simulated WebUI instance (build the app with `.app`; serve it with uvicorn)."""

    def __init__(
        self,
        *,
        arch: Arch | str = Arch.SD1,
        latency_per_image: float = 0.0,
        auth: tuple[str, str] | None = None,
        faults: FaultPlan | None = None,
        model_dir: Path | str | None = None,
        api: bool = True,
        bridge: bool = True,
        nowebui: bool = False,
        base_model: bool = False,
        lora: bool = False,
    ) -> None:
        """``base_model``: also write the built-in model C (``simC``) for add-difference
        merges (``A + (B - C) * w``); ``lora``: the built-in LoRA ``simLora``."""
        self.arch = Arch(arch)
        self.latency_per_image = float(latency_per_image)
        self.auth = auth
        self._faults = faults or FaultPlan()
        self._tmp: SimFolder | None = None
        if model_dir is None:  # removed on close/exit; a killed process's, by the next sim
            self._tmp = SimFolder()
            model_dir = self._tmp.name
        self.model_dir = Path(model_dir)
        write_builtin_models(self.model_dir, self.arch, base_model=base_model, lora=lora)
        self.queue_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._progress = _Progress()
        self._count = 0
        self.renderer = Renderer(self.arch)
        self.autocorrections: list[str] = []  # A1111's "Sampler Scheduler autocorrection" lines
        self.options: dict[str, Any] = {
            "samples_format": "png",
            "CLIP_stop_at_last_layers": 1,
            "sd_vae": "Automatic",
        }
        self.host = SimHost(self.model_dir, lock=self.queue_lock)
        self.core = self._new_core()
        self.host.on_model_loaded(lambda reason: self.core.mark_lost(reason))
        self._te_reference: Any = None  # the loaded checkpoint's own text-encoder features
        self.host.on_model_loaded(self._remember_text_encoder)
        self._load_default()
        # nowebui: like A1111's --nowebui (api_only()): the API without the UI, so no
        # /internal/ping (A1111 adds it with the UI); the API is on with or without --api
        self.app = self._build_app(api=api or nowebui, bridge=bridge, ping=not nowebui)

    # --- lifecycle & control --------------------------------------------------------------
    def _new_core(self) -> BridgeCore:
        return BridgeCore(self.host, version=__version__)

    def _load_default(self) -> None:
        ref = self.host.find("simA") or (self.host.list_checkpoints() or [None])[0]
        if ref is not None:
            self.host.load_checkpoint(ref)

    @property
    def faults(self) -> FaultPlan:
        return self._faults

    def set_faults(self, plan: FaultPlan | None = None, **changes: Any) -> FaultPlan:
        with self._state_lock:
            self._faults = (plan or self._faults).updated(changes)
            return self._faults

    def restart(self) -> None:
        """Simulate a WebUI restart: the bridge starts empty and the default model reloads."""
        with self.queue_lock:
            self._restart_locked()

    def _restart_locked(self) -> None:
        self.host.unload()  # tells the old bridge its merge is lost
        self.core = self._new_core()
        self._load_default()

    def close(self) -> None:
        self._stop.set()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops; True when it is stopping."""
        return self._stop.wait(seconds) if seconds > 0 else self._stop.is_set()

    # --- generation -------------------------------------------------------------------------
    def txt2img(self, req: Txt2ImgRequest) -> Response | dict[str, Any]:
        with self.queue_lock:
            with self._state_lock:
                self._count += 1
                count = self._count
                faults = self._faults
            if FaultPlan.hits(faults.restart_every, count):
                self._restart_locked()
                return _DroppedResponse()
            if FaultPlan.hits(faults.drop_every, count):
                return _DroppedResponse()
            if FaultPlan.hits(faults.oom_every, count):
                return JSONResponse(
                    status_code=500,
                    content={
                        "error": "OutOfMemoryError",
                        "detail": "",
                        "body": "",
                        "errors": OOM_MESSAGE,
                    },
                )
            override = (req.override_settings or {}).get("sd_model_checkpoint")
            if override:
                self._load_by_alias(str(override))
            model = self.host.live_model()
            if model is None:
                raise RuntimeError("no checkpoint is loaded")
            features = self.renderer.unet_features(model.state_dict())
            cond, uncond = self._conditionings(req, model)
            seed = req.seed if req.seed >= 0 else random.randrange(2**32)
            n_images = max(1, req.batch_size) * max(1, req.n_iter)
            sampler = req.sampler_name or req.sampler_index
            self._check_scheduler(sampler, req.scheduler)
            if sampler not in SAMPLERS:
                sampler = "Euler"  # A1111 falls back silently; check info
            self._begin(req.n_iter, req.steps)
            try:
                if FaultPlan.hits(faults.stall_every, count) and self._sleep(faults.stall_seconds):
                    return _DroppedResponse()
                images, infotexts = [], []
                for i in range(n_images):
                    if self._progress.interrupted:
                        break
                    self._simulate_steps(i // max(1, req.batch_size), req.steps)
                    params = RenderParams(
                        prompt=req.prompt,
                        negative_prompt=req.negative_prompt,
                        seed=seed + i,
                        width=req.width,
                        height=req.height,
                        steps=req.steps,
                        cfg_scale=req.cfg_scale,
                    )
                    text = self._infotext(params, sampler)
                    infotexts.append(text)
                    pixels = self.renderer.render(features, params, cond=cond, uncond=uncond)
                    images.append(self._encode(pixels, params, text))
            finally:
                self._end()
        loaded = self.host.loaded_checkpoint()
        bridge = self.core.status()
        merge_id = bridge["merge_id"] if bridge["merge_live"] else None
        info = {
            "prompt": req.prompt,
            "all_prompts": [req.prompt] * len(images),
            "negative_prompt": req.negative_prompt,
            "all_negative_prompts": [req.negative_prompt] * len(images),
            "seed": seed,
            "all_seeds": [seed + i for i in range(len(images))],
            "subseed": -1,
            "all_subseeds": [-1] * len(images),
            "width": req.width,
            "height": req.height,
            "sampler_name": sampler,
            "cfg_scale": req.cfg_scale,
            "steps": req.steps,
            "batch_size": req.batch_size,
            "sd_model_name": loaded.name if loaded else None,
            "sd_model_hash": (loaded.sha256 or "")[:10] if loaded else None,
            "infotexts": infotexts,
            "index_of_first_image": 0,
            "job_timestamp": self._progress.job_timestamp,
            "clip_skip": 1,
            "extra_generation_params": {},
            "version": SIM_WEBUI_VERSION,
            "autombw_merge_id": merge_id,
        }
        return {
            "images": images if req.send_images else [],
            "parameters": req.model_dump(),
            "info": json.dumps(info),
        }

    def _remember_text_encoder(self, _reason: str) -> None:
        model = self.host.live_model()
        self._te_reference = (
            None if model is None else self.renderer.text_encoder_features(model.state_dict())
        )

    def _conditionings(self, req: Txt2ImgRequest, model: Any) -> tuple[Any, Any]:
        """The prompt's and negative prompt's conditionings, through the host's cache (keyed,
        as A1111's, on prompt, steps, size, clip skip and checkpoint: not on weights)."""
        loaded = self.host.loaded_checkpoint()
        key = (
            req.steps,
            req.width,
            req.height,
            self.options.get("CLIP_stop_at_last_layers"),
            loaded.title if loaded else None,
        )

        def encode(text: str) -> Any:
            shift = None
            if self._te_reference is not None:
                live = self.renderer.text_encoder_features(model.state_dict())
                shift = live - self._te_reference
            return self.renderer.conditioning(text, shift)

        cond = self.host.cached_conditioning("c", (req.prompt, *key), lambda: encode(req.prompt))
        uncond = self.host.cached_conditioning(
            "uc", (req.negative_prompt, *key), lambda: encode(req.negative_prompt)
        )
        return cond, uncond

    def _check_scheduler(self, sampler: str, scheduler: str | None) -> None:
        """A1111 1.9+: the API splits a scheduler off the sampler name ("DPM++ 2M Karras") when
        the request has none, then processing's fix_p_invalid_sampler_and_scheduler() corrects
        a missing or unknown scheduler to a label and logs a warning (no scheduler at all, as
        pre-1.9 clients send, becomes "Automatic" with that warning on every call)."""
        if not scheduler:
            for name, label in SCHEDULERS.items():
                if label != "Automatic" and sampler.endswith((" " + label, " " + name)):
                    scheduler = label
        labels = set(SCHEDULERS.values())
        label = SCHEDULERS.get(scheduler or "") or (scheduler if scheduler in labels else None)
        label = label or "Automatic"
        if label != scheduler:
            line = (
                f'Sampler Scheduler autocorrection: "{sampler}" -> "{sampler}", '
                f'"{scheduler}" -> "{label}"'
            )
            log.warning(line)
            with self._state_lock:
                self.autocorrections.append(line)

    def _simulate_steps(self, job_no: int, steps: int) -> None:
        with self._state_lock:
            self._progress.job_no = job_no
        per_step = self.latency_per_image / max(1, steps)
        for step in range(max(1, steps)):
            if self._progress.interrupted or self._stop.is_set():
                return
            with self._state_lock:
                self._progress.sampling_step = step
            if per_step > 0:
                self._sleep(per_step)
        with self._state_lock:
            self._progress.sampling_step = steps

    def _begin(self, n_iter: int, steps: int) -> None:
        with self._state_lock:
            self._progress = _Progress(
                job_count=max(1, n_iter),
                sampling_steps=steps,
                time_start=time.time(),
                job_timestamp=time.strftime("%Y%m%d%H%M%S"),
            )

    def _end(self) -> None:
        with self._state_lock:
            self._progress = _Progress(job_timestamp=self._progress.job_timestamp)

    def _infotext(self, p: RenderParams, sampler: str) -> str:
        loaded = self.host.loaded_checkpoint()
        model = loaded.name if loaded else ""
        lines = [p.prompt]
        if p.negative_prompt:
            lines.append(f"Negative prompt: {p.negative_prompt}")
        lines.append(
            f"Steps: {p.steps}, Sampler: {sampler}, CFG scale: {p.cfg_scale:g}, Seed: {p.seed}, "
            f"Size: {p.width}x{p.height}, Model: {model}, Version: autombw-sim"
        )
        return "\n".join(lines)

    def _encode(self, pixels: Any, p: RenderParams, infotext: str) -> str:
        meta = PngInfo()
        meta.add_text("parameters", infotext)
        meta.add_text(
            "autombw_sim",
            json.dumps(
                {
                    "arch": self.arch.value,
                    "prompt": p.prompt,
                    "negative_prompt": p.negative_prompt,
                    "seed": p.seed,
                    "width": p.width,
                    "height": p.height,
                    "steps": p.steps,
                    "cfg_scale": p.cfg_scale,
                }
            ),
        )
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, format="PNG", pnginfo=meta)
        return base64.b64encode(buf.getvalue()).decode("ascii")

    # --- options / models ------------------------------------------------------------------
    def _load_by_alias(self, alias: str) -> None:
        ref = self.host.find(alias)
        if ref is None:
            raise RuntimeError(f"model {alias!r} not found")
        loaded = self.host.loaded_checkpoint()
        if loaded is None or loaded.path != ref.path:
            self.host.load_checkpoint(ref)

    def get_options(self) -> dict[str, Any]:
        loaded = self.host.loaded_checkpoint()
        return {
            **self.options,
            "sd_model_checkpoint": loaded.title if loaded else None,
            "sd_checkpoint_hash": loaded.sha256 if loaded else None,
        }

    def set_options(self, body: dict[str, Any]) -> None:
        alias = body.get("sd_model_checkpoint")
        if alias is not None and self.host.find(str(alias)) is None:
            raise RuntimeError(f"model {alias!r} not found")
        with self.queue_lock:
            for key, value in body.items():
                if key == "sd_model_checkpoint":
                    self._load_by_alias(str(value))
                else:
                    self.options[key] = value

    def sd_models(self) -> list[dict[str, Any]]:
        return [
            {
                "title": r.title,
                "model_name": r.name,
                "hash": r.sha256[:10] if r.sha256 else None,
                "sha256": r.sha256,
                "filename": str(r.path),
                "config": None,
            }
            for r in self.host.list_checkpoints()
        ]

    def progress(self) -> dict[str, Any]:
        with self._state_lock:
            p = self._progress
            state = {
                "skipped": False,
                "interrupted": p.interrupted,
                "job": "txt2img" if p.job_count else "",
                "job_count": p.job_count,
                "job_timestamp": p.job_timestamp,
                "job_no": p.job_no,
                "sampling_step": p.sampling_step,
                "sampling_steps": p.sampling_steps,
            }
            if p.job_count == 0:
                return {"progress": 0, "eta_relative": 0, "state": state, "textinfo": None}
            progress = 0.01 + p.job_no / p.job_count
            if p.sampling_steps > 0:
                progress += p.sampling_step / p.sampling_steps / p.job_count
            elapsed = time.time() - p.time_start
            eta = elapsed / progress - elapsed
            return {
                "progress": min(progress, 1.0),
                "eta_relative": eta,
                "state": state,
                "current_image": None,
                "textinfo": None,
            }

    def interrupt(self) -> dict[str, Any]:
        with self._state_lock:
            if self._progress.job_count:
                self._progress.interrupted = True
        return {}

    # --- the app --------------------------------------------------------------------------
    def _build_app(self, *, api: bool, bridge: bool, ping: bool = True) -> FastAPI:
        app = FastAPI(title="autombw simulated WebUI", version=__version__)
        sim = self

        @app.middleware("http")
        async def a1111_errors_and_auth(request: Request, call_next: Callable[..., Any]) -> Any:
            path = request.url.path
            if path.startswith(SIM_PREFIX):
                refused = check_basic_auth(request, sim._credentials())
                if refused is not None:
                    return refused
            elif ep.is_sdapi(path):
                if sim.faults.refuse_auth:
                    return JSONResponse(
                        status_code=401,
                        content={"detail": "Incorrect username or password"},
                        headers={"WWW-Authenticate": "Basic"},
                    )
                refused = check_basic_auth(request, sim._credentials())
                if refused is not None:
                    return refused
            try:
                return await call_next(request)
            except Exception as exc:  # A1111's api_middleware answers every error this way
                log.debug("sim: %s %s failed", request.method, path, exc_info=True)
                return _a1111_error(exc)

        @app.exception_handler(HTTPException)
        async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
            return _a1111_error(exc)

        if ping:
            app.add_api_route(ep.PING, lambda: {}, methods=["GET"])
        if api:
            self._add_sdapi_routes(app)
        if bridge:
            register_routes(app, lambda: sim.core, credentials=sim._credentials)

        def get_faults() -> dict[str, Any]:
            return sim.faults.to_json()

        def post_faults(body: dict[str, Any] = Body(...)) -> Any:
            try:
                return sim.set_faults(**body).to_json()
            except Exception as exc:  # ConfigError: an unknown fault or a bad value
                return error_response(ValidationError(str(exc)))

        def post_restart() -> dict[str, Any]:
            sim.restart()
            return {"restarted": True}

        app.add_api_route(SIM_FAULTS, get_faults, methods=["GET"])
        app.add_api_route(SIM_FAULTS, post_faults, methods=["POST"])
        app.add_api_route(SIM_RESTART, post_restart, methods=["POST"])
        return app

    def _add_sdapi_routes(self, app: FastAPI) -> None:
        sim = self

        def txt2img(req: Txt2ImgRequest) -> Any:
            return sim.txt2img(req)

        def get_options() -> dict[str, Any]:
            return sim.get_options()

        def set_options(body: dict[str, Any] = Body(...)) -> None:
            sim.set_options(body)

        def refresh() -> None:
            with sim.queue_lock:
                sim.host.refresh_checkpoints()

        def samplers() -> list[dict[str, Any]]:
            return [
                {"name": s, "aliases": [s.lower().replace(" ", "_")], "options": {}}
                for s in SAMPLERS
            ]

        def memory() -> dict[str, Any]:
            return _memory()

        app.add_api_route(ep.TXT2IMG, txt2img, methods=["POST"])
        app.add_api_route(ep.OPTIONS, get_options, methods=["GET"])
        app.add_api_route(ep.OPTIONS, set_options, methods=["POST"])
        app.add_api_route(ep.SD_MODELS, sim.sd_models, methods=["GET"])
        app.add_api_route(ep.REFRESH_CHECKPOINTS, refresh, methods=["POST"])
        app.add_api_route(ep.SAMPLERS, samplers, methods=["GET"])
        app.add_api_route(ep.PROGRESS, sim.progress, methods=["GET"])
        app.add_api_route(ep.INTERRUPT, sim.interrupt, methods=["POST"])
        app.add_api_route(ep.MEMORY, memory, methods=["GET"])

    def _credentials(self) -> dict[str, str] | None:
        return {self.auth[0]: self.auth[1]} if self.auth else None


def _a1111_error(exc: Exception) -> JSONResponse:
    status = getattr(exc, "status_code", 500)
    content = {
        "error": type(exc).__name__,
        "detail": getattr(exc, "detail", ""),
        "body": getattr(exc, "body", ""),
        "errors": str(exc),
    }
    return JSONResponse(status_code=status, content=content)


def _memory() -> dict[str, Any]:
    try:
        import psutil

        vm = psutil.virtual_memory()
        ram = {"free": vm.available, "used": vm.total - vm.available, "total": vm.total}
    except ImportError:  # pragma: no cover - psutil is a dependency
        ram = {"error": "psutil is not installed"}
    return {"ram": ram, "cuda": {"error": "the simulated WebUI has no CUDA device"}}


class _DroppedResponse(Response):
    """Starts a 200 answer, sends part of the body, then drops the connection."""

    def __init__(self) -> None:
        super().__init__(content=b"")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"100000")],
            }
        )
        await send(
            {"type": "http.response.body", "body": b'{"images": ["iVBORw0K', "more_body": True}
        )
        raise ConnectionAbortedError("simulated connection drop")


# --- running it -----------------------------------------------------------------------------
@dataclass
class SimulatorHandle:
    """A simulator serving on a background thread; ``url`` has no trailing slash."""

    url: str
    sim: SimulatedWebUI
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout: float = 10.0) -> None:
        self.sim._stop.set()
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self.sim.close()

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _uvicorn_config(app: FastAPI, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        timeout_keep_alive=5,  # like Gradio's server: idle keep-alive sockets close after ~5 s
        timeout_graceful_shutdown=2,
        access_log=False,
    )


def start_simulator_in_thread(
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    log_level: str = "critical",
    start_timeout: float = 30.0,
    **options: Any,
) -> SimulatorHandle:
    """Start a `SimulatedWebUI` (``options`` go to its constructor) on a daemon thread and
    return once it accepts connections. Use ``port=0`` for a free port; stop with ``.stop()``."""
    sim = SimulatedWebUI(**options)
    server = uvicorn.Server(_uvicorn_config(sim.app, host, port, log_level))
    thread = threading.Thread(target=server.run, name=f"autombw-sim-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sim.close()
            raise RuntimeError(f"the simulated WebUI did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return SimulatorHandle(url=f"http://{host}:{bound}", sim=sim, _server=server, _thread=thread)


def serve(port: int, *, host: str = "127.0.0.1", log_level: str = "info", **options: Any) -> None:
    """Run a simulator in the foreground until Ctrl-C (``autombw webui simulate``)."""
    sim = SimulatedWebUI(**options)
    try:
        uvicorn.Server(_uvicorn_config(sim.app, host, port, log_level)).run()
    finally:
        sim.close()
