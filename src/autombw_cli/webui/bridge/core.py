"""The bridge's merge engine: an in-memory block merge of two checkpoints inside a WebUI
(a weighted sum of A and B, or add difference: A plus the weighted difference of B and C), or
a LoRA applied to A with a strength per block (``formula: lora``, B a file of the WebUI's Lora
folder: the LoRA's deltas are cached per slot like B's tensors, `merging.lora`).

`BridgeCore` knows nothing of AUTOMATIC1111. It works through a small `BridgeHost` (``host.py``:
the live model, loading a checkpoint, listing checkpoints, the checkpoint folder, the queue
lock), so the same code runs inside A1111 (``a1111_host.py``) and inside the simulated WebUI
(``sim/``).

How a merge works:

1. Model A is loaded as the WebUI's checkpoint if it is not already (the host does it).
2. Per pair, caches are filled once: A's original UNet tensors (copied from the live model, so
   a restore is bit-exact) and B's UNet tensors (read from B's file, cast to the live dtype),
   and for add difference C's (like B's), grouped by block slot, on the cache device (``cuda``
   or ``cpu``). Changing B or C keeps A's cache; changing A drops A's.
3. Only the slots whose weight differs from what the live model holds are recomputed
   (``merging.kernels.merge_tensor``) and written with ``load_state_dict(strict=False)``.
   Whenever the text encoder's weights change (a merge, a restore, a reload of a merged
   model), the host drops its cached prompt conditionings (`BridgeHost.invalidate_conditioning`).
4. Every merge gets a new ``merge_id``. When the host reloads a checkpoint for any reason
   (`BridgeCore.mark_lost`), the merge is lost: status reports ``merge_live: false`` and the
   next merge starts from the reloaded weights.

`BridgeCore` is the thin part: it sequences the steps over three parts with one job each:
`cache.TensorCache` (A's and B's tensors per slot, on a device), `state.LiveState` (what the
live model holds and the current merge: one immutable value, replaced whole) and `live` (slot
modules, writing into them, spot checks against A's file); `pairs` resolves names and checks a
pair. Refusals are `errors.BridgeError` subclasses that carry their HTTP status; the routes
answer them. The caller (the routes) holds the host's queue lock around every call. Only
torch, safetensors and the standard library are used (copied into the WebUI extension).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from autombw_cli.atomic import atomic_write_text
from autombw_cli.blocks import BASE, Weights
from autombw_cli.merging.ckpt_writer import SUFFIXES
from autombw_cli.recipe import Formula, Recipe
from autombw_cli.webui.bridge.arguments import (
    CACHE_DEVICES,
    check_choice,
    requested_formula,
    requested_weights,
)
from autombw_cli.webui.bridge.cache import TensorCache
from autombw_cli.webui.bridge.errors import (
    BadRequest,
    BridgeError,
    Conflict,
    ServerError,
    ValidationError,
)
from autombw_cli.webui.bridge.host import BridgeHost
from autombw_cli.webui.bridge.live import (
    UNET_MODULE,
    module_device,
    slot_keys,
    text_encoder_matches_file,
    unet_matches_file,
    write_text_encoder,
    write_unet_slots,
)
from autombw_cli.webui.bridge.names import CheckpointRef, lora_refs
from autombw_cli.webui.bridge.pairs import PairChecker, resolve, same_file
from autombw_cli.webui.bridge.save import DTYPE_NAMES, save_target, write_merged_checkpoint
from autombw_cli.webui.bridge.state import UNKNOWN, LiveState, Pair

__all__ = ["BRIDGE_API", "BridgeCore", "BridgeError", "BridgeHost", "MergeOutcome", "SaveOutcome"]

BRIDGE_API = 3  # 2: merge takes formula + model_c (add difference); 3: formula lora


@dataclass(frozen=True)
class MergeOutcome:
    merge_id: str
    changed_blocks: list[str]
    elapsed_s: float
    model_a: str
    model_b: str
    arch: str
    cache_device: str
    formula: str = "weighted_sum"
    model_c: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "merge_id": self.merge_id,
            "changed_blocks": self.changed_blocks,
            "elapsed_s": self.elapsed_s,
            "model_a": self.model_a,
            "model_b": self.model_b,
            "arch": self.arch,
            "cache_device": self.cache_device,
            "formula": self.formula,
            "model_c": self.model_c,
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


class BridgeCore:
    """The in-memory merge engine (one per WebUI process). Not thread-safe on its own: callers
    hold the host's queue lock; `mark_lost` may be called from anywhere."""

    def __init__(self, host: BridgeHost, *, version: str) -> None:
        self.host = host
        self.version = version
        self._lock = threading.RLock()  # `mark_lost` from another thread waits for a merge
        self._state = LiveState()
        self._cache = TensorCache()
        self._pairs = PairChecker()
        self._loading_a = False  # our own load of A: the host's "model loaded" is no loss

    # --- host notifications ---------------------------------------------------------------
    def mark_lost(self, reason: str = "the WebUI reloaded its checkpoint") -> None:
        """The host (re)loaded a model: whatever merge was live is gone."""
        with self._lock:
            if self._loading_a:
                return
            if self._state.pair is not None and self._state.applied.get(BASE, 0.0) != 0.0:
                # conditionings cached while the text encoder was merged are keyed on this
                # checkpoint: the reloaded (plain) one would reuse them
                self.host.invalidate_conditioning()
            self._state = self._state.lost(reason)

    # --- status ---------------------------------------------------------------------------
    def cache_bytes(self) -> int:
        with self._lock:
            return self._cache.nbytes()

    def status(self) -> dict[str, Any]:
        with self._lock:
            state = self._state
            pair = state.pair
            loaded = self.host.loaded_checkpoint()
            live = state.live and state.knows(self.host.live_model())
            swapped = "the WebUI replaced its model object" if state.live else None
            device = self._cache.device
            return {
                "version": self.version,
                "bridge_api": BRIDGE_API,
                "host": self.host.name,
                "webui_version": self._webui_version(),
                "arch": pair.arch.value if pair else None,
                "model_a": _ref_json(pair.a) if pair else None,
                "model_b": _ref_json(pair.b) if pair else None,
                "formula": pair.formula.value if pair else None,
                "model_c": _ref_json(pair.c) if pair and pair.c else None,
                "loaded_checkpoint": loaded.title if loaded else None,
                "merge_id": state.merge_id,
                "weights": dict(state.weights.values) if state.weights else None,
                "text_encoder_weight": state.weights.text_encoder if state.weights else None,
                "cache_device": str(device) if device else None,
                "cache_bytes": self._cache.nbytes(),
                "merge_live": live,
                "lost_reason": None if live else state.lost_reason or swapped,
            }

    def _webui_version(self) -> str | None:
        try:
            version = self.host.webui_version()
        except Exception:  # a version we cannot read must not break status
            return None
        return str(version) if version else None

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
        formula: str | None = None,
        model_c: str | None = None,
    ) -> MergeOutcome:
        """Merge A and B into the live model with ``weights``; ``formula`` ``add_difference``
        (with ``model_c``) merges ``A + (B - C) * w`` instead of the weighted sum."""
        t0 = time.perf_counter()
        with self._lock, torch.no_grad():
            how = requested_formula(formula, model_c)
            refs = self.host.list_checkpoints()
            ref_a = resolve(model_a, refs, "model_a")
            if how is Formula.LORA:
                loras = lora_refs(self.host.lora_dir())
                ref_b = resolve(model_b, loras, "model_b", what="LoRA")
                placed = self._pairs.place_lora(ref_a, ref_b)
                w = requested_weights(placed.arch, weights, text_encoder_weight, extrapolation)
                check_choice("cache_device", cache_device, list(CACHE_DEVICES))
                self._switch_pair(Pair(ref_a, ref_b, placed.arch, lora=True))
                self._cache.lora = placed
                return self._merge_into_live(w, cache_device, t0, how)
            ref_b = resolve(model_b, refs, "model_b")
            ref_c = resolve(model_c, refs, "model_c") if how.needs_c else None
            if same_file(ref_a.path, ref_b.path):
                raise BadRequest(
                    f"model_a and model_b are the same checkpoint ({ref_a.name})",
                    kind="SameModel",
                    hint="a merge needs two different checkpoints",
                )
            if ref_c is not None and same_file(ref_b.path, ref_c.path):
                raise BadRequest(
                    f"model_c and model_b are the same checkpoint ({ref_b.name}): B - C is zero",
                    kind="SameModel",
                    hint="model C is B's base model (e.g. SD1.5 for an SD1.5 fine-tune)",
                )
            arch = self._pairs.check(ref_a, ref_b, ref_c)
            w = requested_weights(arch, weights, text_encoder_weight, extrapolation)
            check_choice("cache_device", cache_device, list(CACHE_DEVICES))

            self._switch_pair(Pair(ref_a, ref_b, arch, ref_c))
            return self._merge_into_live(w, cache_device, t0, how)

    def _merge_into_live(
        self, w: Weights, cache_device: str, t0: float, how: Formula
    ) -> MergeOutcome:
        """Steps 1 to 4 of the module docstring for the current pair (the lock held)."""
        pair = self._state.pair
        assert pair is not None
        model = self._ensure_a_loaded()
        unet = model.get_submodule(UNET_MODULE)
        device = self._choose_cache_device(cache_device, unet)
        self._cache.move_to(device)

        state = self._state
        targets = {slot: w[slot] for slot in self._cache.slot_keys}
        te = w.text_encoder if w.text_encoder is not None else 0.0
        changed = [s for s, v in targets.items() if state.held(s) != v]
        te_changed = state.held(BASE) != te

        # From here on the previous merge is gone. The state's `applied` follows every
        # slot written, so after a failure midway the next merge or restore knows what to
        # redo.
        self._state = state.merging()
        with self._cache.reading():
            self._write_unet_slots(unet, {s: targets[s] for s in changed})
            if te_changed:
                try:
                    self._write_text_encoder(model, te)
                finally:
                    self.host.invalidate_conditioning()

        merge_id = uuid.uuid4().hex[:16]
        self._state = self._state.merged(merge_id, w)
        return MergeOutcome(
            merge_id=merge_id,
            changed_blocks=changed + ([BASE] if te_changed else []),
            elapsed_s=round(time.perf_counter() - t0, 6),
            model_a=pair.a.name,
            model_b=pair.b.name,
            arch=pair.arch.value,
            cache_device=str(device),
            formula=how.value,
            model_c=pair.c.name if pair.c else None,
        )

    # --- restore --------------------------------------------------------------------------
    def restore(self, *, free_caches: bool = False) -> dict[str, Any]:
        """Put A's original weights back (bit for bit); optionally drop the caches."""
        with self._lock, torch.no_grad():
            state = self._state
            model = self.host.live_model()
            restored = False
            if state.pair is not None and model is not None and state.knows(model):
                dirty = {s: 0.0 for s, v in state.applied.items() if v != 0.0 and s != BASE}
                if dirty:
                    self._write_unet_slots(model.get_submodule(UNET_MODULE), dirty)
                if state.applied.get(BASE, 0.0) != 0.0:
                    try:
                        self._write_text_encoder(model, 0.0)
                    finally:
                        self.host.invalidate_conditioning()
                restored = True
            self._state = self._state.restored()
            freed = 0
            if free_caches:
                freed = self._cache.nbytes()
                self._cache.clear()
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
        with self._lock, torch.no_grad():
            state = self._state
            pair = state.pair
            if pair is None:
                raise Conflict(
                    "no merge pair yet: nothing to save",
                    kind="NoMerge",
                    hint="POST /autombw/v1/merge first; save uses that merge's models",
                )
            if weights is not None:
                w = requested_weights(pair.arch, weights, text_encoder_weight, extrapolation)
            elif state.weights is not None:
                w = state.weights
            else:
                raise ValidationError(
                    "no weights given and no current merge", hint="pass weights: {slot: w}"
                )
            check_choice("dtype", dtype, sorted(DTYPE_NAMES))
            check_choice("format", fmt, list(SUFFIXES))
            own = [("model A", pair.a), ("model B", pair.b)]
            if pair.c is not None:
                own.append(("model C", pair.c))
            loaded = self.host.loaded_checkpoint()
            if loaded is not None:
                own.append(("the loaded checkpoint", loaded))
            suffix = SUFFIXES[fmt]
            target, recipe_path = save_target(
                name, self.host.checkpoint_dir(), suffix=suffix, own=own, overwrite=overwrite
            )
            recipe = Recipe(
                model_a=pair.a.filename,
                model_b=pair.b.filename,
                output_name=target.name[: -len(suffix)],
                weights=w,
                model_c=pair.c.filename if pair.c else None,
                formula=pair.formula,
            )
            size, sha256 = write_merged_checkpoint(
                pair.a.path,
                pair.b.path,
                w,
                target,
                dtype=DTYPE_NAMES[dtype],
                metadata=recipe.safetensors_metadata(),
                fmt=fmt,  # type: ignore[arg-type]  (checked against SUFFIXES above)
                c_path=pair.c.path if pair.c else None,
                lora=self._cache.lora if pair.lora else None,
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

    # --- the pair and the live model ------------------------------------------------------
    def _switch_pair(self, pair: Pair) -> None:
        """Make ``pair`` current. Same A: keep A's originals (a new B, C or formula makes
        every slot that holds some of the old merge stale). New A: restore the old A first,
        start a new cache (keeping B's and C's tensors when they stay)."""
        state, old = self._state, self._state.pair
        if old is not None and same_file(old.a.path, pair.a.path) and old.arch is pair.arch:
            stale = False
            if not same_file(old.b.path, pair.b.path):
                self._cache.b.clear()
                stale = True
            if not _same_c(old, pair):
                self._cache.c.clear()
                stale = True
            self._state = (state.b_changed() if stale else state).with_pair(pair)
            return
        if old is not None and state.knows(self.host.live_model()):
            self.restore()  # leave A's weights as they were before the next pair loads
        cache = TensorCache(device=self._cache.device)
        if old is not None and old.arch is pair.arch:
            if same_file(old.b.path, pair.b.path) and not pair.lora:  # deltas fit one A
                cache.b = self._cache.b
            if old.c is not None and _same_c(old, pair):
                cache.c = self._cache.c
        self._cache = cache
        self._state = self._state.new_pair(pair)

    def _ensure_a_loaded(self) -> torch.nn.Module:
        """The live model, holding A (loaded through the host when it is not); the first time
        the bridge sees this model object, find out what it holds."""
        pair = self._state.pair
        assert pair is not None
        loaded = self.host.loaded_checkpoint()
        just_loaded = False
        if loaded is None or not same_file(loaded.path, pair.a.path):
            just_loaded = True
            self._loading_a = True
            try:
                self.host.load_checkpoint(pair.a)
            finally:
                self._loading_a = False
            loaded = self.host.loaded_checkpoint()
            if loaded is None or not same_file(loaded.path, pair.a.path):
                raise ServerError(
                    f"the WebUI did not load {pair.a.name} (loaded: "
                    f"{loaded.name if loaded else 'nothing'})",
                    kind="LoadFailed",
                    hint="check the WebUI console for the load error",
                )
            self._state = self._state.unknown()
        model = self.host.live_model()
        if model is None:
            raise ServerError("the WebUI has no model loaded", kind="LoadFailed")
        cache = self._cache
        if not cache.slot_keys:
            cache.slot_keys = slot_keys(model.get_submodule(UNET_MODULE).state_dict(), pair.arch)
        if not self._state.knows(model):
            # The live model should hold A's original weights: (re)take them from it, unless
            # a spot check against A's file says otherwise (another merge may still be in the
            # weights, e.g. after the WebUI's "Reload UI" restarted the bridge).
            cache.a.clear()
            unet_ok = just_loaded or unet_matches_file(
                pair.a.path, model, pair.arch, cache.slot_keys
            )
            te_ok = just_loaded or text_encoder_matches_file(pair.a.path, model, pair.arch)
            cache.a_from_file = not (unet_ok and te_ok)
            applied = dict.fromkeys(cache.slot_keys, 0.0 if unet_ok else UNKNOWN)
            applied[BASE] = 0.0 if te_ok else UNKNOWN
            self._state = self._state.verified(model, applied)
        return model

    def _choose_cache_device(self, requested: str, unet: torch.nn.Module) -> torch.device:
        live_device = module_device(unet)
        if requested == "cpu":
            return torch.device("cpu")
        if requested == "cuda":
            if not torch.cuda.is_available():
                raise BadRequest(
                    "cache_device=cuda but this WebUI has no CUDA device",
                    kind="NoCuda",
                    hint="use cache_device auto or cpu",
                )
            return live_device if live_device.type == "cuda" else torch.device("cuda")
        if live_device.type == "cuda":
            unet_bytes = sum(t.numel() * t.element_size() for t in unet.state_dict().values())
            held = self._cache.nbytes(device_type="cuda")
            free, _ = torch.cuda.mem_get_info(live_device)
            pair = self._state.pair  # B's tensors, or a LoRA's float32 deltas: up to 2 copies
            copies = 2 if pair is None or (pair.c is None and not pair.lora) else 3
            need = copies * unet_bytes - held + (1 << 30)
            return live_device if free > need else torch.device("cpu")
        return torch.device("cpu")

    # --- writing into the live model ------------------------------------------------------
    def _write_unet_slots(self, unet: torch.nn.Module, targets: Mapping[str, float]) -> None:
        pair = self._state.pair
        assert pair is not None
        write_unet_slots(unet, pair, self._cache, targets, self._state.applied, self._mark)

    def _write_text_encoder(self, model: torch.nn.Module, w: float) -> None:
        pair = self._state.pair
        assert pair is not None
        write_text_encoder(model, pair, self._cache, w, self._state.applied, self._mark)

    def _mark(self, slot: str, weight: float) -> None:
        """Record what ``slot`` of the live model holds now (`UNKNOWN` while it is written)."""
        self._state = self._state.with_applied(slot, weight)


def _same_c(old: Pair, new: Pair) -> bool:
    if old.c is None or new.c is None:
        return old.c is new.c
    return same_file(old.c.path, new.c.path)


def _ref_json(ref: CheckpointRef) -> dict[str, Any]:
    return {"file": ref.filename, "title": ref.title, "sha256": ref.sha256}
