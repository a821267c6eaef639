"""Preflight: check every instance (and the scorer) before the first evaluation, reporting every
problem at once instead of failing on the first.

Per instance: reachable, API enabled (``--api``), credentials accepted, bridge installed with
this autombw's version, models A and B listed, the payloads' samplers known, and A and B
mergeable with the configured architecture (a weight-0 merge through the bridge, which also
warms its caches); GPU memory and versions for ``autombw doctor`` (A1111 has no light API route
for its version: ``/internal/sysinfo`` runs ``pip freeze``; the bridge's status reports it).
The scorer check is a callable that loads it.
"""

from __future__ import annotations

import asyncio
import difflib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autombw_cli import __version__
from autombw_cli.blocks import Arch, Weights
from autombw_cli.errors import AutombwError, ScorerError, WebUIError
from autombw_cli.scoring.protocol import Scorer
from autombw_cli.webui.client import WebUIClient
from autombw_cli.webui.errors import (
    ApiNotEnabled,
    BridgeMissing,
    BridgeTooOld,
    UnsupportedWebUI,
    WebUIAuthError,
)


@dataclass(frozen=True)
class InstanceReport:
    label: str
    url: str
    reachable: bool = False
    webui_version: str | None = None
    bridge_version: str | None = None
    gpu_memory: str | None = None
    models_found: str = "-"
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def state(self) -> str:
        if not self.reachable:
            return "unreachable"
        return "ready" if self.ok else "problem"


@dataclass(frozen=True)
class PreflightReport:
    instances: tuple[InstanceReport, ...]
    scorer_problem: str | None = None
    scorer_name: str = ""
    extra: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(i.ok for i in self.instances) and self.scorer_problem is None

    def problems(self) -> list[str]:
        out = [f"{i.label} ({i.url}): {p}" for i in self.instances for p in i.problems]
        if self.scorer_problem:
            out.append(f"scorer {self.scorer_name}: {self.scorer_problem}")
        out.extend(self.extra)
        return out

    def raise_if_failed(self) -> None:
        if self.ok:
            return
        problems = self.problems()
        lines = "\n".join(f"  - {p}" for p in problems)
        err: type[AutombwError] = WebUIError
        if all(not i.problems for i in self.instances):
            err = ScorerError
        raise err(
            f"preflight found {len(problems)} problem(s):\n{lines}",
            hint="`autombw doctor CONFIG` shows the state of every instance",
        )


def expected_bridge_version() -> str:
    """The bridge is versioned with autombw: ``install-extension`` writes this version."""
    return __version__


def required_samplers(bodies: Sequence[dict[str, Any]]) -> set[str]:
    out = set()
    for body in bodies:
        for key in ("sampler_name", "sampler_index"):
            if body.get(key):
                out.add(str(body[key]))
    return out


