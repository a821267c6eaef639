"""The bridge's host inside AUTOMATIC1111 WebUI: only imported inside a WebUI.

`install(app)` is what the extension's ``scripts/autombw_bridge.py`` calls from
``script_callbacks.on_app_started``: it builds one `BridgeCore` over an `A1111Host`, marks the
merge lost whenever the WebUI loads a model (``script_callbacks.on_model_loaded``), registers
the routes, and warns in the WebUI log when the server listens beyond loopback without
``--api-auth`` (the bridge routes then accept anyone who can reach the port).

A1111 facts this relies on (DOMAIN.md §6): the live model is ``shared.sd_model`` (its UNet
``.model.diffusion_model``); ``modules.call_queue.queue_lock`` serializes generation and
loads; ``sd_models.reload_model_weights(info=...)`` loads a checkpoint (we call it directly,
not through ``opts.set``, whose onchange handler would wait for the queue lock we hold). The
WebUI's version is ``modules.launch_utils.git_tag()`` (``git describe --tags``, cached; A1111
1.3+ and Forge): what the WebUI prints as ``Version:`` at start and ``/internal/sysinfo`` reports.

Stable Diffusion WebUI Forge is refused (`forge_label`, `RefusingCore`): its model lives in its
own backend (``sd_model.forge_objects``, possibly quantized or offloaded), so there is no
``model.diffusion_model`` to merge into, and ``reload_model_weights`` does nothing there. The
routes still register and answer 501 ``UnsupportedWebUI`` with the reason, so the CLI can say
"Forge is not supported" rather than "the bridge is not installed".
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from autombw_cli.webui.bridge.core import BridgeCore
from autombw_cli.webui.bridge.errors import UnsupportedWebUI
from autombw_cli.webui.bridge.names import CheckpointRef
from autombw_cli.webui.bridge.routes import register_routes

log = logging.getLogger("autombw.bridge")

_LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}


class A1111Host:
    """`BridgeHost` over the running WebUI's modules."""

    name = "a1111"
    _warned_conditioning = False

    def __init__(self) -> None:
        from modules import call_queue, sd_models, shared

        self._shared = shared
        self._sd_models = sd_models
        self._queue_lock = call_queue.queue_lock

    @property
    def queue_lock(self) -> Any:
        return self._queue_lock

    def live_model(self) -> torch.nn.Module | None:
        model_data = getattr(self._sd_models, "model_data", None)
        model = getattr(model_data, "sd_model", None) if model_data is not None else None
        if model is None:
            model = getattr(self._shared, "sd_model", None)
        return model

    def loaded_checkpoint(self) -> CheckpointRef | None:
        model = self.live_model()
        info = getattr(model, "sd_checkpoint_info", None) if model is not None else None
        return _ref(info) if info is not None else None

    def load_checkpoint(self, ref: CheckpointRef) -> None:
        info = self._info_for(ref)
        self._sd_models.reload_model_weights(info=info)
        # Keep the WebUI's setting in step without running its onchange (it would queue a
        # second load behind the lock we hold).
        self._shared.opts.data["sd_model_checkpoint"] = info.title

    def list_checkpoints(self) -> list[CheckpointRef]:
        return [_ref(info) for info in self._sd_models.checkpoints_list.values()]

    def checkpoint_dir(self) -> Path:
        ckpt_dir = getattr(self._shared.cmd_opts, "ckpt_dir", None)
        return Path(ckpt_dir or self._sd_models.model_path)

    def lora_dir(self) -> Path | None:
        lora_dir = getattr(self._shared.cmd_opts, "lora_dir", None)  # the Lora extension's
        if lora_dir:
            return Path(lora_dir)
        models_path = getattr(getattr(self._shared, "paths", None), "models_path", None)
        return Path(models_path) / "Lora" if models_path else None

    def refresh_checkpoints(self) -> None:
        refresh = getattr(self._shared, "refresh_checkpoints", None)
        if callable(refresh):
            refresh()
        else:
            self._sd_models.list_models()

    def webui_version(self) -> str | None:
        try:
            from modules import launch_utils

            tag = str(launch_utils.git_tag()).strip()
        except Exception:  # A1111 before 1.3, or not a git checkout
            return None
        return tag if tag and tag not in ("<none>", "None") else None

    def invalidate_conditioning(self) -> None:
        """Reset A1111's prompt-conditioning caches to their initial ``[None, None]``.

        ``modules/processing.py`` keeps the last conditionings in class attributes
        (``StableDiffusionProcessing.cached_c``/``cached_uc``, and for the hires pass
        ``StableDiffusionProcessingTxt2Img.cached_hr_c``/``cached_hr_uc``), keyed on the
        prompts, steps, sizes and ``sd_checkpoint_info``, not on the weights: after a
        text-encoder merge an already-seen prompt would reuse the old encoder's conditioning.
        New processing objects copy the class attributes in ``__init__``, so replacing them
        (under the queue lock, between generations) is enough."""
        try:
            from modules import processing
        except Exception as exc:  # pragma: no cover - a WebUI without modules.processing
            log.warning("autombw bridge: cannot reset the conditioning cache (%s)", exc)
            return
        caches = (
            ("StableDiffusionProcessing", ("cached_c", "cached_uc")),
            ("StableDiffusionProcessingTxt2Img", ("cached_hr_c", "cached_hr_uc")),
        )
        for class_name, attrs in caches:
            cls = getattr(processing, class_name, None)
            for attr in attrs:
                if cls is not None and hasattr(cls, attr):
                    setattr(cls, attr, [None, None])
                elif not self._warned_conditioning:
                    self._warned_conditioning = True
                    log.warning(
                        "autombw bridge: this WebUI has no %s.%s; text-encoder merges may "
                        "reuse conditionings of prompts it has already encoded",
                        class_name,
                        attr,
                    )

    # --- extras ---------------------------------------------------------------------------
    def credentials(self) -> dict[str, str] | None:
        """The ``--api-auth user:pass[,user2:pass2]`` pairs, or None."""
        raw = getattr(self._shared.cmd_opts, "api_auth", None)
        if not raw:
            return None
        pairs = {}
        for item in str(raw).split(","):
            user, sep, password = item.strip().partition(":")
            if sep:
                pairs[user] = password
        return pairs or None

    def exposed_without_auth(self) -> bool:
        return exposed_without_auth(self._shared.cmd_opts, self.credentials())

    def _info_for(self, ref: CheckpointRef) -> Any:
        for info in self._sd_models.checkpoints_list.values():
            if info.title == ref.title or Path(info.filename) == ref.path:
                return info
        match = self._sd_models.get_closet_checkpoint_match(ref.title)
        if match is None:
            raise RuntimeError(f"checkpoint {ref.title!r} is not in the WebUI's list")
        return match


