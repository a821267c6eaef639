"""Payloads (what each candidate merge renders) and their one-time wildcard expansion.

A payload file is an auto-MBW-rt payload as it is (JSON, or YAML): A1111 txt2img fields
(DOMAIN.md §4, §6) plus our own ``wildcard_type``, ``reverse_scoring`` and ``score_weight``.
Known fields are type-checked; any other field is passed to txt2img untouched.

`expand_payloads` runs once per run, before the first evaluation, so every candidate sees the
same prompts and seeds (a low-noise objective):

- ``wildcard_type: none``: one prompt, the payload as written (``n_iter`` images per call).
- ``random`` / ``jinja2``: ``n_iter`` prompt variants, each rendered with ``n_iter: 1`` (random
  ones distinct while the wildcards allow it: `_distinct_pairs`); the generators are seeded from
  the run seed and the payload name, so the same run seed gives the same prompts.
- ``combinatorial``: up to ``n_iter`` combinations, each with ``n_iter: 1``.

Prompt and negative-prompt variants are zipped as auto-MBW-rt does; when the negative prompt
has fewer variants (e.g. no wildcards, combinatorial gives one), its variants repeat instead
of silently dropping prompts. ``seed: -1`` becomes a fixed seed per expanded prompt, derived
from the run seed, and is reported as derived.

Payload files are shared between strangers, so expansion runs no code from them: jinja2
templates render in a sandbox in a child process (see `_render_jinja_sandboxed`), and a
wildcard that refers back to itself is refused by name (`_check_wildcard_nesting`).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import json
import logging
import math
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from autombw_cli.errors import OutputExistsError, PayloadError
from autombw_cli.search.prompt import PromptSpec
from autombw_cli.yamlio import raise_validation_error, read_document

log = logging.getLogger(__name__)

WildcardType = Literal["none", "random", "combinatorial", "jinja2"]
WILDCARD_TYPES: tuple[str, ...] = ("none", "random", "combinatorial", "jinja2")
OWN_FIELDS = frozenset({"name", "score_weight", "reverse_scoring", "wildcard_type"})
# Every field of AUTOMATIC1111 1.10.1's txt2img request (StableDiffusionProcessing and
# StableDiffusionProcessingTxt2Img init fields, plus what modules/api/models.py adds): a payload
# exported from A1111 carries them; only a name outside this set can be a typo.
A1111_TXT2IMG_FIELDS = frozenset(
    [
        "prompt",
        "negative_prompt",
        "styles",
        "seed",
        "subseed",
        "subseed_strength",
        "seed_resize_from_h",
        "seed_resize_from_w",
        "seed_enable_extras",
        "sampler_name",
        "scheduler",
        "batch_size",
        "n_iter",
        "steps",
        "cfg_scale",
        "width",
        "height",
        "restore_faces",
        "tiling",
        "do_not_save_samples",
        "do_not_save_grid",
        "eta",
        "denoising_strength",
        "s_min_uncond",
        "s_churn",
        "s_tmax",
        "s_tmin",
        "s_noise",
        "override_settings",
        "override_settings_restore_afterwards",
        "sampler_index",
        "refiner_checkpoint",
        "refiner_switch_at",
        "disable_extra_networks",
        "firstpass_image",
        "comments",
        "enable_hr",
        "firstphase_width",
        "firstphase_height",
        "hr_scale",
        "hr_upscaler",
        "hr_second_pass_steps",
        "hr_resize_x",
        "hr_resize_y",
        "hr_checkpoint_name",
        "hr_sampler_name",
        "hr_scheduler",
        "hr_prompt",
        "hr_negative_prompt",
        "force_task_id",
        "script_name",
        "script_args",
        "send_images",
        "save_images",
        "alwayson_scripts",
        "infotext",
    ]
)
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
    _source: Path | None = PrivateAttr(None)  # the file it was read from, for error messages

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
            if key in A1111_TXT2IMG_FIELDS:
                continue
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


def _txt2img_body(variant: Payload) -> dict[str, Any]:
    """The exact JSON body for ``POST /sdapi/v1/txt2img`` of one expanded prompt."""
    body = variant.txt2img_fields()
    body["prompt"] = variant.prompt
    body["negative_prompt"] = variant.negative_prompt
    body["seed"] = variant.seed
    body["n_iter"] = variant.n_iter
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
        payload = Payload.model_validate(data)
    except ValidationError as exc:
        raise_validation_error(exc, doc, Payload, error_cls=PayloadError)
    payload._source = p
    return payload


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


# --- wildcard references: cycles and depth ----------------------------------------------
MAX_WILDCARD_DEPTH = 16  # nesting of wildcards inside wildcard files (a -> b -> c ...)
_WILDCARD_REF = re.compile(r"__([^_\s{}|][^\s{}|]*?)__")
_JINJA_WILDCARD_REF = re.compile(r"wildcard\(\s*(['\"])([^'\"]+)\1\s*\)")


class _WildcardLoop(Exception):
    def __init__(self, chain: list[str], too_deep: bool = False) -> None:
        super().__init__(" -> ".join(chain))
        self.chain = chain
        self.too_deep = too_deep


def _wildcard_refs(text: str, jinja: bool) -> list[str]:
    """Wildcard names ``text`` uses: ``__name__``, or in a jinja2 template ``wildcard('name')``
    (jinja2 output is not parsed for ``__name__`` again)."""
    if jinja:
        names = [m.group(2) for m in _JINJA_WILDCARD_REF.finditer(text)]
    else:
        names = [m.group(1) for m in _WILDCARD_REF.finditer(text)]
    return list(dict.fromkeys(names))


def _check_wildcard_nesting(wm: Any, text: str, jinja: bool) -> None:
    """Refuse a wildcard that refers back to itself (a.txt holding ``__a__``, a -> b -> a) or
    that nests deeper than MAX_WILDCARD_DEPTH: dynamicprompts would recurse until Python's
    recursion limit (a RecursionError). Static: a reference counts even inside a variant."""
    done: set[str] = set()

    def visit(name: str, chain: list[str]) -> None:
        if name in chain:
            raise _WildcardLoop([*chain[chain.index(name) :], name])
        if len(chain) >= MAX_WILDCARD_DEPTH:
            raise _WildcardLoop([*chain, name], too_deep=True)
        if name in done:
            return
        values = wm.get_values(name)  # StrictWildcardManager: raises when there is none
        for value in getattr(values, "string_values", values):
            for ref in _wildcard_refs(str(value), jinja=False):
                visit(ref, [*chain, name])
        done.add(name)

    for ref in _wildcard_refs(text, jinja):
        visit(ref, [])


def _wildcard_file(folder: Path | None, name: str) -> str:
    """The file a wildcard name most likely comes from (for messages)."""
    if folder is not None:
        for suffix in (".txt", ".json", ".yaml", ".yml"):
            if (folder / f"{name}{suffix}").is_file():
                return str(folder / f"{name}{suffix}")
    return f"{name}.txt"


# --- jinja2: a sandbox in a child process -----------------------------------------------
# A payload file is shared between strangers: a jinja2 template must not run code. Templates
# render in jinja2's ImmutableSandboxedEnvironment (no ``__globals__``/``__class__``/``_x``
# attributes, no mutating methods, ``range`` capped at 100000 items) with only dynamicprompts'
# functions as globals, and with bounded ``*``/``**``/``+``/``%``/calls. Resources are bounded
# by rendering in a child process: a time limit, an address-space limit (Linux) and a cap on
# the text a template may produce. dynamicprompts' own JinjaGenerator uses a plain Environment.
JINJA_TIMEOUT_S = 60.0
JINJA_MEMORY_BYTES = 1 << 30  # address space the child may add to what it starts with
MAX_TEMPLATE_TEXT = 100_000  # characters of a prompt, or items of a string/list a template makes
MAX_INT_BITS = 4096  # integers a template computes (``2 ** 10 ** 10`` is refused)
MAX_TEMPLATE_ITEMS = 10_000  # permutations / combinations / prompt blocks a template may ask for
_PRINTF_WIDTH = re.compile(r"%[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_WIDTH = re.compile(r"\d{6,}")
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})


class _TemplateLimit(Exception):
    """A template asked for more than the sandbox allows."""


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, str | bytes | list | tuple) else None


def _bounded_binop(operator: str, left: Any, right: Any) -> None:
    """Raise _TemplateLimit before computing an operation whose result would be huge."""
    ints = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and ints and abs(left) > 1:
        if right > 0 and abs(left).bit_length() * right > MAX_INT_BITS:
            raise _TemplateLimit(f"{left} ** {right} is too large a number")
    elif operator == "*":
        if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise _TemplateLimit("a multiplication gives too large a number")
        for seq, times in ((left, right), (right, left)):
            n = _size(seq)
            if n is not None and isinstance(times, int) and n * times > MAX_TEMPLATE_TEXT:
                raise _TemplateLimit(
                    f"repeating a {type(seq).__name__} {times} times would make "
                    f"{n * times} items (at most {MAX_TEMPLATE_TEXT})"
                )
    elif operator == "+":
        a, b = _size(left), _size(right)
        if a is not None and b is not None and a + b > MAX_TEMPLATE_TEXT:
            raise _TemplateLimit(f"a concatenation longer than {MAX_TEMPLATE_TEXT} items")
    elif operator == "%" and isinstance(left, str):
        for m in _PRINTF_WIDTH.finditer(left):
            for number in m.groups():
                if number == "*" or (number and int(number) > MAX_TEMPLATE_TEXT):
                    raise _TemplateLimit("a %-format width or precision that large")


def _check_growth(name: str, target: Any, args: Sequence[Any]) -> None:
    """Before ``replace``/``join``/``format``: refuse when the result would be huge."""
    if name == "replace" and isinstance(target, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        hits = target.count(old) if old else len(target) + 1
        if len(target) + hits * len(new) > MAX_TEMPLATE_TEXT:
            raise _TemplateLimit(f"a replace() longer than {MAX_TEMPLATE_TEXT} characters")
    elif name == "join" and isinstance(target, str) and args and _size(args[0]) is not None:
        items = args[0]
        total = len(target) * len(items) + sum(_size(i) or 0 for i in items)
        if total > MAX_TEMPLATE_TEXT:
            raise _TemplateLimit(f"a join() longer than {MAX_TEMPLATE_TEXT} characters")
    elif name == "format" and isinstance(target, str):
        _bounded_binop("%", target, args)


def _check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    values = (*args, *kwargs.values())
    for arg in values:
        if isinstance(arg, int) and arg.bit_length() > MAX_INT_BITS:
            raise _TemplateLimit("a call with too large a number")
    if isinstance(getattr(obj, "__self__", None), str):
        _check_growth(obj.__name__, obj.__self__, args)
    padding = getattr(obj, "__name__", "") in _PADDING_METHODS
    if padding and any(isinstance(a, int) and a > MAX_TEMPLATE_TEXT for a in values):
        raise _TemplateLimit(f"{obj.__name__} wider than {MAX_TEMPLATE_TEXT}")


def _bounded_filter(name: str, func: Any) -> Any:
    """A jinja2 filter (called directly by compiled templates, not through the sandbox's
    ``call``) with bounded arguments and result."""
    import functools

    from jinja2 import Environment
    from jinja2.nodes import EvalContext
    from jinja2.runtime import Context

    passed = (Context, EvalContext, Environment)

    @functools.wraps(func)  # keeps jinja_pass_arg (pass_context / pass_environment)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        values = [a for a in (*args, *kwargs.values()) if not isinstance(a, passed)]
        value, rest = (values[0], values[1:]) if values else (None, [])
        if any(
            isinstance(a, int) and not isinstance(a, bool) and a > MAX_TEMPLATE_TEXT for a in rest
        ):
            raise _TemplateLimit(f"filter {name} with a number above {MAX_TEMPLATE_TEXT}")
        if name == "join" and len(rest) >= 1:
            items = list(value) if value is not None else []
            _check_growth("join", str(rest[0]), [[str(i) for i in items]])
        else:
            _check_growth(name, value, rest)
        out = func(*args, **kwargs)
        n = _size(out)
        if n is not None and n > MAX_TEMPLATE_TEXT:
            raise _TemplateLimit(f"filter {name} made {n} items (at most {MAX_TEMPLATE_TEXT})")
        return out

    return bounded


def _sandbox_class() -> Any:
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedConcat(CodeGenerator):
        """``a ~ b`` (jinja's string concatenation) through environment.bounded_concat."""

        def visit_Concat(self, node: Any, frame: Any) -> None:
            self.write("environment.bounded_concat((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class PromptSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "%"})
        code_generator_class = BoundedConcat

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.filters = {k: _bounded_filter(k, f) for k, f in self.filters.items()}

        def bounded_concat(self, parts: Sequence[Any]) -> str:
            texts = [str(p) for p in parts]
            if sum(len(t) for t in texts) > MAX_TEMPLATE_TEXT:
                raise _TemplateLimit(f"a ~ concatenation longer than {MAX_TEMPLATE_TEXT}")
            return "".join(texts)

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            """Refuse at once (jinja2 would give an Undefined that prints as nothing)."""
            from jinja2.exceptions import SecurityError

            raise SecurityError(
                f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
            )

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            _bounded_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            _check_call(__obj, args, kwargs)
            out = super().call(__context, __obj, *args, **kwargs)
            n = _size(out)
            if n is not None and n > MAX_TEMPLATE_TEXT:
                raise _TemplateLimit(f"a call returned {n} items (at most {MAX_TEMPLATE_TEXT})")
            return out

        def format_string(self, s: str, args: Any, kwargs: Any, format_func: Any = None) -> str:
            if _FORMAT_WIDTH.search(s):
                raise _TemplateLimit("a format string with a huge width")
            return super().format_string(s, args, kwargs, format_func)  # type: ignore[misc]

    return PromptSandbox


def _render_jinja_sandboxed(text: str, n: int, folder: Path | None, seed: int) -> list[str]:
    """dynamicprompts' JinjaGenerator.generate, in a sandbox: the same template features
    (``random``, ``randint``, ``choice``, ``weighted_choice``, ``permutations``, ``wildcard``,
    ``random_sample``, ``all_combinations``, ``{% prompt %}`` blocks), no Python internals."""
    import itertools

    from dynamicprompts.generators import CombinatorialPromptGenerator, RandomPromptGenerator
    from dynamicprompts.jinja_extensions import PromptExtension, choice, weighted_choice

    wm = _strict_wildcard_manager(folder)
    rnd = RandomPromptGenerator(wildcard_manager=wm, seed=seed)
    comb = CombinatorialPromptGenerator(wildcard_manager=wm)

    def wildcard(name: str) -> list[str]:
        return [str(r) for r in comb.generate(wm.to_wildcard(name), MAX_TEMPLATE_ITEMS)]

    def random_sample(prompt: str) -> str:
        return str(next(iter(rnd.generate(prompt))))

    def all_combinations(prompt: str) -> list[str]:
        return [str(p) for p in comb.generate(prompt, MAX_TEMPLATE_ITEMS)]

    def permutations(items: Any, low: int, high: int | None = None) -> list[Any]:
        pool = list(items)
        top = low if high is None else high
        total = sum(math.perm(len(pool), k) for k in range(max(low, 0), min(top, len(pool)) + 1))
        if total > MAX_TEMPLATE_ITEMS:
            raise _TemplateLimit(f"{total} permutations (at most {MAX_TEMPLATE_ITEMS})")
        out: list[Any] = []
        for k in range(low, top + 1):
            out.extend(itertools.permutations(pool, k))
        return out

    env = _sandbox_class()(extensions=[PromptExtension])
    prompt_blocks: list[str] = []  # PromptExtension appends {% prompt %} blocks here
    env.globals.update(
        prompt_blocks=prompt_blocks,
        choice=choice,
        weighted_choice=weighted_choice,
        random=random.random,
        randint=random.randint,
        permutations=permutations,
        wildcard=wildcard,
        random_sample=random_sample,
        all_combinations=all_combinations,
    )
    template = env.from_string(text)
    prompts: list[str] = []
    with _seeded_global_random(seed):
        for _ in range(n):
            size, parts = 0, []
            for part in template.generate():
                size += len(part)
                if size > MAX_TEMPLATE_TEXT:
                    raise _TemplateLimit(f"the prompt grew past {MAX_TEMPLATE_TEXT} characters")
                parts.append(part)
            prompts.append("".join(parts))
            if len(prompt_blocks) > MAX_TEMPLATE_ITEMS:
                raise _TemplateLimit(f"more than {MAX_TEMPLATE_ITEMS} prompt blocks")
    return list(prompt_blocks) if prompt_blocks else prompts


def _jinja_child() -> None:
    """The child process: read {texts, n, folder, seeds} on stdin, print one JSON answer."""
    request = json.loads(sys.stdin.read())
    _limit_memory(JINJA_MEMORY_BYTES)
    folder = Path(request["folder"]) if request["folder"] else None
    out: list[list[str]] = []
    for i, (text, seed) in enumerate(zip(request["texts"], request["seeds"], strict=True)):
        try:
            out.append(_render_jinja_sandboxed(text, request["n"], folder, seed))
        except BaseException as exc:  # reported to the parent, which raises a PayloadError
            print(json.dumps({"index": i, **_classify_jinja_error(exc)}))
            return
    print(json.dumps({"prompts": out}))


def _classify_jinja_error(exc: BaseException) -> dict[str, str]:
    from jinja2.exceptions import SecurityError

    if isinstance(exc, _MissingWildcard):
        return {"kind": "missing", "name": exc.name}
    if isinstance(exc, SecurityError):
        return {"kind": "unsafe", "message": str(exc)}
    if isinstance(exc, _TemplateLimit | OverflowError):
        return {"kind": "limit", "message": str(exc)}
    if isinstance(exc, MemoryError):
        return {"kind": "limit", "message": "it needs more memory than a prompt may use"}
    if isinstance(exc, RecursionError):
        return {"kind": "limit", "message": "it nests too deeply (recursion)"}
    if isinstance(exc, Exception):
        return {"kind": "template", "message": f"{type(exc).__name__}: {exc}"}
    return {"kind": "limit", "message": type(exc).__name__}


def _limit_memory(extra: int) -> None:
    """Cap the child's address space at what it maps now plus ``extra`` (Linux)."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (used + extra, used + extra))
    except (ImportError, OSError, ValueError, AttributeError):
        pass  # elsewhere the time limit and the sandbox's own limits still hold


class _JinjaRefused(Exception):
    def __init__(self, index: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.index, self.kind, self.message = index, kind, message


def _jinja_variants(
    texts: Sequence[str], n: int, folder: Path | None, seeds: Sequence[int]
) -> list[list[str]]:
    """Render jinja2 templates in a sandboxed child process (see JINJA_TIMEOUT_S)."""
    src = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
    request = {
        "texts": list(texts),
        "n": n,
        "folder": str(folder) if folder else None,
        "seeds": list(seeds),
    }
    code = "from autombw_cli.payloads import _jinja_child; _jinja_child()"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=JINJA_TIMEOUT_S,
            env={**os.environ, "PYTHONPATH": path},
        )
    except subprocess.TimeoutExpired:
        raise _JinjaRefused(
            -1, "limit", f"rendering took longer than {JINJA_TIMEOUT_S:g} s and was stopped"
        ) from None
    lines = proc.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise _JinjaRefused(
            -1,
            "limit",
            f"the sandboxed renderer stopped (exit {proc.returncode}: {tail[0][:200]})",
        ) from None
    if "prompts" in answer:
        return answer["prompts"]
    if answer["kind"] == "missing":
        raise _MissingWildcard(answer["name"])
    raise _JinjaRefused(answer["index"], answer["kind"], answer["message"])


def _variants(payload: Payload, text: str, which: str, folder: Path | None, seed: int) -> list[str]:
    from dynamicprompts.generators import CombinatorialPromptGenerator, RandomPromptGenerator

    wm = _strict_wildcard_manager(folder)
    n = payload.n_iter
    gen_seed = derive_seed(seed, payload.name, which)
    if payload.wildcard_type == "random":
        draws = n * DRAWS_PER_VARIANT  # more than needed: `_distinct_pairs` picks n distinct
        return RandomPromptGenerator(wildcard_manager=wm, seed=gen_seed).generate(text, draws)
    return CombinatorialPromptGenerator(wildcard_manager=wm).generate(text, n)


DRAWS_PER_VARIANT = 8  # random draws per wanted variant, to find distinct ones


def _distinct_pairs(
    draws: list[tuple[str, str]], payload: Payload, where: str
) -> list[tuple[str, str]]:
    """``n_iter`` (prompt, negative) pairs from the random draws, distinct while the wildcards
    allow it (a repeated pair with a fixed seed renders the same image twice: wasted time and a
    double weight in the tally). When they allow fewer: with ``seed: -1`` repeats are kept (each
    variant gets its own seed, so the images differ); with a fixed seed they are dropped, and a
    warning says so."""
    want = payload.n_iter
    picked = list(dict.fromkeys(draws))  # distinct, in draw order
    if len(picked) >= want:
        return picked[:want]
    if payload.seed == -1:
        seen: set[tuple[str, str]] = set()
        repeats = []  # each draw after its first, in draw order
        for pair in draws:
            if pair in seen:
                repeats.append(pair)
            seen.add(pair)
        return picked + repeats[: want - len(picked)]
    log.warning(
        "%s: n_iter is %d but its wildcards gave only %d distinct prompt(s) in %d draws; "
        "rendering %d (with a fixed seed a repeat would render the same image twice; "
        "use seed: -1 for more images of the same prompts)",
        where,
        want,
        len(picked),
        len(draws),
        len(picked),
    )
    return picked


def _short_text(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _expand_texts(payload: Payload, folder: Path | None, seed: int) -> list[list[str]]:
    """[prompt variants, negative prompt variants]; raises the private errors above."""
    texts = (payload.prompt, payload.negative_prompt)
    jinja = payload.wildcard_type == "jinja2"
    wm = _strict_wildcard_manager(folder)
    for text in texts:
        _check_wildcard_nesting(wm, text, jinja)
    if jinja:
        seeds = [derive_seed(seed, payload.name, which) for which in ("prompt", "negative")]
        return _jinja_variants(texts, payload.n_iter, folder, seeds)
    return [
        _variants(payload, text, which, folder, seed)
        for text, which in zip(texts, ("prompt", "negative"), strict=True)
    ]


def expand_payload(payload: Payload, wildcard_dir: Path | None, seed: int) -> list[PromptSpec]:
    """The concrete prompts of one payload (see the module docstring)."""
    where = f"payload {payload.name}"
    if payload._source is not None:
        where = f"{payload._source}: {where}"
    if payload.wildcard_type == "none":
        pairs = [(payload.prompt, payload.negative_prompt)]
    else:
        try:
            prompts, negatives = _expand_texts(payload, wildcard_dir, seed)
        except _MissingWildcard as exc:
            folder = f"in {wildcard_dir}" if wildcard_dir else "(no wildcard folder is set)"
            raise PayloadError(
                f"{where}: wildcard __{exc.name}__ not found {folder}",
                hint=f"create {exc.name}.txt (one value per line) in the wildcard folder"
                if wildcard_dir
                else "set payloads.wildcards in the config (or --wildcards)",
            ) from None
        except _WildcardLoop as exc:
            culprit = exc.chain[-2] if len(exc.chain) > 1 else exc.chain[0]
            chain = " -> ".join(f"__{c}__" for c in exc.chain)
            what = (
                f"wildcards nest more than {MAX_WILDCARD_DEPTH} deep"
                if exc.too_deep
                else "a wildcard refers back to itself"
            )
            raise PayloadError(
                f"{where}: {what} in {_wildcard_file(wildcard_dir, culprit)}: {chain}",
                hint="remove the reference that loops back (a wildcard file may not use its "
                "own __name__, directly or through other wildcards)",
            ) from None
        except RecursionError:
            raise PayloadError(
                f"{where}: wildcards nest too deeply to expand (in {wildcard_dir})",
                hint="look for a wildcard file that refers back to itself",
            ) from None
        except _JinjaRefused as exc:
            fields = ("prompt", "negative_prompt")
            field = fields[exc.index] if exc.index >= 0 else "prompt/negative_prompt"
            text = (payload.prompt, payload.negative_prompt)[max(exc.index, 0)]
            if exc.kind == "template":
                raise PayloadError(
                    f"{where}: cannot expand jinja2 wildcards in {field} {_short_text(text)}: "
                    f"{exc.message}",
                    hint="check the jinja2 syntax of prompt and negative_prompt",
                ) from None
            verb = "uses what the sandbox forbids" if exc.kind == "unsafe" else "is too large"
            raise PayloadError(
                f"{where}: the jinja2 template in {field} {verb}; refused: {exc.message} "
                f"({field}: {_short_text(text)})",
                hint="jinja2 payloads may use dynamicprompts' functions (random, choice, "
                "wildcard, permutations...) but not Python internals; read a payload file "
                "from someone you do not trust before using it",
            ) from None
        except _template_errors() as exc:
            raise PayloadError(
                f"{where}: cannot expand {payload.wildcard_type} wildcards: {exc}",
                hint="check the braces/wildcard syntax of prompt and negative_prompt",
            ) from exc
        if not prompts:
            raise PayloadError(f"{where}: wildcard expansion gave no prompt")
        negatives = negatives or [payload.negative_prompt]
        pairs = [(p, negatives[i % len(negatives)]) for i, p in enumerate(prompts)]
        if payload.wildcard_type == "random":  # jinja2 templates say their prompts themselves
            pairs = _distinct_pairs(pairs, payload, where)
    n_iter = payload.n_iter if payload.wildcard_type == "none" else 1
    out: list[PromptSpec] = []
    for i, (prompt, negative) in enumerate(pairs):
        derived = payload.seed == -1
        s = derive_seed(seed, payload.name, i, "seed") if derived else payload.seed
        variant = payload.model_copy(
            update={"prompt": prompt, "negative_prompt": negative, "seed": s, "n_iter": n_iter}
        )
        out.append(
            PromptSpec(
                payload_name=payload.name,
                index=i,
                prompt=prompt,
                negative_prompt=negative,
                seed=s,
                body=_txt2img_body(variant),
                score_weight=payload.score_weight,
                reverse_scoring=payload.reverse_scoring,
                seed_derived=derived,
            )
        )
    return out


def expand_payloads(
    payloads: Sequence[Payload], wildcard_dir: Path | None, seed: int
) -> list[PromptSpec]:
    """Expand every payload once, in order; the result is the same for the same inputs."""
    out: list[PromptSpec] = []
    for payload in payloads:
        out.extend(expand_payload(payload, wildcard_dir, seed))
    return out