async def check_instance(
    client: WebUIClient,
    *,
    label: str,
    url: str,
    model_a: str,
    model_b: str,
    samplers: set[str],
    bridge_version: str | None = None,
    arch: Arch | None = None,
    model_c: str | None = None,
    lora: bool = False,
) -> InstanceReport:
    """Every check of one instance; problems are collected, not raised. ``model_c``: B's base
    of an add-difference search (checked like A and B); ``lora``: B is a LoRA (not in the
    checkpoint list: the bridge's merge at strength 0 checks it)."""
    problems: list[str] = []
    info: dict[str, Any] = {"label": label, "url": url}
    try:
        await client.ping()
    except WebUIError as exc:
        gone = exc.instance_down  # else: it answers, but not as a WebUI
        hint = f" ({exc.hint})" if exc.hint else ""
        problem = f"unreachable: {exc.message}{hint}" if gone else f"{exc.message}{hint}"
        return InstanceReport(**info, problems=(problem,))
    info["reachable"] = True
    api_ok = True
    try:
        await client.get_options()
    except WebUIAuthError:
        problems.append("credentials missing or rejected (HTTP 401); check instances[].auth")
        api_ok = False
    except ApiNotEnabled:
        problems.append("the API is not enabled: start the WebUI with --api")
        api_ok = False
    except WebUIError as exc:
        problems.append(f"options: {exc.message}")
        api_ok = False
    try:
        status = await client.bridge_status()
        info["bridge_version"] = status.version
        info["webui_version"] = status.webui_version
        want = bridge_version or expected_bridge_version()
        if status.version != want:
            problems.append(
                f"bridge version {status.version} does not match autombw {want}: run "
                "`autombw webui install-extension WEBUI_DIR` and restart the WebUI"
            )
    except BridgeMissing:
        problems.append(
            "the autombw bridge is not installed: run `autombw webui install-extension "
            "WEBUI_DIR` and restart the WebUI"
        )
    except UnsupportedWebUI as exc:
        problems.append(exc.detail + (f"; {exc.hint}" if exc.hint else ""))
    except WebUIError as exc:
        problems.append(f"bridge status: {exc.message}")
    if api_ok:
        await _check_models(
            client, model_a, None if lora else model_b, info, problems, model_c=model_c
        )
        await _check_samplers(client, samplers, problems)
        info["gpu_memory"] = await _gpu_memory(client)
        every = "A" if lora else "A+B" if model_c is None else "A+B+C"
        if arch is not None and info.get("models_found") == every and not problems:
            await _check_pair(client, model_a, model_b, arch, problems, model_c=model_c, lora=lora)
    return InstanceReport(**info, problems=tuple(problems))


async def _check_pair(
    client: WebUIClient,
    model_a: str,
    model_b: str,
    arch: Arch,
    problems: list[str],
    *,
    model_c: str | None = None,
    lora: bool = False,
) -> None:
    """Merge A and B (and C) at weight 0 (the model stays A): proves they load, share keys and
    shapes (same architecture), that the bridge knows the formula, and fills the bridge's
    caches the first evaluation needs anyway. With ``lora``: that the WebUI has the LoRA and
    that it fits A."""
    models = "models A and B" if model_c is None else "models A, B and C"
    if lora:
        models = "model A and the LoRA B"
    try:
        how = {"formula": "lora"} if lora else {}
        result = await client.bridge_merge(
            model_a, model_b, Weights.uniform(arch, 0.0), model_c=model_c, **how
        )
    except WebUIError as exc:
        # weights of the wrong architecture: the bridge names the checkpoints' ("... for sd1")
        named = re.search(r"\bfor (sd1|sd2|sdxl)\b", getattr(exc, "detail", "") or "")
        if named and named.group(1) != arch.value:
            found = named.group(1)
            problems.append(
                f"models.arch is {arch.value} but {models} are {found} checkpoints; "
                f"set models.arch: {found}"
            )
        else:
            hint = f" ({exc.hint})" if isinstance(exc, BridgeTooOld) and exc.hint else ""
            problems.append(f"{models} cannot be merged here: {exc.message}{hint}")
        return
    found = result.arch or ""
    if found and found != arch.value:
        problems.append(
            f"{models} are {found} checkpoints but models.arch is "
            f"{arch.value}; set models.arch: {found}"
        )


async def _check_models(
    client: WebUIClient,
    model_a: str,
    model_b: str | None,
    info: dict[str, Any],
    problems: list[str],
    *,
    model_c: str | None = None,
) -> None:
    """Whether the WebUI lists A, B (unless None: a LoRA) and C as checkpoints."""
    try:
        models = await client.sd_models()
    except WebUIError as exc:
        problems.append(f"listing checkpoints: {exc.message}")
        return
    found = []
    roles = [("A", model_a)] + ([("B", model_b)] if model_b else [])
    roles += [("C", model_c)] if model_c else []
    for role, name in roles:
        hit = next((m for m in models if m.matches(name)), None)
        if hit is None:
            problems.append(_unknown_model(role, name, sorted({m.model_name for m in models})))
        else:
            found.append(role)
    info["models_found"] = "+".join(found) if found else "none"


