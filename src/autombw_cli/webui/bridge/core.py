"""The bridge's merge engine: an in-memory block merge of two checkpoints inside a WebUI.

`BridgeCore` knows nothing of AUTOMATIC1111. It works through a small `BridgeHost` (the live
model, loading a checkpoint, listing checkpoints, the checkpoint folder, the queue lock), so the
same code runs inside A1111 (``a1111_host.py``) and inside the simulated WebUI (``sim/``).

How a merge works:

1. Model A is loaded as the WebUI's checkpoint if it is not already (the host does it).
2. Per pair, caches are filled once: A's original UNet tensors (copied from the live model, so
   a restore is bit-exact) and B's UNet tensors (read from B's file, cast to the live dtype),
   grouped by block slot, on the cache device (``cuda`` or ``cpu``). Changing B keeps A's cache;
   changing A drops both.
3. Only the slots whose weight differs from what the live model holds are recomputed
   (``merging.kernels.lerp_tensor``) and written with ``load_state_dict(strict=False)``.
   Whenever the text encoder's weights change (a merge, a restore, a reload of a merged
   model), the host drops its cached prompt conditionings (`BridgeHost.invalidate_conditioning`).
4. Every merge gets a new ``merge_id``. When the host reloads a checkpoint for any reason
   (`BridgeCore.mark_lost`), the merge is lost: status reports ``merge_live: false`` and the
   next merge starts from the reloaded weights.

The caller (the routes) holds the host's queue lock around every call. Only torch,
safetensors and the standard library are used (this file is copied into the WebUI extension).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from autombw_cli.atomic import atomic_write_text
from autombw_cli.blocks import (
    BASE,
    EXTRAPOLATION_RANGE,
    UNET_PREFIX,
    WEIGHT_RANGE,
    Arch,
    Weights,
    canonical_slot,
    detect_arch,
    format_weight,
    is_text_encoder_key,
    layout,
)
from autombw_cli.errors import AutombwError
from autombw_cli.merging.ckpt_writer import SUFFIXES
from autombw_cli.merging.kernels import lerp_tensor
from autombw_cli.recipe import Recipe
from autombw_cli.webui.bridge.files import DTYPE_NAMES, TensorFile
from autombw_cli.webui.bridge.names import (
    CheckpointRef,
    NameError_,
    checkpoint_stem,
    close_names,
    find_checkpoint,
    safe_output_path,
)
from autombw_cli.webui.bridge.save import write_merged_checkpoint

BRIDGE_API = 1
CACHE_DEVICES = ("auto", "cuda", "cpu")
UNET_MODULE = "model.diffusion_model"
_UNKNOWN = math.nan  # "the live model holds something else for this slot": always rewritten


class BridgeError(Exception):
    """A request the bridge refuses; ``status`` is the HTTP status, ``kind`` the error name."""

    def __init__(
        self, message: str, *, status: int = 400, kind: str = "BridgeError", hint: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind
        self.hint = hint


class BridgeHost(Protocol):
    """What the bridge needs from the program that holds the model (A1111 or the simulator)."""

    name: str

    @property
    def queue_lock(self) -> AbstractContextManager[Any]:
        """The lock that serializes generation, model loads and merges."""
        ...

    def live_model(self) -> torch.nn.Module | None:
        """The loaded model; its ``state_dict`` keys are checkpoint keys
        (``model.diffusion_model.*`` for the UNet)."""
        ...

    def loaded_checkpoint(self) -> CheckpointRef | None: ...

    def load_checkpoint(self, ref: CheckpointRef) -> None:
        """Load ``ref`` as the WebUI's checkpoint (the host's own loading path)."""
        ...

    def list_checkpoints(self) -> list[CheckpointRef]: ...

    def checkpoint_dir(self) -> Path: ...

    def refresh_checkpoints(self) -> None: ...

    def webui_version(self) -> str | None:
        """The WebUI's own version (A1111: its ``git describe --tags``), None when unknown."""
        ...

    def invalidate_conditioning(self) -> None:
        """Forget cached prompt conditionings: the text encoder's weights changed. (A1111 caches
        them keyed on prompt, steps and checkpoint, not on weights.)"""
        ...


@dataclass(frozen=True)
class MergeOutcome:
    merge_id: str
    changed_blocks: list[str]
    elapsed_s: float
    model_a: str
    model_b: str
    arch: str
    cache_device: str

    def to_json(self) -> dict[str, Any]:
        return {
            "merge_id": self.merge_id,
            "changed_blocks": self.changed_blocks,
            "elapsed_s": self.elapsed_s,
            "model_a": self.model_a,
            "model_b": self.model_b,
            "arch": self.arch,
            "cache_device": self.cache_device,
        }


