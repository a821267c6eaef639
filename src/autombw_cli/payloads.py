"""Payloads (what each candidate merge renders) and their one-time wildcard expansion.

A payload file is an auto-MBW-rt payload as it is (JSON, or YAML): A1111 txt2img fields
(DOMAIN.md §4, §6) plus our own ``wildcard_type``, ``reverse_scoring`` and ``score_weight``.
Known fields are type-checked; any other field is passed to txt2img untouched.

`expand_payloads` runs once per run, before the first evaluation, so every candidate sees the
same prompts and seeds (a low-noise objective):

- ``wildcard_type: none``: one prompt, the payload as written (``n_iter`` images per call).
- ``random`` / ``jinja2``: ``n_iter`` prompt variants, each rendered with ``n_iter: 1``; the
  generators are seeded from the run seed and the payload name, so the same run seed gives the
  same prompts.
- ``combinatorial``: up to ``n_iter`` combinations, each with ``n_iter: 1``.

Prompt and negative-prompt variants are zipped as auto-MBW-rt does; when the negative prompt
has fewer variants (e.g. no wildcards, combinatorial gives one), its variants repeat instead
of silently dropping prompts. ``seed: -1`` becomes a fixed seed per expanded prompt, derived
from the run seed, and is reported as derived.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autombw_cli.errors import OutputExistsError, PayloadError
from autombw_cli.yamlio import raise_validation_error, read_document

WildcardType = Literal["none", "random", "combinatorial", "jinja2"]
WILDCARD_TYPES: tuple[str, ...] = ("none", "random", "combinatorial", "jinja2")
OWN_FIELDS = frozenset({"name", "score_weight", "reverse_scoring", "wildcard_type"})
DEFAULT_SEED = 1  # auto-MBW-rt's default; A1111's own default (-1) would make scores noisy
MAX_SEED = 2**31 - 1
_WILDCARD_SYNTAX = re.compile(r"__[^_\s][^\s]*?__|\{[^{}]*\|[^{}]*\}")


class Payload(BaseModel):
    """One payload: A1111 txt2img fields (known ones typed, others kept) plus our own fields."""

    model_config = ConfigDict(extra="allow", frozen=True)

    # our own fields (never sent to the WebUI)
    name: str = Field("payload", min_length=1, description="Defaults to the file name")
    score_weight: float = Field(1.0, ge=0, description="Weight of this payload in the tally")
    reverse_scoring: bool = Field(False, description="Negate the raw scores (prefer worse)")
    wildcard_type: WildcardType = "none"
    # A1111 txt2img fields autombw reads or checks
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = Field(DEFAULT_SEED, ge=-1)
    subseed: int | None = Field(None, ge=-1)
    subseed_strength: float | None = Field(None, ge=0, le=1)
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=1000)
    steps: int | None = Field(None, ge=1, le=1000)
    cfg_scale: float | None = Field(None, ge=0, le=100)
    width: int | None = Field(None, ge=64, le=16384)
    height: int | None = Field(None, ge=64, le=16384)
    enable_hr: bool | None = None
    denoising_strength: float | None = Field(None, ge=0, le=1)
    hr_scale: float | None = Field(None, gt=0, le=16)
    hr_upscaler: str | None = None
    hr_second_pass_steps: int | None = Field(None, ge=0)
    hr_resize_x: int | None = Field(None, ge=0)
    hr_resize_y: int | None = Field(None, ge=0)
    firstphase_width: int | None = Field(None, ge=0)
    firstphase_height: int | None = Field(None, ge=0)
    restore_faces: bool | None = None
    tiling: bool | None = None
    styles: list[str] | None = None
    override_settings: dict[str, Any] | None = None
    send_images: bool | None = None
    save_images: bool | None = None

    @field_validator("send_images")
    @classmethod
    def _must_send(cls, v: bool | None) -> bool | None:
        if v is False:
            raise ValueError("must be true: autombw scores the images the WebUI sends back")
        return v

    @property
    def images_per_call(self) -> int:
        return self.batch_size * self.n_iter

    def txt2img_fields(self) -> dict[str, Any]:
        """The fields of the file that go to txt2img (set ones only; ours stripped)."""
        data = self.model_dump(exclude_unset=True)
        return copy.deepcopy({k: v for k, v in data.items() if k not in OWN_FIELDS})

    def warnings(self) -> list[str]:
        """Valid but suspicious: a misspelt field passed through, wildcards left unexpanded."""
        out: list[str] = []
        known = [k for k in type(self).model_fields if k != "name"]
        for key in self.model_extra or {}:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
            if close:
                out.append(f"field {key!r} is not one autombw knows; did you mean {close[0]!r}?")
        if self.wildcard_type == "none":
            for field in ("prompt", "negative_prompt"):
                if _WILDCARD_SYNTAX.search(getattr(self, field)):
                    out.append(
                        f"{field} has wildcard syntax but wildcard_type is none: it is sent "
                        "as written (set wildcard_type: random or combinatorial to expand it)"
                    )
        if self.seed == -1:
            out.append("seed is -1: a fixed seed per prompt is derived from the run seed")
        return out


@dataclass(frozen=True)
class ExpandedPrompt:
    """One concrete txt2img call every candidate renders (same prompt, same seed)."""

    payload_name: str
    index: int  # position within its payload's expansion
    prompt: str
    negative_prompt: str
    seed: int
    seed_derived: bool  # True when the payload said seed -1 and this seed was derived
    payload: Payload  # the variant: prompt, negative prompt, seed and n_iter filled in

    @property
    def key(self) -> str:
        return f"{self.payload_name}#{self.index}"

    @property
    def score_weight(self) -> float:
        return self.payload.score_weight

    @property
    def reverse_scoring(self) -> bool:
        return self.payload.reverse_scoring

    @property
    def images(self) -> int:
        return self.payload.images_per_call

    def txt2img_body(self) -> dict[str, Any]:
        """The exact JSON body for ``POST /sdapi/v1/txt2img`` (a fresh copy each call)."""
        body = self.payload.txt2img_fields()
        body["prompt"] = self.prompt
        body["negative_prompt"] = self.negative_prompt
        body["seed"] = self.seed
        body["n_iter"] = self.payload.n_iter
        body.setdefault("send_images", True)
        return body


# --- loading ----------------------------------------------------------------------------
def load_payload(path: Path | str) -> Payload:
    """Read a payload file (JSON or YAML); PayloadError naming the file, line and field."""
    p = Path(path)
    doc = read_document(p, error_cls=PayloadError, what="payload")
    if not isinstance(doc.data, dict):
        raise PayloadError(
            f"{p}: a payload is a mapping of txt2img fields, got "
            f"{type(doc.data).__name__ if doc.data is not None else 'an empty file'}"
        )
    data = {"name": p.stem, **doc.data}
    try:
        return Payload.model_validate(data)
    except ValidationError as exc:
        raise_validation_error(exc, doc, Payload, error_cls=PayloadError)


def load_payloads(paths: Sequence[Path | str]) -> list[Payload]:
    """Load several payloads; their names (file stems) must be distinct."""
    payloads: list[Payload] = []
    seen: dict[str, Path] = {}
    for path in paths:
        payload = load_payload(path)
        if payload.name in seen:
            raise PayloadError(
                f"{path}: payload name {payload.name!r} is also used by {seen[payload.name]}",
                hint="rename one file, or set a distinct `name:` field in it",
            )
        seen[payload.name] = Path(path)
        payloads.append(payload)
    return payloads


def new_payload(**fields: Any) -> Payload:
    """A payload from field values (``autombw payload new``); PayloadError naming the field."""
    try:
        return Payload.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise PayloadError(f"invalid payload: {problems}") from None


def default_wildcard_dir(payload_file: Path | str) -> Path | None:
    """``wildcards/`` beside a payload file, when that folder exists."""
    folder = Path(payload_file).parent / "wildcards"
    return folder if folder.is_dir() else None


def write_payload(payload: Payload, path: Path | str, *, force: bool = False) -> Path:
    """Write a payload as JSON (or YAML for .yaml/.yml) atomically; refuse to overwrite."""
    from autombw_cli.atomic import atomic_write_text

    p = Path(path)
    if p.exists() and not force:
        raise OutputExistsError(f"{p} exists", hint="pass --force to overwrite it")
    data = payload.model_dump(exclude_unset=True, exclude={"name"})
    if p.suffix.lower() in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(p, text)
    return p


# --- expansion --------------------------------------------------------------------------
class _MissingWildcard(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _strict_wildcard_manager(folder: Path | None) -> Any:
    from dynamicprompts.wildcards.wildcard_manager import WildcardManager

    class StrictWildcardManager(WildcardManager):
        """Raises on a wildcard with no values instead of leaving ``__name__`` in the prompt."""

        def get_values(self, wildcard: str) -> Any:
            values = super().get_values(wildcard)
            if len(values) == 0:
                raise _MissingWildcard(wildcard)
            return values

    return StrictWildcardManager(folder)


def derive_seed(run_seed: int, *parts: object) -> int:
    """A stable seed in 0..2**31-1 from the run seed and labels (payload name, index...)."""
    text = ":".join(str(p) for p in (run_seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & MAX_SEED


@contextlib.contextmanager
def _seeded_global_random(seed: int) -> Iterator[None]:
    """Jinja templates call the `random` module directly: seed it, then restore its state."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _template_errors() -> tuple[type[Exception], ...]:
    """What dynamicprompts raises for a bad template (its parser's and Jinja's errors)."""
    import jinja2
    import pyparsing
    from dynamicprompts.generators.promptgenerator import GeneratorException

    return (pyparsing.ParseBaseException, GeneratorException, jinja2.TemplateError)


