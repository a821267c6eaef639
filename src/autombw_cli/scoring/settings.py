"""The ``scorer:`` section of the search config (pydantic v2, ``extra="forbid"``).

The config loader (``autombw_cli.config``) embeds `ScorerConfig` as ``SearchConfig.scorer`` and
resolves relative paths against the config file before building the scorer. Shape::

    scorer:
      name: imagereward          # imagereward | laion | chad | sim | ensemble | <entry point>
      device: auto               # auto (cuda if present, else cpu) | cpu | cuda | cuda:1 ...
      batch_size: 32             # images per forward pass
      precision: auto            # auto (fp16 autocast on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
      compile: false             # torch.compile the forward pass (CUDA; see BENCHMARKS.md)
      paths:                     # all optional; unset = download from the hub and cache
        checkpoint: models/ImageReward.pt
        med_config: models/med_config.json
        tokenizer: models/bert-base-uncased     # folder, or its vocab.txt
        download_root: ~/.cache/ImageReward
        clip: models/ViT-L-14.pt                # laion/chad: OpenAI CLIP ViT-L/14 weights
        head: models/sac+logos+ava1-l14-linearMSE.pth   # laion/chad: the MLP head
      options: {}                # extra keyword arguments for sim / third-party scorers
      tally: arithmetic          # one of the 12 tally types (autombw_cli.scoring.tally)
      sigmoid: false             # map every (reversed) raw score through 1/(1+e^-x) first
      zscore_warmup: 64          # ensemble z-score: images used to fix mean/std
      ensemble:                  # only with name: ensemble
        - {name: imagereward, weight: 1.0, normalize: zscore}
        - {name: laion, weight: 0.5, normalize: zscore, paths: {clip: ..., head: ...}}
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autombw_cli.errors import AutombwError
from autombw_cli.scoring.tally import Tally

__all__ = ["EnsembleMember", "Normalization", "ScorerConfig", "ScorerPaths", "ScorerSpec"]

Precision = Literal["auto", "fp32", "fp16", "bf16"]

# Scorers whose raw scores are positive, so positive-only tallies work without a sigmoid.
POSITIVE_SCORERS = frozenset({"laion", "chad", "aesthetic"})


class Normalization(StrEnum):
    """How an ensemble member's raw scores are scaled before they are weighted and summed."""

    RAW = "raw"
    SIGMOID = "sigmoid"
    ZSCORE = "zscore"


def _check_device(v: str) -> str:
    v = v.strip().lower()
    head, _, index = v.partition(":")
    if head not in {"auto", "cpu", "cuda", "mps"} or (index and not index.isdigit()):
        raise ValueError(f"device {v!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return v


class ScorerPaths(BaseModel):
    """Local weight files; every one optional (unset: fetched from the hub and cached)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: Path | None = Field(None, description="ImageReward.pt (a plain state dict)")
    med_config: Path | None = Field(None, description="ImageReward's med_config.json")
    tokenizer: Path | None = Field(
        None, description="bert-base-uncased tokenizer folder or its vocab.txt"
    )
    download_root: Path | None = Field(
        None, description="where hub downloads are cached (default ~/.cache/ImageReward)"
    )
    clip: Path | None = Field(None, description="OpenAI CLIP ViT-L/14 weights (laion, chad)")
    head: Path | None = Field(None, description="aesthetic MLP head .pth (laion, chad)")


class ScorerSpec(BaseModel):
    """One scorer: which, where it runs and where its weights are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "imagereward"
    device: str = "auto"
    batch_size: int = Field(32, ge=1, le=4096)
    precision: Precision = "auto"
    compile: bool = False
    paths: ScorerPaths = ScorerPaths()
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _lower(cls, v: str) -> str:
        v = v.strip().lower()
        if not v:
            raise ValueError("scorer name is empty")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return _check_device(v)


class EnsembleMember(ScorerSpec):
    """A scorer inside an ensemble, with its weight and normalisation."""

    weight: float = 1.0
    normalize: Normalization = Normalization.RAW
    device: str = "inherit"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        return v if v == "inherit" else _check_device(v)


class ScorerConfig(ScorerSpec):
    """The ``scorer:`` config section: the scorer plus how per-image scores become one score."""

    tally: Tally = Tally.ARITHMETIC
    sigmoid: bool = False
    zscore_warmup: int = Field(64, ge=2)
    ensemble: list[EnsembleMember] = Field(default_factory=list)

    @field_validator("tally", mode="before")
    @classmethod
    def _tally(cls, v: object) -> object:
        if isinstance(v, str) and not isinstance(v, Tally):
            try:
                return Tally.parse(v)
            except AutombwError as exc:
                raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ScorerConfig:
        if self.name == "ensemble" and not self.ensemble:
            raise ValueError("name: ensemble needs a non-empty 'ensemble' list of members")
        if self.ensemble and self.name != "ensemble":
            raise ValueError(
                f"'ensemble' members are given but name is {self.name!r}; use name: ensemble"
            )
        if any(m.name == "ensemble" for m in self.ensemble):
            raise ValueError("an ensemble member cannot itself be an ensemble")
        if self.tally.needs_positive and not self.sigmoid and not self.scores_positive():
            raise ValueError(
                f"tally {self.tally.value!r} needs positive scores, but scorer {self.name!r} "
                "gives raw scores that can be negative; set sigmoid: true (as auto-MBW-rt did) "
                "or choose arithmetic, cubic, median, min, max or mid-range"
            )
        return self

    def scores_positive(self) -> bool:
        """Whether every combined per-image score is known to be positive."""
        if self.name == "ensemble":
            return all(
                m.weight >= 0
                and (
                    m.normalize is Normalization.SIGMOID
                    or (m.normalize is Normalization.RAW and m.name in POSITIVE_SCORERS)
                )
                for m in self.ensemble
            ) and any(m.weight > 0 for m in self.ensemble)
        return self.name in POSITIVE_SCORERS

    def member_specs(self) -> list[EnsembleMember]:
        """Ensemble members with ``device: inherit`` replaced by this section's device."""
        return [
            m.model_copy(update={"device": self.device}) if m.device == "inherit" else m
            for m in self.ensemble
        ]
