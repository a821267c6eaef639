"""The WebUI instances of a run: start simulated ones when the config asks, open one client per
instance, run the preflight and load the scorer.

Everything opened here is registered on the caller's ``AsyncExitStack``, so the run closes
clients and stops simulators however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autombw_cli.app.preflight import PreflightReport, required_samplers, run_preflight
from autombw_cli.config import SearchConfig, SimulatedInstances
from autombw_cli.errors import AutombwError
from autombw_cli.recipe import Formula
from autombw_cli.scoring.protocol import Scorer
from autombw_cli.scoring.registry import create_scorer
from autombw_cli.search.events import EventSink, RunWarning
from autombw_cli.search.prompt import PromptSpec
from autombw_cli.webui.client import WebUIClient

if TYPE_CHECKING:
    from autombw_cli.sim.server import SimulatorHandle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    label: str
    url: str
    client: WebUIClient
    simulated: bool = False


async def open_instances(config: SearchConfig, stack: contextlib.AsyncExitStack) -> list[Endpoint]:
    """Clients for every instance of ``config`` (starting simulators for ``simulate: N``)."""
    endpoints: list[Endpoint] = []
    if isinstance(config.instances, SimulatedInstances):
        sims = config.instances
        for i in range(sims.simulate):
            handle = await asyncio.to_thread(_start_simulator, config, sims)
            stack.callback(handle.stop)
            label = f"sim{i + 1}"
            client = WebUIClient(handle.url, label=label)
            await stack.enter_async_context(client)
            endpoints.append(Endpoint(label, handle.url, client, simulated=True))
        return endpoints
    for inst in config.instances:
        auth = inst.auth.resolve(instance=inst.name) if inst.auth else None
        client = WebUIClient(
            inst.url,
            auth=auth,
            label=inst.name,
            timeouts=inst.timeouts,
            retry=inst.retry,
        )
        await stack.enter_async_context(client)
        endpoints.append(Endpoint(inst.name, inst.url, client))
    return endpoints


def _start_simulator(config: SearchConfig, sims: SimulatedInstances) -> SimulatorHandle:
    # lazily: the simulator (uvicorn, FastAPI, torch) loads only for ``instances: {simulate: N}``
    from autombw_cli.sim.server import start_simulator_in_thread

    options = dict(sims.options)
    if config.models.c is not None or config.chain:  # add difference, a chain: simC too
        options.setdefault("base_model", True)
    if config.models.formula is Formula.LORA:  # a LoRA search: the built-in simLora
        options.setdefault("lora", True)
    return start_simulator_in_thread(
        port=0,
        arch=config.models.arch,
        latency_per_image=sims.latency,
        **options,
    )


RESTORE_TIMEOUT_S = 60.0  # per instance (they restore at once); waits behind a running job


async def restore_instances(endpoints: Sequence[Endpoint], emit: EventSink | None = None) -> None:
    """Give every instance plain model A back and free the bridge's caches (a search leaves
    its last candidate merged under A's name, and several GB of caches, otherwise).

    Runs however the run ends (the run registers it on its exit stack); never raises: an
    instance that cannot be restored is a warning naming what to do."""
    await asyncio.gather(*(_restore(e, emit) for e in endpoints))


async def _restore(e: Endpoint, emit: EventSink | None) -> None:
    try:
        done = await asyncio.wait_for(e.client.bridge_restore(free_caches=True), RESTORE_TIMEOUT_S)
    except (AutombwError, TimeoutError) as exc:
        why = (
            exc.message
            if isinstance(exc, AutombwError)
            else f"no answer in {RESTORE_TIMEOUT_S:g} s"
        )
        message = (
            f"{e.label}: could not give the WebUI plain model A back ({why}); it may still "
            "hold a merge under A's name: reload the checkpoint there (or POST "
            "/autombw/v1/restore)"
        )
        log.warning("%s", message)
        if emit is not None:
            emit(RunWarning(message=message))
        return
    except Exception:  # a bug here must not hide how the run ended
        log.exception("%s: restoring model A failed", e.label)
        return
    log.info(
        "%s: model A restored, %.1f MB of bridge caches freed",
        e.label,
        done.freed_bytes / 1e6,
    )


async def load_scorer(config: SearchConfig) -> Scorer:
    return await asyncio.to_thread(create_scorer, config.scorer)


async def preflight(
    config: SearchConfig,
    endpoints: Sequence[Endpoint],
    prompts: Sequence[PromptSpec],
    *,
    with_scorer: bool = True,
) -> tuple[PreflightReport, Scorer | None]:
    return await run_preflight(
        [(e.label, e.url, e.client) for e in endpoints],
        model_a=config.models.a,
        model_b=config.models.b,
        samplers=required_samplers([p.body for p in prompts]),
        load_scorer=(lambda: load_scorer(config)) if with_scorer else None,
        scorer_name=config.scorer.name,
        arch=config.models.arch,
        model_c=config.models.c,
        lora=config.models.formula is Formula.LORA,
    )


async def preflight_and_scorer(
    config: SearchConfig, endpoints: Sequence[Endpoint], prompts: Sequence[PromptSpec]
) -> tuple[PreflightReport, Scorer]:
    """Run the preflight; raise with every problem at once, or return the report (versions,
    GPU memory per instance) and the loaded scorer."""
    report, scorer = await preflight(config, endpoints, prompts)
    report.raise_if_failed()
    assert scorer is not None  # the report names the scorer's problem otherwise
    return report, scorer


async def doctor(config: SearchConfig, prompts: Sequence[PromptSpec]) -> PreflightReport:
    """The preflight alone (``autombw doctor``)."""
    async with contextlib.AsyncExitStack() as stack:
        endpoints = await open_instances(config, stack)
        if not config.outputs.keep_merge_loaded:  # the preflight merges A and B at weight 0
            stack.push_async_callback(restore_instances, endpoints)
        report, scorer = await preflight(config, endpoints, prompts)
        if scorer is not None:
            scorer.close()
        return report