def _variants(payload: Payload, text: str, which: str, folder: Path | None, seed: int) -> list[str]:
    from dynamicprompts.generators import (
        CombinatorialPromptGenerator,
        JinjaGenerator,
        RandomPromptGenerator,
    )

    wm = _strict_wildcard_manager(folder)
    n = payload.n_iter
    gen_seed = derive_seed(seed, payload.name, which)
    if payload.wildcard_type == "random":
        return RandomPromptGenerator(wildcard_manager=wm, seed=gen_seed).generate(text, n)
    if payload.wildcard_type == "combinatorial":
        return CombinatorialPromptGenerator(wildcard_manager=wm).generate(text, n)
    import jinja2

    jinja2.Environment().parse(text)  # a syntax error raises here, before dynamicprompts logs it
    jinja = JinjaGenerator(wildcard_manager=wm)
    # its built-in random generator is unseeded: replace it with a seeded one
    jinja._generators["random"] = RandomPromptGenerator(wildcard_manager=wm, seed=gen_seed)
    with _seeded_global_random(gen_seed):
        return jinja.generate(text, n)


def expand_payload(payload: Payload, wildcard_dir: Path | None, seed: int) -> list[ExpandedPrompt]:
    """The concrete prompts of one payload (see the module docstring)."""
    if payload.wildcard_type == "none":
        pairs = [(payload.prompt, payload.negative_prompt)]
    else:
        try:
            prompts = _variants(payload, payload.prompt, "prompt", wildcard_dir, seed)
            negatives = _variants(payload, payload.negative_prompt, "negative", wildcard_dir, seed)
        except _MissingWildcard as exc:
            where = f"in {wildcard_dir}" if wildcard_dir else "(no wildcard folder is set)"
            raise PayloadError(
                f"payload {payload.name}: wildcard __{exc.name}__ not found {where}",
                hint=f"create {exc.name}.txt (one value per line) in the wildcard folder"
                if wildcard_dir
                else "set payloads.wildcards in the config (or --wildcards)",
            ) from None
        except _template_errors() as exc:
            raise PayloadError(
                f"payload {payload.name}: cannot expand {payload.wildcard_type} wildcards: {exc}",
                hint="check the braces/wildcard syntax of prompt and negative_prompt",
            ) from exc
        if not prompts:
            raise PayloadError(f"payload {payload.name}: wildcard expansion gave no prompt")
        negatives = negatives or [payload.negative_prompt]
        pairs = [(p, negatives[i % len(negatives)]) for i, p in enumerate(prompts)]
    n_iter = payload.n_iter if payload.wildcard_type == "none" else 1
    out: list[ExpandedPrompt] = []
    for i, (prompt, negative) in enumerate(pairs):
        derived = payload.seed == -1
        s = derive_seed(seed, payload.name, i, "seed") if derived else payload.seed
        variant = payload.model_copy(
            update={"prompt": prompt, "negative_prompt": negative, "seed": s, "n_iter": n_iter}
        )
        out.append(ExpandedPrompt(payload.name, i, prompt, negative, s, derived, variant))
    return out


def expand_payloads(
    payloads: Sequence[Payload], wildcard_dir: Path | None, seed: int
) -> list[ExpandedPrompt]:
    """Expand every payload once, in order; the result is the same for the same inputs."""
    out: list[ExpandedPrompt] = []
    for payload in payloads:
        out.extend(expand_payload(payload, wildcard_dir, seed))
    return out