def exposed_without_auth(cmd_opts: Any, credentials: dict[str, str] | None) -> bool:
    """Whether the WebUI listens beyond loopback and the bridge routes take no password.

    ``--listen``/``--share``/a non-loopback ``--server-name`` reach beyond this machine. So does
    ``--nowebui`` without ``--server-name``: A1111's ``api_only()`` passes
    ``gradio_server_name()`` (None without --listen) to ``uvicorn.run(host=None)``, which binds
    every interface (the UI mode's Gradio server binds 127.0.0.1 instead).
    """
    listen = bool(getattr(cmd_opts, "listen", False)) or bool(getattr(cmd_opts, "share", False))
    server_name = getattr(cmd_opts, "server_name", None) or ""
    api_only_any_host = bool(getattr(cmd_opts, "nowebui", False)) and not server_name
    beyond_loopback = listen or api_only_any_host or server_name not in _LOOPBACK
    return beyond_loopback and not credentials


def _ref(info: Any) -> CheckpointRef:
    return CheckpointRef(
        title=str(info.title),
        name=str(getattr(info, "model_name", None) or getattr(info, "name", info.title)),
        path=Path(info.filename),
        sha256=getattr(info, "sha256", None),
    )


FORGE_REFUSAL = (
    "Stable Diffusion WebUI Forge ({label}) is not supported: Forge keeps its model in its own "
    "backend (sd_model.forge_objects, possibly quantized or offloaded), not in an AUTOMATIC1111 "
    "LatentDiffusion, and loads checkpoints lazily, so the bridge cannot merge weights in its "
    "memory; /autombw/v1/status, merge, restore and save answer 501"
)
FORGE_HINT = (
    "run the search against AUTOMATIC1111 WebUI 1.x (1.10.1 is tested); for a one-off merge "
    "use `autombw merge A B --weights W -o OUT` and load the result in Forge"
)


