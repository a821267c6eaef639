"""The ``models``, ``instances``, ``payloads`` and ``outputs`` sections of the search config.

(``scorer`` is `autombw_cli.scoring.settings.ScorerConfig`; ``search`` is in `search_section`.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from autombw_cli.blocks import Arch
from autombw_cli.config.fields import (
    ExistingDir,
    ExistingFile,
    ResolvedPath,
    StrictModel,
    not_found,
    switch_shorthand,
    validation_context,
)
from autombw_cli.errors import ConfigError
from autombw_cli.recipe import Formula
from autombw_cli.webui.bridge.names import (
    CHECKPOINT_SUFFIXES,
    NameError_,
    check_output_name,
    checkpoint_stem,
)
from autombw_cli.webui.timeouts import ClientTimeouts, RetryPolicy
from autombw_cli.yamlio import FieldError

PAYLOAD_SUFFIXES = (".json", ".yaml", ".yml")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- models -----------------------------------------------------------------------------
class ModelsConfig(StrictModel):
    """The checkpoints to merge (as the WebUI lists them), the formula and the merged model's
    name: ``formula: weighted_sum`` (A + (B - A)·w, the default), ``add_difference``
    (A + (B - C)·w, with model ``c``, B's base) or ``lora`` (A + w·delta(B): B is a LoRA file
    of the WebUI's Lora folder, each weight its strength in that block)."""

    a: str = Field(min_length=1, description="Model A: checkpoint title, name or file name")
    b: str = Field(
        min_length=1,
        description="Model B: checkpoint title, name or file name (formula lora: the LoRA, "
        "as the WebUI's Lora folder names it)",
    )
    output: str = Field(
        "autombw-merge",
        min_length=1,
        description="Name of the merged model (no extension); never A's or B's name",
    )
    arch: Arch = Field(Arch.SD1, description="Architecture of A and B: sd1, sd2 or sdxl")
    a_file: ExistingFile | None = Field(None, description="Local file of A (offline merge)")
    b_file: ExistingFile | None = Field(None, description="Local file of B (offline merge)")
    formula: Formula = Field(
        Formula.WEIGHTED_SUM,
        description="weighted_sum: A + (B - A)*w; add_difference: A + (B - C)*w (needs c); "
        "lora: A + w*delta(B), B a LoRA and w its strength per block",
    )
    c: str | None = Field(
        None,
        min_length=1,
        description="Model C, B's base (e.g. SD1.5), for formula add_difference only",
    )
    c_file: ExistingFile | None = Field(None, description="Local file of C (offline merge)")

    @field_validator("output")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if re.search(r"[\\/]", v) or v in (".", ".."):
            raise ValueError(f"{v!r} must be a plain name, not a path")
        if v.lower().endswith(CHECKPOINT_SUFFIXES):
            raise ValueError(
                f"{v!r}: give the name without extension (outputs.format picks .safetensors "
                "or .ckpt)"
            )
        try:  # the bridge's own rule, so a name that passes here is one the bridge accepts
            check_output_name(v)
        except NameError_ as exc:
            raise ValueError(f"{exc} (the WebUI bridge would refuse to save it)") from None
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A weighted sum's models section dumps as it always did (no formula, c, c_file), so
        run folders of weighted-sum searches stay readable by older autombw versions."""
        data = handler(self)
        if self.formula is Formula.WEIGHTED_SUM:
            for name in ("formula", "c", "c_file"):
                data.pop(name, None)
        return data

    @model_validator(mode="after")
    def _different(self) -> ModelsConfig:
        if self.a == self.b:
            raise FieldError(("b",), f"model B is the same as model A ({self.a!r})")
        self._check_c()
        out = checkpoint_stem(self.output)
        roles = [("A", self.a, self.a_file), ("B", self.b, self.b_file)]
        if self.c is not None:
            roles.append(("C", self.c, self.c_file))
        for role, name, file in roles:
            stems = {checkpoint_stem(name)} | ({checkpoint_stem(file.name)} if file else set())
            if out in stems:
                raise FieldError(
                    ("output",),
                    f"{self.output!r} names model {role} ({name}): the final merge would "
                    f"overwrite model {role}; choose another name, e.g. {self.output}-merge",
                )
        return self

    def _check_c(self) -> None:
        """Model C exactly when the formula is add_difference, and not B itself."""
        if self.formula is Formula.ADD_DIFFERENCE:
            if self.c is None:
                raise FieldError(
                    ("c",),
                    "formula add_difference (A + (B - C)*w) needs model C: B's base model, "
                    "e.g. the SD1.5 checkpoint B was fine-tuned from",
                )
            if self.c == self.b:
                raise FieldError(("c",), f"model C is model B ({self.b!r}): B - C would be zero")
            return
        for name in ("c", "c_file"):
            if getattr(self, name) is not None:
                raise FieldError(
                    (name,),
                    f"models.{name} is only used by formula add_difference, but the formula "
                    f"is {self.formula.value}; set formula: add_difference or remove {name}",
                )


# --- instances --------------------------------------------------------------------------
class BasicAuthConfig(StrictModel):
    """HTTP basic auth (A1111 ``--api-auth``), read from environment variables at run time."""

    user_env: str = Field(description="Name of the environment variable holding the user")
    password_env: str = Field(description="Name of the environment variable holding the password")

    @field_validator("user_env", "password_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not _ENV_NAME.fullmatch(v):
            raise ValueError(
                f"{v!r} is not an environment variable name (put the NAME of a variable "
                "here, never the secret itself)"
            )
        return v

    def missing(self, environ: Mapping[str, str] | None = None) -> list[str]:
        env = os.environ if environ is None else environ
        return [n for n in (self.user_env, self.password_env) if not env.get(n)]

    def resolve(
        self, environ: Mapping[str, str] | None = None, *, instance: str = "instance"
    ) -> tuple[str, str]:
        """The (user, password) pair; ConfigError naming the unset variables."""
        env = os.environ if environ is None else environ
        missing = self.missing(env)
        if missing:
            raise ConfigError(
                f"{instance}: basic auth needs environment variable(s) {', '.join(missing)}",
                hint=f"export {missing[0]}=... before running autombw",
            )
        return env[self.user_env], env[self.password_env]


def _check_url(v: str) -> str:
    from urllib.parse import urlsplit

    from autombw_cli.redact import redact_url

    text = v.strip()
    parts = urlsplit(text)
    v = redact_url(v)  # messages never show credentials or a query (a token)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{v!r} needs a scheme and host, e.g. http://127.0.0.1:7860")
    if parts.username or parts.password:
        raise ValueError(
            "credentials in the URL are not allowed; use auth: {user_env, password_env}"
        )
    if not parts.hostname:
        raise ValueError(f"{v!r} has no host")
    try:
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise ValueError(f"{v!r} has an invalid port (expected 1..65535)") from None
    if parts.port == 0:
        raise ValueError(f"{v!r} has an invalid port (expected 1..65535)")
    if parts.query or parts.fragment:
        raise ValueError(f"{v!r} must not have a query or fragment")
    return text.rstrip("/")


class WebUIInstance(StrictModel):
    """One A1111 WebUI started with ``--api`` (and the autombw bridge extension)."""

    url: Annotated[str, AfterValidator(_check_url)] = Field(
        description="Base URL, e.g. http://127.0.0.1:7860"
    )
    label: str | None = Field(None, min_length=1, description="Name shown in progress and logs")
    auth: BasicAuthConfig | None = None
    timeouts: ClientTimeouts = Field(
        default_factory=ClientTimeouts, description="Client timeouts in seconds (stall: 180)"
    )
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy, description="Retries of connection failures"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        from urllib.parse import urlsplit

        return urlsplit(self.url).netloc


class SimulatedInstances(StrictModel):
    """``simulate: N`` simulated WebUIs on loopback (quickstart, tests, no GPU needed)."""

    simulate: int = Field(ge=1, le=64, description="Number of simulated WebUI instances")
    arch: Arch | None = Field(None, description="Architecture simulated (default: models.arch)")
    latency: float = Field(
        0.0, ge=0, le=3600, allow_inf_nan=False, description="Seconds each simulated image takes"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword options passed to the simulator"
    )


def _instances_form(value: Any) -> str | None:
    if isinstance(value, Mapping | SimulatedInstances):
        return "instances:simulate"
    if isinstance(value, list | tuple):
        return "instances:webui"
    return None


Instances = Annotated[
    Annotated[list[WebUIInstance], Field(min_length=1), Tag("instances:webui")]
    | Annotated[SimulatedInstances, Tag("instances:simulate")],
    Discriminator(
        _instances_form,
        custom_error_type="instances_form",
        custom_error_message=(
            "expected a list of WebUI instances (- url: http://127.0.0.1:7860) "
            "or a mapping {simulate: N}"
        ),
    ),
]


# --- payloads ---------------------------------------------------------------------------
class PayloadsConfig(StrictModel):
    """Payload files (auto-MBW-rt JSON or YAML) and the wildcard folder."""

    files: list[ResolvedPath] = Field(
        min_length=1, description="Payload files, or folders whose *.json/*.yaml files are used"
    )
    wildcards: ExistingDir | None = Field(None, description="Folder of __wildcard__ files")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str | list):
            return {"files": [data] if isinstance(data, str) else data}
        return data

    @field_validator("files")
    @classmethod
    def _expand_folders(cls, files: list[Path], info: ValidationInfo) -> list[Path]:
        check = validation_context(info).get("check_paths", True)
        out: list[Path] = []
        for i, p in enumerate(files):
            if p.is_dir():
                found = sorted(f for f in p.iterdir() if f.suffix.lower() in PAYLOAD_SUFFIXES)
                if not found:
                    raise FieldError((i,), f"folder {p} holds no .json/.yaml payload files")
                out.extend(found)
            elif check and not p.is_file():
                raise FieldError((i,), not_found("payload file", p))
            else:
                out.append(p)
        return out


# --- outputs ----------------------------------------------------------------------------
def _save_images(value: Any) -> Any:
    if value is True:
        return "all"
    if value is False:
        return "none"
    return value


class ValidateConfig(StrictModel):
    """After the search: render the best ``top`` candidates again with ``seeds`` fresh seed
    sets; the final merge takes the best validated one."""

    top: int = Field(3, ge=1, le=5, description="Best distinct candidates to validate")
    seeds: int = Field(2, ge=1, le=16, description="Fresh seed sets (each prompt once per set)")


class OutputsConfig(StrictModel):
    """Where the run writes, and the final merge."""

    run_dir: ResolvedPath = Field(
        Path("runs"), validate_default=True, description="Folder holding one folder per run"
    )
    run_name: str | None = Field(None, description="Run folder name (default: output + time)")
    save_images: Annotated[Literal["none", "best", "all"], BeforeValidator(_save_images)] = Field(
        "best", description="Keep no images, the best evaluation's, or every evaluation's"
    )
    image_format: Literal["png", "jpeg", "webp"] = "png"
    final_merge: bool = Field(True, description="Save the best merge as a checkpoint at the end")
    merge_via: Literal["bridge", "offline"] = Field(
        "bridge", description="bridge: the WebUI saves it; offline: autombw merges the files"
    )
    format: Literal["safetensors", "ckpt"] = Field(
        "safetensors",
        description="The final checkpoint: safetensors, or ckpt (a torch pickle of a state_dict)",
    )
    dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    keep_merge_loaded: bool = Field(
        False,
        description="Leave the last merge and the bridge's caches in the WebUIs after the "
        "search (default: every instance gets plain model A back and the caches are freed)",
    )
    overwrite: bool = Field(
        False,
        description="Replace an existing checkpoint named models.output (and its recipe "
        "files); off: the final merge takes the first free name, e.g. <output>-2",
    )
    validation: Annotated[ValidateConfig | None, BeforeValidator(switch_shorthand("top"))] = Field(
        None,
        description="Re-render the top candidates with fresh seeds after the search; the "
        "final merge uses the validated winner (off by default; true, a number of candidates, "
        "or {top, seeds})",
    )

    @field_validator("run_name")
    @classmethod
    def _plain(cls, v: str | None) -> str | None:
        if v is not None and (not re.fullmatch(r"[\w.+-]+", v) or v in (".", "..")):
            raise ValueError(f"{v!r}: use letters, digits, _ . + - only")
        return v


def check_unique_instances(instances: list[WebUIInstance]) -> None:
    seen_url: dict[str, int] = {}
    seen_name: dict[str, int] = {}
    for i, inst in enumerate(instances):
        if inst.url in seen_url:
            raise FieldError(
                ("instances", i, "url"),
                f"{inst.url} is listed twice (also item {seen_url[inst.url]})",
            )
        if inst.name in seen_name:
            raise FieldError(
                ("instances", i, "label"),
                f"two instances are named {inst.name!r}; give each a distinct label",
            )
        seen_url[inst.url] = i
        seen_name[inst.name] = i