def _unknown_model(role: str, name: str, names: list[str]) -> str:
    """A checkpoint name the WebUI does not list: the same name in another case, else the
    closest names, and what it does list."""
    text = f"model {role} {name!r} is not in this WebUI's checkpoint list"
    stem = Path(name).stem if Path(name).suffix in (".safetensors", ".ckpt") else name
    other_case = [n for n in names if n.lower() == stem.lower()]
    if other_case:
        return text + f": it lists {other_case[0]!r} (names are case-sensitive; write it so)"
    close = difflib.get_close_matches(stem, names, n=3, cutoff=0.4)
    if close:
        text += f" (close: {', '.join(close)})"
    shown = ", ".join(names[:MAX_NAMES_SHOWN]) + (" ..." if len(names) > MAX_NAMES_SHOWN else "")
    return text + (f"; it has {len(names)}: {shown}" if names else "; it lists none")


MAX_NAMES_SHOWN = 12


async def _check_samplers(client: WebUIClient, samplers: set[str], problems: list[str]) -> None:
    if not samplers:
        return
    try:
        known_list = await client.samplers()
    except WebUIError as exc:
        problems.append(f"listing samplers: {exc.message}")
        return
    known = set()
    for s in known_list:
        known.add(s.name.lower())
        known.update(a.lower() for a in s.aliases)
    for name in sorted(samplers):
        if name.lower() not in known:
            problems.append(
                f"sampler {name!r} is unknown here (the WebUI would silently use another); "
                f"known: {', '.join(sorted(s.name for s in known_list))}"
            )


async def _gpu_memory(client: WebUIClient) -> str | None:
    try:
        mem = await client.memory()
    except WebUIError:
        return None
    cuda = mem.cuda or {}
    system = cuda.get("system") if isinstance(cuda, dict) else None
    if isinstance(system, dict) and system.get("total"):
        total = float(system["total"]) / 2**30
        free = float(system.get("free", 0)) / 2**30
        return f"{free:.1f}/{total:.1f} GiB free"
    return None


async def run_preflight(
    instances: Sequence[tuple[str, str, WebUIClient]],
    *,
    model_a: str,
    model_b: str,
    samplers: set[str],
    load_scorer: Callable[[], Awaitable[Scorer]] | None = None,
    scorer_name: str = "",
    arch: Arch | None = None,
    model_c: str | None = None,
    lora: bool = False,
) -> tuple[PreflightReport, Scorer | None]:
    """Check all instances concurrently and load the scorer at the same time.

    ``instances`` are (label, url, client). Returns the report and the loaded scorer (None
    if it failed or was not asked for).
    """
    checks = [
        check_instance(
            c,
            label=label,
            url=url,
            model_a=model_a,
            model_b=model_b,
            samplers=samplers,
            arch=arch,
            model_c=model_c,
            lora=lora,
        )
        for label, url, c in instances
    ]
    scorer_problem = None
    scorer = None

    async def scorer_task() -> Scorer | None:
        if load_scorer is None:
            return None
        return await load_scorer()

    results = await asyncio.gather(*checks, scorer_task(), return_exceptions=True)
    reports = []
    for r, (label, url, _c) in zip(results[:-1], instances, strict=True):
        if isinstance(r, BaseException):
            if not isinstance(r, AutombwError):
                raise r
            reports.append(InstanceReport(label=label, url=url, problems=(r.message,)))
        else:
            reports.append(r)
    last = results[-1]
    if isinstance(last, BaseException):
        if not isinstance(last, AutombwError):
            raise last
        scorer_problem = str(last)
    else:
        scorer = last
    return (
        PreflightReport(tuple(reports), scorer_problem=scorer_problem, scorer_name=scorer_name),
        scorer,
    )
