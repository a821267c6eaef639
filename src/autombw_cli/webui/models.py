"""Typed answers of the A1111 API and of the autombw bridge.

Wire models are pydantic (frozen, unknown fields kept: WebUI versions and forks add fields
freely, and ``.model_extra`` still shows them). ``Txt2ImgResult`` is the decoded value a caller
works with (PIL images), so it is a frozen dataclass rather than a wire model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field


class WireModel(BaseModel):
    """Base of every model read from the network: frozen, extra fields allowed."""

    model_config = ConfigDict(frozen=True, extra="allow", protected_namespaces=())


# --- A1111 ---------------------------------------------------------------------------------
class PingResult(WireModel):
    """``GET /internal/ping`` answered; ``elapsed_s`` is the round trip."""

    elapsed_s: float


class SDModel(WireModel):
    """One entry of ``GET /sdapi/v1/sd-models``. Hashes may be null until first load."""

    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str = ""
    config: str | None = None

    @property
    def file_name(self) -> str:
        """The file's base name (``foo.safetensors``), whatever the server's path separator."""
        return os.path.basename(self.filename.replace("\\", "/"))

    def names(self) -> set[str]:
        """Every name a user or the WebUI may use for this checkpoint."""
        out = {self.title, self.model_name, self.file_name, _strip_hash(self.title)}
        stem, _ext = os.path.splitext(self.file_name)
        out.add(stem)
        return {n for n in out if n}

    def matches(self, name: str) -> bool:
        """True if ``name`` (title, model name, file name with or without extension, or a
        title with its ``[hash]``) refers to this checkpoint."""
        name = name.strip()
        return name in self.names() or _strip_hash(name) in self.names()


def _strip_hash(title: str) -> str:
    """``"foo.safetensors [6ce0161689]"`` -> ``"foo.safetensors"``."""
    title = title.strip()
    if title.endswith("]") and " [" in title:
        return title[: title.rindex(" [")]
    return title


class Sampler(WireModel):
    name: str
    aliases: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)


class ProgressState(WireModel):
    """``state`` of ``/progress`` (A1111's ``shared.state.dict()``)."""

    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class Progress(WireModel):
    """``GET /sdapi/v1/progress``: ``progress`` 0..1, ``eta_relative`` seconds."""

    progress: float = 0.0
    eta_relative: float = 0.0
    state: ProgressState = Field(default_factory=ProgressState)
    textinfo: str | None = None
    current_image: str | None = None

    @property
    def busy(self) -> bool:
        """True while the instance runs (or has queued) a job."""
        return self.state.job_count > 0

    def fingerprint(self) -> tuple[object, ...]:
        """What changes while a generation advances. ``eta_relative`` is left out: A1111
        recomputes it from the wall clock, so it moves even when sampling is stuck."""
        s = self.state
        return (
            s.job,
            s.job_timestamp,
            s.job_count,
            s.job_no,
            s.sampling_step,
            s.sampling_steps,
            round(self.progress, 6),
        )


class Memory(WireModel):
    """``GET /sdapi/v1/memory``: ``ram`` and ``cuda`` statistics as the server reports them."""

    ram: dict[str, Any] = Field(default_factory=dict)
    cuda: dict[str, Any] = Field(default_factory=dict)


class Options(WireModel):
    """``GET /sdapi/v1/options``: the fields autombw reads are typed, the rest is in
    ``model_extra``."""

    sd_model_checkpoint: str | None = None
    samples_format: str | None = None
    sd_checkpoint_hash: str | None = None


class Txt2ImgResponse(WireModel):
    """The raw ``POST /sdapi/v1/txt2img`` answer: base64 images and ``info`` as a JSON string."""

    images: list[str] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    info: str | dict[str, Any] = ""


@dataclass(frozen=True)
class Txt2ImgResult:
    """Decoded txt2img answer.

    ``images``/``raw_images``/``formats`` are the generated images only, in order (a batch grid
    before ``index_of_first_image`` and extension extras after them are in ``extra_images``).
    ``info`` is the parsed ``info`` JSON, ``parameters`` the request as the server read it.
    """

    images: list[Image.Image]
    raw_images: list[bytes]
    formats: list[str]
    info: dict[str, Any]
    parameters: dict[str, Any]
    extra_images: list[Image.Image] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def seeds(self) -> list[int]:
        seeds = self.info.get("all_seeds")
        if isinstance(seeds, list):
            return [int(s) for s in seeds]
        seed = self.info.get("seed")
        return [int(seed)] if seed is not None else []

    @property
    def sd_model_name(self) -> str | None:
        name = self.info.get("sd_model_name")
        return str(name) if name is not None else None


# --- autombw bridge ------------------------------------------------------------------------
class BridgeModelRef(WireModel):
    """A checkpoint the bridge holds: its file (name or path), title and sha256 when known."""

    file: str | None = None
    title: str | None = None
    sha256: str | None = None


class BridgeStatus(WireModel):
    """``GET /autombw/v1/status``.

    ``merge_live`` is False when no merge was made or when the WebUI reloaded its checkpoint
    since (then ``lost_reason`` may say why): a lost merge must never be scored.
    """

    version: str
    bridge_api: int | str | None = None
    host: str | None = None
    webui_version: str | None = None  # the WebUI's own version (A1111: git describe --tags)
    arch: str | None = None
    model_a: BridgeModelRef | None = None
    model_b: BridgeModelRef | None = None
    formula: str | None = None  # bridge_api 2: weighted_sum or add_difference; 3: lora
    model_c: BridgeModelRef | None = None
    loaded_checkpoint: str | None = None
    merge_id: str | None = None
    weights: dict[str, float] | None = None
    text_encoder_weight: float | None = None
    cache_device: str | None = None
    cache_bytes: int = 0
    merge_live: bool = False
    lost_reason: str | None = None


class MergeResult(WireModel):
    """``POST /autombw/v1/merge``: ``merge_id`` identifies the merge now in the WebUI;
    ``changed_blocks`` the slots rewritten (``BASE`` for the text encoder)."""

    merge_id: str
    changed_blocks: list[str] = Field(default_factory=list)
    elapsed_s: float = 0.0
    model_a: str = ""
    model_b: str = ""
    arch: str = ""
    cache_device: str | None = None
    formula: str = "weighted_sum"  # what a bridge before bridge_api 2 always merged
    model_c: str | None = None


class RestoreResult(WireModel):
    """``POST /autombw/v1/restore``: A's original weights are back."""

    restored: bool = True
    freed_bytes: int = 0
    cache_bytes: int = 0


class SaveResult(WireModel):
    """``POST /autombw/v1/save``: where the merged checkpoint was written on the server."""

    name: str
    path: str
    recipe_path: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    elapsed_s: float = 0.0