@dataclass(frozen=True)
class SaveOutcome:
    name: str
    path: str
    recipe_path: str
    sha256: str
    bytes: int
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _PairState:
    """Caches and live-model bookkeeping for one (A, B) pair."""

    a: CheckpointRef
    b: CheckpointRef
    arch: Arch
    slot_keys: dict[str, list[str]] = field(default_factory=dict)  # slot -> live state keys
    a_cache: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    b_cache: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    applied: dict[str, float] = field(default_factory=dict)  # slot (and BASE) -> weight live
    a_from_file: bool = False  # A's originals come from A's file, not from the live model


class BridgeCore:
    """The in-memory merge engine (one per WebUI process). Not thread-safe on its own: callers
    hold the host's queue lock; `mark_lost` may be called from anywhere."""

    def __init__(self, host: BridgeHost, *, version: str) -> None:
        self.host = host
        self.version = version
        self._state_lock = threading.RLock()
        self._pair: _PairState | None = None
        self._cache_device: torch.device | None = None
        self._live_known = False  # the live model holds exactly A + `applied`
        self._model_identity: int | None = None
        self._self_loading = False
        self._merge_id: str | None = None
        self._weights: Weights | None = None
        self._merge_live = False
        self._lost_reason: str | None = None
        self._shape_cache: dict[tuple[str, int, int], dict[str, tuple[int, ...]]] = {}
        self._verdicts: dict[tuple[tuple[str, int, int], tuple[str, int, int]], Arch] = {}

    # --- host notifications ---------------------------------------------------------------
    def mark_lost(self, reason: str = "the WebUI reloaded its checkpoint") -> None:
        """The host (re)loaded a model: whatever merge was live is gone."""
        with self._state_lock:
            if self._self_loading:
                return
            pair = self._pair
            if pair is not None and pair.applied.get(BASE, 0.0) != 0.0:
                # conditionings cached while the text encoder was merged are keyed on this
                # checkpoint: the reloaded (plain) one would reuse them
                self.host.invalidate_conditioning()
            self._live_known = False
            if self._merge_id is not None and self._merge_live:
                self._merge_live = False
                self._lost_reason = reason

    # --- status ---------------------------------------------------------------------------
    def cache_bytes(self) -> int:
        with self._state_lock:
            pair = self._pair
            if pair is None:
                return 0
            return sum(
                t.numel() * t.element_size()
                for cache in (pair.a_cache, pair.b_cache)
                for tensors in cache.values()
                for t in tensors.values()
            )

    def status(self) -> dict[str, Any]:
        with self._state_lock:
            pair = self._pair
            loaded = self.host.loaded_checkpoint()
            live = self._merge_live and self._still_our_model()
            return {
                "version": self.version,
                "bridge_api": BRIDGE_API,
                "host": self.host.name,
                "webui_version": self._webui_version(),
                "arch": pair.arch.value if pair else None,
                "model_a": _ref_json(pair.a) if pair else None,
                "model_b": _ref_json(pair.b) if pair else None,
                "loaded_checkpoint": loaded.title if loaded else None,
                "merge_id": self._merge_id,
                "weights": dict(self._weights.values) if self._weights else None,
                "text_encoder_weight": self._weights.text_encoder if self._weights else None,
                "cache_device": str(self._cache_device) if self._cache_device else None,
                "cache_bytes": self.cache_bytes(),
                "merge_live": live,
                "lost_reason": None if live else self._lost_reason or self._swapped(),
            }

    def _webui_version(self) -> str | None:
        try:
            version = self.host.webui_version()
        except Exception:  # a version we cannot read must not break status
            return None
        return str(version) if version else None

    def _swapped(self) -> str | None:
        if self._merge_id is not None and self._merge_live:
            return "the WebUI replaced its model object"
        return None

    # --- merge ----------------------------------------------------------------------------
    def merge(
        self,
        model_a: str,
        model_b: str,
        weights: Mapping[str, float],
        *,
        cache_device: str = "auto",
        text_encoder_weight: float | None = None,
        extrapolation: bool = False,
    ) -> MergeOutcome:
        t0 = time.perf_counter()
        with self._state_lock, torch.no_grad():
            refs = self.host.list_checkpoints()
            ref_a = self._resolve(model_a, refs, "model_a")
            ref_b = self._resolve(model_b, refs, "model_b")
            if _same_file(ref_a.path, ref_b.path):
                raise BridgeError(
                    f"model_a and model_b are the same checkpoint ({ref_a.name})",
                    kind="SameModel",
                    hint="a merge needs two different checkpoints",
                )
            arch = self._check_pair(ref_a, ref_b)
            w = _parse_weights(arch, weights, text_encoder_weight, extrapolation)
            if cache_device not in CACHE_DEVICES:
                raise BridgeError(
                    f"cache_device must be one of {', '.join(CACHE_DEVICES)}, not {cache_device!r}",
                    status=422,
                    kind="ValidationError",
                )

            pair = self._switch_pair(ref_a, ref_b, arch)
            model = self._ensure_a_loaded(pair)
            unet = model.get_submodule(UNET_MODULE)
            device = self._choose_cache_device(cache_device, unet, pair)
            self._move_caches(pair, device)

            targets = {slot: w.values[slot] for slot in pair.slot_keys}
            te = w.text_encoder if w.text_encoder is not None else 0.0
            changed = [s for s, v in targets.items() if pair.applied.get(s, _UNKNOWN) != v]
            te_changed = pair.applied.get(BASE, 0.0) != te

            # From here on the previous merge is gone. `pair.applied` follows every slot
            # written, so after a failure midway the next merge or restore knows what to redo.
            self._merge_live = False
            self._merge_id = None
            self._write_unet_slots(pair, unet, {s: targets[s] for s in changed})
            if te_changed:
                try:
                    self._write_text_encoder(pair, model, te)
                finally:
                    self.host.invalidate_conditioning()

            self._merge_id = uuid.uuid4().hex[:16]
            self._weights = w
            self._merge_live = True
            self._lost_reason = None
            return MergeOutcome(
                merge_id=self._merge_id,
                changed_blocks=changed + ([BASE] if te_changed else []),
                elapsed_s=round(time.perf_counter() - t0, 6),
                model_a=ref_a.name,
                model_b=ref_b.name,
                arch=arch.value,
                cache_device=str(device),
            )

    # --- restore --------------------------------------------------------------------------
    def restore(self, *, free_caches: bool = False) -> dict[str, Any]:
        """Put A's original weights back (bit for bit); optionally drop the caches."""
        with self._state_lock, torch.no_grad():
            pair = self._pair
            restored = False
            if pair is not None and self._live_known and self._still_our_model():
                model = self.host.live_model()
                assert model is not None
                dirty = {s: 0.0 for s, v in pair.applied.items() if v != 0.0 and s != BASE}
                if dirty:
                    self._write_unet_slots(pair, model.get_submodule(UNET_MODULE), dirty)
                if pair.applied.get(BASE, 0.0) != 0.0:
                    try:
                        self._write_text_encoder(pair, model, 0.0)
                    finally:
                        self.host.invalidate_conditioning()
                restored = True
            self._merge_id = None
            self._weights = None
            self._merge_live = False
            self._lost_reason = None
            freed = 0
            if free_caches:
                freed = self.cache_bytes()
                self._drop_caches()
            return {"restored": restored, "freed_bytes": freed, "cache_bytes": self.cache_bytes()}

    # --- save -----------------------------------------------------------------------------
    def save(
        self,
        name: object,
        weights: Mapping[str, float] | None = None,
        *,
        dtype: str = "fp16",
        overwrite: bool = False,
        text_encoder_weight: float | None = None,
        extrapolation: bool = False,
        fmt: str = "safetensors",
    ) -> SaveOutcome:
        """Write A's non-UNet tensors + the merged UNet (from the files, in float32) as a
        ``.safetensors`` (or, with ``fmt="ckpt"``, a ``.ckpt`` torch pickle) file in the
        checkpoint folder, with a ``.recipe.txt`` beside it."""
        t0 = time.perf_counter()
        with self._state_lock, torch.no_grad():
            pair = self._pair
            if pair is None:
                raise BridgeError(
                    "no merge pair yet: nothing to save",
                    status=409,
                    kind="NoMerge",
                    hint="POST /autombw/v1/merge first; save uses that merge's models",
                )
            if weights is None:
                if self._weights is None:
                    raise BridgeError(
                        "no weights given and no current merge",
                        status=422,
                        kind="ValidationError",
                        hint="pass weights: {slot: w}",
                    )
                w = self._weights
            else:
                w = _parse_weights(pair.arch, weights, text_encoder_weight, extrapolation)
            _check_choice("dtype", dtype, sorted(DTYPE_NAMES))
            _check_choice("format", fmt, list(SUFFIXES))
            suffix = SUFFIXES[fmt]
            try:
                target = safe_output_path(name, self.host.checkpoint_dir(), suffix=suffix)
            except NameError_ as exc:
                raise BridgeError(str(exc), kind="BadName") from None
            stem = target.name[: -len(suffix)]
            recipe_path = target.with_name(stem + ".recipe.txt")
            self._refuse_own_files(target, stem)
            for path in (target, recipe_path):  # the recipe follows its checkpoint's rule
                if path.exists() and not overwrite:
                    raise BridgeError(
                        f"{path.name} already exists in the checkpoint folder",
                        status=409,
                        kind="OutputExists",
                        hint="pass overwrite: true to replace it, or choose another name",
                    )
            recipe = Recipe(
                model_a=pair.a.filename,
                model_b=pair.b.filename,
                output_name=stem,
                weights=w,
            )
            size, sha256 = write_merged_checkpoint(
                pair.a.path,
                pair.b.path,
                w,
                target,
                dtype=DTYPE_NAMES[dtype],
                metadata=recipe.safetensors_metadata(),
                fmt=fmt,  # type: ignore[arg-type]  (checked against SUFFIXES above)
            )
            atomic_write_text(recipe_path, recipe.to_text())
            self.host.refresh_checkpoints()
            return SaveOutcome(
                name=target.name,
                path=str(target),
                recipe_path=str(recipe_path),
                sha256=sha256,
                bytes=size,
                elapsed_s=round(time.perf_counter() - t0, 6),
            )

    def _refuse_own_files(self, target: Path, stem: str) -> None:
        """Never write over a file the bridge reads from (A, B, the loaded checkpoint) nor
        over their recipe files, whatever ``overwrite`` says: refuse a save whose name is one
        of theirs (same file, or same stem in the same folder)."""
        pair = self._pair
        own = [("model A", pair.a), ("model B", pair.b)] if pair is not None else []
        loaded = self.host.loaded_checkpoint()
        if loaded is not None:
            own.append(("the loaded checkpoint", loaded))
        for role, ref in own:
            same_stem = _same_or_linked(ref.path.parent, target.parent) and (
                checkpoint_stem(ref.path.name) == stem.lower()
            )
            if same_stem or _same_or_linked(ref.path, target):
                raise BridgeError(
                    f"{target.name} would overwrite {role} ({ref.filename}) or its recipe, "
                    "which the bridge is merging from",
                    status=409,
                    kind="OutputIsInput",
                    hint="choose another name; the bridge never overwrites its own inputs",
                )

    # --- internals ------------------------------------------------------------------------
    def _resolve(
        self, requested: object, refs: list[CheckpointRef], field_name: str
    ) -> CheckpointRef:
        if not isinstance(requested, str) or not requested.strip():
            raise BridgeError(
                f"{field_name} must be a checkpoint name", status=422, kind="ValidationError"
            )
        ref = find_checkpoint(requested, refs)
        if ref is None:
            close = close_names(requested, refs)
            hint = (
                f"did you mean {', '.join(close)}?"
                if close
                else "see GET /sdapi/v1/sd-models, or refresh the checkpoint list"
            )
            raise BridgeError(
                f"{field_name}: unknown checkpoint {requested!r}",
                status=404,
                kind="UnknownModel",
                hint=hint,
            )
        return ref

    def _shapes(self, ref: CheckpointRef) -> dict[str, tuple[int, ...]]:
        key = _file_key(ref.path)
        shapes = self._shape_cache.get(key)
        if shapes is None:
            try:
                with TensorFile(ref.path) as tf:
                    shapes = tf.shapes()
            except Exception as exc:  # a broken file is the user's to fix, not a bridge bug
                raise BridgeError(
                    f"{ref.name}: not a readable checkpoint ({exc})", kind="ModelMismatch"
                ) from exc
            if len(self._shape_cache) >= 8:
                self._shape_cache.clear()
            self._shape_cache[key] = shapes
        return shapes

    def _check_pair(self, ref_a: CheckpointRef, ref_b: CheckpointRef) -> Arch:
        key = (_file_key(ref_a.path), _file_key(ref_b.path))
        arch = self._verdicts.get(key)
        if arch is None:
            arch = self._check_pair_files(ref_a, ref_b)
            if len(self._verdicts) >= 8:
                self._verdicts.clear()
            self._verdicts[key] = arch
        return arch

    def _check_pair_files(self, ref_a: CheckpointRef, ref_b: CheckpointRef) -> Arch:
        sa, sb = self._shapes(ref_a), self._shapes(ref_b)
        try:
            arch_a = detect_arch(sa, source=ref_a.name)
            arch_b = detect_arch(sb, source=ref_b.name)
        except AutombwError as exc:
            raise BridgeError(exc.message, status=409, kind="ModelMismatch") from None
        if arch_a is not arch_b:
            raise BridgeError(
                f"architectures differ: {ref_a.name} is {arch_a.value}, "
                f"{ref_b.name} is {arch_b.value}",
                status=409,
                kind="ModelMismatch",
                hint="merge two checkpoints of the same architecture",
            )
        unet_a = {k: v for k, v in sa.items() if k.startswith(UNET_PREFIX)}
        unet_b = {k: v for k, v in sb.items() if k.startswith(UNET_PREFIX)}
        for key in sorted(set(unet_a) | set(unet_b)):
            if key not in unet_b:
                raise BridgeError(
                    f"{ref_b.name} lacks UNet key {key} that {ref_a.name} has",
                    status=409,
                    kind="ModelMismatch",
                )
            if key not in unet_a:
                raise BridgeError(
                    f"{ref_a.name} lacks UNet key {key} that {ref_b.name} has",
                    status=409,
                    kind="ModelMismatch",
                )
            if tuple(unet_a[key]) != tuple(unet_b[key]):
                raise BridgeError(
                    f"UNet key {key} has shape {list(unet_a[key])} in {ref_a.name} but "
                    f"{list(unet_b[key])} in {ref_b.name}",
                    status=409,
                    kind="ModelMismatch",
                    hint="an inpainting and a regular model cannot be merged block by block",
                )
        return arch_a

    def _switch_pair(self, ref_a: CheckpointRef, ref_b: CheckpointRef, arch: Arch) -> _PairState:
        old = self._pair
        if old is not None and _same_file(old.a.path, ref_a.path) and old.arch is arch:
            if not _same_file(old.b.path, ref_b.path):
                # Same A: keep its originals; every slot that holds some of the old B is stale.
                old.b_cache.clear()
                old.applied = {s: (0.0 if v == 0.0 else _UNKNOWN) for s, v in old.applied.items()}
                old.b = ref_b
            old.a = ref_a
            return old
        if old is not None and self._live_known and self._still_our_model():
            self.restore()  # leave A's weights as they were before the next pair loads
        new = _PairState(a=ref_a, b=ref_b, arch=arch)
        if old is not None and _same_file(old.b.path, ref_b.path) and old.arch is arch:
            new.b_cache = old.b_cache
        self._pair = new
        self._live_known = False
        return new

    def _ensure_a_loaded(self, pair: _PairState) -> torch.nn.Module:
        loaded = self.host.loaded_checkpoint()
        just_loaded = False
        if loaded is None or not _same_file(loaded.path, pair.a.path):
            just_loaded = True
            self._self_loading = True
            try:
                self.host.load_checkpoint(pair.a)
            finally:
                self._self_loading = False
            loaded = self.host.loaded_checkpoint()
            if loaded is None or not _same_file(loaded.path, pair.a.path):
                raise BridgeError(
                    f"the WebUI did not load {pair.a.name} (loaded: "
                    f"{loaded.name if loaded else 'nothing'})",
                    status=500,
                    kind="LoadFailed",
                    hint="check the WebUI console for the load error",
                )
            self._live_known = False
        model = self.host.live_model()
        if model is None:
            raise BridgeError("the WebUI has no model loaded", status=500, kind="LoadFailed")
        if not pair.slot_keys:
            unet = model.get_submodule(UNET_MODULE)
            pair.slot_keys = _slot_keys(unet.state_dict(), pair.arch)
        if not self._live_known or self._model_identity != id(model):
            # The live model should hold A's original weights: (re)take them from it, unless
            # a spot check against A's file says otherwise (another merge may still be in the
            # weights, e.g. after the WebUI's "Reload UI" restarted the bridge).
            pair.a_cache.clear()
            unet_ok = just_loaded or self._unet_matches_file(pair, model)
            te_ok = just_loaded or self._text_encoder_matches_file(pair, model)
            pair.a_from_file = not (unet_ok and te_ok)
            pair.applied = dict.fromkeys(pair.slot_keys, 0.0 if unet_ok else _UNKNOWN)
            pair.applied[BASE] = 0.0 if te_ok else _UNKNOWN
            self._model_identity = id(model)
            self._live_known = True
        return model

    def _unet_matches_file(self, pair: _PairState, model: torch.nn.Module) -> bool:
        """Two tensors per slot (the smallest and a middle-sized one) equal A's file."""
        live = model.get_submodule(UNET_MODULE).state_dict()
        probes = []
        for slot, keys in pair.slot_keys.items():
            module = _slot_module(pair.arch, slot)
            by_size = sorted(keys, key=lambda k, m=module: live[f"{m}.{k}"].numel())
            for key in {by_size[0], by_size[len(by_size) // 2]}:
                probes.append((UNET_PREFIX + f"{module}.{key}", live[f"{module}.{key}"]))
        return _probes_match(pair.a.path, probes)

    def _text_encoder_matches_file(self, pair: _PairState, model: torch.nn.Module) -> bool:
        probes = [
            (ckpt, t)
            for ckpt, t in _text_encoder_tensors(model, pair.arch)
            if t.is_floating_point()
        ][:2]
        return _probes_match(pair.a.path, probes)

    def _still_our_model(self) -> bool:
        model = self.host.live_model()
        return model is not None and id(model) == self._model_identity

    def _choose_cache_device(
        self, requested: str, unet: torch.nn.Module, pair: _PairState
    ) -> torch.device:
        live_device = _module_device(unet)
        if requested == "cpu":
            device = torch.device("cpu")
        elif requested == "cuda":
            if not torch.cuda.is_available():
                raise BridgeError(
                    "cache_device=cuda but this WebUI has no CUDA device",
                    kind="NoCuda",
                    hint="use cache_device auto or cpu",
                )
            device = live_device if live_device.type == "cuda" else torch.device("cuda")
        elif live_device.type == "cuda":
            unet_bytes = sum(t.numel() * t.element_size() for t in unet.state_dict().values())
            held = sum(
                t.numel() * t.element_size()
                for cache in (pair.a_cache, pair.b_cache)
                for ts in cache.values()
                for t in ts.values()
                if t.device.type == "cuda"
            )
            free, _ = torch.cuda.mem_get_info(live_device)
            need = 2 * unet_bytes - held + (1 << 30)
            device = live_device if free > need else torch.device("cpu")
        else:
            device = torch.device("cpu")
        self._cache_device = device
        return device

    def _move_caches(self, pair: _PairState, device: torch.device) -> None:
        for cache in (pair.a_cache, pair.b_cache):
            for slot, tensors in cache.items():
                if any(t.device != device for t in tensors.values()):
                    cache[slot] = {k: _to_cache(t, device) for k, t in tensors.items()}

    def _fill_slot(self, pair: _PairState, slot: str, live: Mapping[str, Tensor]) -> None:
        """Cache A's originals (from ``live``, the slot module's state) and B's tensors."""
        device = self._cache_device or torch.device("cpu")
        keys = pair.slot_keys[slot]
        file_prefix = UNET_PREFIX + _slot_module(pair.arch, slot) + "."
        if slot not in pair.a_cache:
            if pair.a_from_file:
                pair.a_cache[slot] = self._read_file(
                    pair.a, [(file_prefix + k, k) for k in keys], live
                )
            elif pair.applied.get(slot, 0.0) != 0.0:  # the live slot is not A's any more
                raise BridgeError(
                    f"A's original {slot} tensors are gone from the cache",
                    status=500,
                    kind="InternalError",
                    hint="reload the checkpoint in the WebUI, then merge again",
                )
            else:
                pair.a_cache[slot] = {k: _to_cache(live[k], device, copy=True) for k in keys}
        if slot not in pair.b_cache:
            pair.b_cache[slot] = self._read_file(pair.b, [(file_prefix + k, k) for k in keys], live)

    def _read_file(
        self, ref: CheckpointRef, keys: list[tuple[str, str]], live: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """``(file key, live key)`` tensors of ``ref``'s file, in the live dtype, cached."""
        device = self._cache_device or torch.device("cpu")
        out: dict[str, Tensor] = {}
        with TensorFile(ref.path) as fb:
            present = set(fb.tensor_keys())
            for file_key, live_key in keys:
                ref = live[live_key]
                if file_key not in present:
                    continue  # e.g. a text-encoder buffer B does not carry: A's value stays
                t = fb.get(file_key)
                if tuple(t.shape) != tuple(ref.shape):
                    raise BridgeError(
                        f"{ref.name}: {file_key} has shape {list(t.shape)}, the loaded "
                        f"model has {list(ref.shape)}",
                        status=409,
                        kind="ModelMismatch",
                    )
                out[live_key] = _to_cache(t.to(ref.dtype), device)
        return out

    def _write_unet_slots(
        self, pair: _PairState, unet: torch.nn.Module, targets: Mapping[str, float]
    ) -> None:
        """Write ``lerp(A, B, w)`` into each target slot, one slot module at a time (a
        ``load_state_dict`` on the small slot module, not on the whole model: far cheaper,
        and at most one slot's merged tensors exist at once)."""
        for slot, w in targets.items():
            module = unet.get_submodule(_slot_module(pair.arch, slot))
            live = module.state_dict()
            self._fill_slot(pair, slot, live)
            a_slot, b_slot = pair.a_cache[slot], pair.b_cache[slot]
            batch: dict[str, Tensor] = {}
            for key, a in a_slot.items():
                dst = live[key]
                a_dev = a.to(dst.device, non_blocking=True)
                b = b_slot.get(key)
                if b is None or w == 0.0:
                    batch[key] = a_dev
                else:
                    batch[key] = lerp_tensor(a_dev, b.to(dst.device, non_blocking=True), w)
            pair.applied[slot] = _UNKNOWN  # a failure inside the write leaves it unknown
            _load_into(module, batch)
            pair.applied[slot] = w

    def _write_text_encoder(self, pair: _PairState, model: torch.nn.Module, w: float) -> None:
        live = model.state_dict()
        pairs = [(ckpt, k) for k in live if (ckpt := _checkpoint_key(k, pair.arch))]
        keys = [k for _, k in pairs]
        if not keys:
            raise BridgeError(
                "the loaded model has no text-encoder keys this bridge recognises",
                kind="Unsupported",
                hint="leave text_encoder_weight unset",
            )
        device = self._cache_device or torch.device("cpu")
        if BASE not in pair.a_cache and pair.a_from_file:
            pair.a_cache[BASE] = self._read_file(pair.a, pairs, live)
        if BASE not in pair.a_cache:
            if pair.applied.get(BASE, 0.0) != 0.0:
                raise BridgeError(
                    "A's original text-encoder tensors are gone from the cache",
                    status=500,
                    kind="InternalError",
                    hint="reload the checkpoint in the WebUI, then merge again",
                )
            pair.a_cache[BASE] = {k: _to_cache(live[k], device, copy=True) for k in keys}
        if BASE not in pair.b_cache and w != 0.0:
            pair.b_cache[BASE] = self._read_file(pair.b, pairs, live)
        a_te, b_te = pair.a_cache[BASE], pair.b_cache.get(BASE, {})
        batch = {}
        for key, a in a_te.items():
            a_dev = a.to(live[key].device)
            b = b_te.get(key)
            batch[key] = a_dev if b is None else lerp_tensor(a_dev, b.to(a_dev.device), w)
        pair.applied[BASE] = _UNKNOWN
        _load_into(model, batch)
        pair.applied[BASE] = w

    def _drop_caches(self) -> None:
        pair = self._pair
        if pair is not None:
            pair.a_cache.clear()
            pair.b_cache.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --- helpers ---------------------------------------------------------------------------------
def _parse_weights(
    arch: Arch,
    weights: object,
    text_encoder_weight: object,
    extrapolation: bool,
) -> Weights:
    if not isinstance(weights, Mapping) or not weights:
        raise BridgeError(
            "weights must be an object {slot: weight}", status=422, kind="ValidationError"
        )
    values: dict[str, float] = {}
    te = text_encoder_weight
    slots = layout(arch).slots
    given: dict[str, str] = {}  # slot -> the key that named it (IN00 and in00 are one slot)
    if te is not None:
        given[BASE] = "text_encoder_weight"
    for name, v in weights.items():
        try:
            slot = canonical_slot(str(name), arch)
        except AutombwError as exc:
            raise BridgeError(exc.message, status=422, kind="ValidationError") from None
        if slot in given:
            raise BridgeError(
                f"weights: {slot} given twice ({given[slot]} and {name})",
                status=422,
                kind="ValidationError",
                hint="give each block once",
            )
        given[slot] = str(name)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise BridgeError(
                f"weights.{name} must be a number, not {v!r}", status=422, kind="ValidationError"
            )
        if slot == BASE:
            te = v
        else:
            values[slot] = _as_float(v)
    missing = [s for s in slots if s not in values]
    if missing:
        raise BridgeError(
            f"weights for {arch.value} lack {', '.join(missing)}",
            status=422,
            kind="ValidationError",
            hint=f"give every slot: {', '.join(slots)}",
        )
    if te is not None and (isinstance(te, bool) or not isinstance(te, int | float)):
        raise BridgeError(
            f"text_encoder_weight must be a number, not {te!r}", status=422, kind="ValidationError"
        )
    lo, hi = EXTRAPOLATION_RANGE if extrapolation else WEIGHT_RANGE
    checks = list(values.items()) + ([(BASE, _as_float(te))] if te is not None else [])
    for slot, v in checks:
        if not math.isfinite(v) or not lo <= v <= hi:
            raise BridgeError(
                f"weight {slot}={format_weight(v) if math.isfinite(v) else v} is outside "
                f"{lo:g}..{hi:g}",
                status=422,
                kind="ValidationError",
                hint=None if extrapolation else "set extrapolation: true to allow -1..2",
            )
    return Weights(arch, values, None if te is None else _as_float(te))


def _as_float(value: float) -> float:
    """``float(value)``; an integer too large for a float (400 digits) becomes inf, which the
    range check then refuses (``float()`` would raise OverflowError: a 500)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _slot_module(arch: Arch, slot: str) -> str:
    """The UNet submodule of a slot, e.g. ``input_blocks.4`` or ``out``."""
    return layout(arch).slot_prefix(slot)[len(UNET_PREFIX) : -1]


def _slot_keys(live: Mapping[str, Tensor], arch: Arch) -> dict[str, list[str]]:
    """Slot -> float state keys of that slot, relative to the slot's submodule."""
    lay = layout(arch)
    keys: dict[str, list[str]] = {s: [] for s in lay.slots}
    for key, t in live.items():
        slot = lay.slot_of(UNET_PREFIX + key)
        if slot is not None and t.is_floating_point():
            keys[slot].append(key[len(_slot_module(arch, slot)) + 1 :])
    return {s: ks for s, ks in keys.items() if ks}


def _checkpoint_key(live_key: str, arch: Arch) -> str | None:
    """The checkpoint key of a live text-encoder key, or None for other keys. A1111 wraps its
    text encoders (``cond_stage_model.wrapped.transformer...``): drop the ``wrapped.``."""
    ckpt = live_key.replace(".wrapped.", ".")
    return ckpt if is_text_encoder_key(ckpt, arch) else None


def _text_encoder_tensors(model: torch.nn.Module, arch: Arch) -> list[tuple[str, Tensor]]:
    return [(ckpt, t) for k, t in model.state_dict().items() if (ckpt := _checkpoint_key(k, arch))]


def _probes_match(path: Path, probes: list[tuple[str, Tensor]]) -> bool:
    """Whether each live tensor equals the file's tensor of that key (cast to its dtype)."""
    if not probes:
        return True
    with TensorFile(path) as tf:
        present = set(tf.tensor_keys())
        for key, live in probes:
            if key not in present:
                continue
            want = tf.get(key).to(device=live.device, dtype=live.dtype)
            if want.shape != live.shape or not torch.equal(want, live):
                return False
    return True


def _load_into(module: torch.nn.Module, tensors: dict[str, Tensor]) -> None:
    result = module.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise BridgeError(
            f"the loaded model has no key {result.unexpected_keys[0]}",
            status=500,
            kind="ModelMismatch",
        )


def _to_cache(t: Tensor, device: torch.device, *, copy: bool = False) -> Tensor:
    out = t.detach().to(device, copy=copy or t.device != device)
    if device.type == "cpu" and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):
            out = out.pin_memory()  # faster copies to the GPU when merging
    return out


def _module_device(module: torch.nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _file_key(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise BridgeError(
            f"cannot read checkpoint {path} ({exc})", status=404, kind="UnknownModel"
        ) from None
    return (str(path), st.st_mtime_ns, st.st_size)


def _same_file(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _same_or_linked(a: Path, b: Path) -> bool:
    """`_same_file`, or one file under two names (hard link, case-insensitive file system)."""
    if _same_file(a, b):
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _check_choice(name: str, value: object, options: list[str]) -> None:
    if value not in options:
        raise BridgeError(
            f"{name} must be one of {', '.join(options)}, not {value!r}",
            status=422,
            kind="ValidationError",
        )


def _ref_json(ref: CheckpointRef) -> dict[str, Any]:
    return {"file": ref.filename, "title": ref.title, "sha256": ref.sha256}