def forge_label() -> str | None:
    """The Forge version when this WebUI is Forge, else None.

    Forge 2 (``f2.x``, 2024-08 on) is recognised by ``sd_models.forge_model_reload`` (its lazy
    loader: ``reload_model_weights`` there does nothing); older Forge (``f0.0.x``) and builds
    without it by the ``modules_forge`` package."""
    import importlib
    import importlib.util

    from modules import sd_models

    if not hasattr(sd_models, "forge_model_reload") and (
        importlib.util.find_spec("modules_forge") is None
    ):
        return None
    try:
        # by name: the extension builder allows no static import outside the WebUI's modules
        forge_version = importlib.import_module("modules_forge.forge_version")
        return f"Forge {forge_version.version}"
    except Exception:  # the package layout differs between Forge versions
        try:
            from modules import launch_utils

            return f"Forge {launch_utils.git_tag()}"
        except Exception:
            return "Forge"


class RefusingCore(BridgeCore):
    """The engine on a WebUI the bridge cannot work in: every route answers 501
    ``UnsupportedWebUI`` with the reason, so the CLI says why instead of "not installed"."""

    def __init__(self, host: Any, *, version: str, message: str, hint: str) -> None:
        super().__init__(host, version=version)
        self._refusal = UnsupportedWebUI(message, hint=hint)

    def status(self) -> dict[str, Any]:
        raise self._refusal

    def merge(self, *_args: Any, **_kwargs: Any) -> Any:
        raise self._refusal

    def restore(self, *_args: Any, **_kwargs: Any) -> Any:
        raise self._refusal

    def save(self, *_args: Any, **_kwargs: Any) -> Any:
        raise self._refusal


def install(app: Any, *, version: str) -> BridgeCore:
    """Register the bridge on the WebUI's FastAPI ``app`` (called from on_app_started)."""
    from modules import script_callbacks

    host = A1111Host()
    forge = forge_label()
    if forge is not None:
        message = FORGE_REFUSAL.format(label=forge)
        refusing = RefusingCore(host, version=version, message=message, hint=FORGE_HINT)
        register_routes(app, refusing, credentials=host.credentials)
        log.warning("autombw bridge: %s", message)
        print(f"*** autombw bridge {version}: {message} (hint: {FORGE_HINT})")
        return refusing
    core = BridgeCore(host, version=version)
    script_callbacks.on_model_loaded(lambda _model: core.mark_lost())
    register_routes(app, core, credentials=host.credentials)
    if host.exposed_without_auth():
        message = (
            "autombw bridge: the WebUI listens beyond this machine without --api-auth; anyone "
            "who can reach it can merge, restore and save checkpoints through /autombw/v1/. "
            "Start the WebUI with --api-auth user:password (autombw reads the password from "
            "an environment variable)."
        )
        log.warning(message)
        print(f"*** {message}")
    print(f"autombw bridge {version}: routes under /autombw/v1/ are ready")
    return core
