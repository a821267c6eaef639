"""WebUIClient against the simulated WebUI (``autombw_cli.sim.server``) over loopback HTTP:
the whole A1111 + bridge surface, auth, and every fault the simulator can inject."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.responses import JSONResponse

from autombw_cli.blocks import Arch, Weights
from autombw_cli.sim.faults import FaultPlan
from autombw_cli.sim.server import SimulatorHandle
from autombw_cli.webui.client import WebUIClient
from autombw_cli.webui.errors import (
    ApiNotEnabled,
    BridgeMissing,
    MergeLost,
    WebUIAuthError,
    WebUIHTTPError,
    WebUIServerError,
    WebUITimeout,
    WebUIUnreachable,
    WebUIValidationError,
)
from autombw_cli.webui.timeouts import ClientTimeouts, RetryPolicy

pytestmark = pytest.mark.anyio

FAST = ClientTimeouts(poll_interval=0.05, stall=1.0, read=10.0)
BODY: dict[str, Any] = {"prompt": "a red fox", "seed": 7, "steps": 4, "width": 64, "height": 64}


def connect(handle: SimulatorHandle, **kw: Any) -> WebUIClient:
    kw.setdefault("timeouts", FAST)
    kw.setdefault("retry", RetryPolicy(attempts=2, backoff=0))
    return WebUIClient(handle.url, label="sim0", **kw)


async def test_a1111_surface(sim: SimulatorHandle) -> None:
    async with connect(sim) as c:
        assert (await c.ping()).elapsed_s >= 0
        models = await c.sd_models()
        assert {m.model_name for m in models} == {"simA", "simB"}
        assert "Euler a" in {s.name for s in await c.samplers()}
        assert not (await c.progress()).busy
        await c.memory()
        await c.refresh_checkpoints()

        loaded = await c.set_checkpoint("simB")
        assert loaded.model_name == "simB"
        assert loaded.matches((await c.get_options()).sd_model_checkpoint or "")
        back = await c.set_checkpoint("simA.safetensors")
        assert back.model_name == "simA"
        assert back.matches((await c.get_options()).sd_model_checkpoint or "")

        r = await c.txt2img({**BODY, "batch_size": 2})
        assert len(r.images) == 2 and r.formats == ["png", "png"]
        assert r.images[0].size == (64, 64) and r.seeds == [7, 8]
        assert r.sd_model_name == "simA"


async def test_merge_render_verify_restore(sim: SimulatorHandle) -> None:
    w1 = Weights.uniform(Arch.SD1, 0.0).replace({"IN04": 1.0, "OUT05": 0.7})
    w2 = Weights.uniform(Arch.SD1, 1.0)
    async with connect(sim) as c:
        assert (await c.bridge_status()).version
        m1 = await c.bridge_merge("simA", "simB", w1)
        assert m1.arch == "sd1" and "IN04" in m1.changed_blocks
        first = await c.txt2img(BODY, expect_merge_id=m1.merge_id)
        again = await c.txt2img(BODY, expect_merge_id=m1.merge_id)
        assert first.raw_images == again.raw_images  # deterministic per merge, prompt, seed

        status = await c.ensure_merge_live(m1.merge_id)
        assert status.weights is not None and status.weights["IN04"] == 1.0

        m2 = await c.bridge_merge("simA", "simB", w2)
        assert m2.merge_id != m1.merge_id
        other = await c.txt2img(BODY, expect_merge_id=m2.merge_id)
        assert other.raw_images != first.raw_images
        with pytest.raises(MergeLost):
            await c.ensure_merge_live(m1.merge_id)

        await c.bridge_restore(free_caches=True)
        assert not (await c.bridge_status()).merge_live


async def test_text_encoder_merge_changes_an_already_encoded_prompt(sim: SimulatorHandle) -> None:
    """The WebUI caches a prompt's conditioning keyed on prompt, steps and checkpoint, not on
    weights (A1111's StableDiffusionProcessing.cached_c/cached_uc; the simulator's host keeps
    the same cache): a BASE merge, and its restore, must make the host drop it."""
    te_only = Weights.uniform(Arch.SD1, 0.0, text_encoder=1.0)  # the UNet stays A's
    async with connect(sim) as c:
        plain = await c.txt2img(BODY)  # encodes and caches BODY's prompt with A's encoder
        assert sim.sim.host.cached_c[0] is not None
        merged = await c.bridge_merge("simA", "simB", te_only)
        assert merged.changed_blocks == ["BASE"]
        after = await c.txt2img(BODY, expect_merge_id=merged.merge_id)
        assert after.raw_images != plain.raw_images
        await c.bridge_restore()
        restored = await c.txt2img(BODY)
        assert restored.raw_images == plain.raw_images
        # a UNet-only merge keeps the cache (the prompt encodes the same): no needless work
        await c.bridge_merge("simA", "simB", Weights.uniform(Arch.SD1, 0.5))
        cached = sim.sim.host.cached_c
        await c.txt2img(BODY)
        assert sim.sim.host.cached_c is cached


async def test_reload_after_a_text_encoder_merge_drops_its_conditionings(
    sim: SimulatorHandle,
) -> None:
    async with connect(sim) as c:
        plain = await c.txt2img(BODY)
        await c.bridge_merge("simA", "simB", Weights.uniform(Arch.SD1, 0.0, text_encoder=1.0))
        await c.txt2img(BODY)
        await c.set_checkpoint("simB")
        await c.set_checkpoint("simA")  # same checkpoint, so the same cache key: plain A again
        assert (await c.txt2img(BODY)).raw_images == plain.raw_images


async def test_checkpoint_reload_loses_the_merge(sim: SimulatorHandle) -> None:
    async with connect(sim) as c:
        merge = await c.bridge_merge("simA", "simB", Weights.uniform(Arch.SD1, 0.5))
        await c.set_checkpoint("simB")  # the WebUI reloads: the in-memory merge is gone
        with pytest.raises(MergeLost) as exc:
            await c.txt2img(BODY, expect_merge_id=merge.merge_id)
    assert exc.value.expected == merge.merge_id


async def test_bridge_refuses_unknown_model_with_a_hint(sim: SimulatorHandle) -> None:
    async with connect(sim) as c:
        with pytest.raises(WebUIHTTPError) as exc:
            await c.bridge_merge("simA", "simZ", Weights.uniform(Arch.SD1, 0.5))
    assert not isinstance(exc.value, BridgeMissing)
    assert exc.value.status_code is not None and 400 <= exc.value.status_code < 500
    assert "simZ" in str(exc.value)


async def test_validation_error_names_the_field(sim: SimulatorHandle) -> None:
    async with connect(sim) as c:
        with pytest.raises(WebUIValidationError) as exc:
            await c.txt2img({**BODY, "steps": "many"})
    assert [f.field for f in exc.value.fields] == ["steps"]


async def test_unknown_sampler_fallback_is_reported(
    sim: SimulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="autombw_cli.webui.client"):
        async with connect(sim) as c:
            r = await c.txt2img({**BODY, "sampler_name": "No Such Sampler"})
    assert r.info["sampler_name"] == "Euler" and "'No Such Sampler' is unknown" in caplog.text


async def test_auth(start_sim: Callable[..., SimulatorHandle]) -> None:
    handle = start_sim(arch="sd1", auth=("alice", "pw-42"))
    async with connect(handle) as c:
        with pytest.raises(WebUIAuthError, match="wants a user name"):
            await c.sd_models()
    async with connect(handle, auth=("alice", "nope")) as c:
        with pytest.raises(WebUIAuthError) as exc:
            await c.sd_models()
        assert "nope" not in str(exc.value)
    async with connect(handle, auth=("alice", "pw-42")) as c:
        assert len(await c.sd_models()) == 2
        assert (await c.bridge_status()).version
    handle.sim.set_faults(refuse_auth=True)
    async with connect(handle, auth=("alice", "pw-42")) as c:
        with pytest.raises(WebUIAuthError):
            await c.progress()


async def test_missing_api_and_missing_bridge(start_sim: Callable[..., SimulatorHandle]) -> None:
    handle = start_sim(arch="sd1", api=False, bridge=False)
    async with connect(handle) as c:
        await c.ping()
        with pytest.raises(ApiNotEnabled, match="--api"):
            await c.get_options()
        with pytest.raises(BridgeMissing, match="install-extension"):
            await c.bridge_status()


async def test_api_only_webui_is_reachable_without_internal_ping(
    start_sim: Callable[..., SimulatorHandle],
) -> None:
    """A1111 with --nowebui serves no /internal/ping: its router's 404 still means "up", for
    the client's ping, the preflight and (through ping) the scheduler's health probe."""
    from autombw_cli.app.preflight import check_instance

    handle = start_sim(arch="sd1", api=False, nowebui=True)
    async with connect(handle) as c:
        with pytest.raises(WebUIHTTPError) as exc:  # the route really is missing
            await c._request("GET", "/internal/ping")
        assert exc.value.status_code == 404
        assert (await c.ping()).elapsed_s >= 0
        report = await check_instance(
            c,
            label="sim0",
            url=handle.url,
            model_a="simA",
            model_b="simB",
            samplers={"Euler"},
            arch=Arch.SD1,
        )
        assert report.state == "ready", report.problems


async def test_ping_still_fails_on_a_routes_own_404(
    start_sim: Callable[..., SimulatorHandle],
) -> None:
    handle = start_sim(arch="sd1", nowebui=True)
    handle.sim.app.add_api_route(  # a 404 of a route, not of the router: not "up"
        "/internal/ping",
        lambda: JSONResponse(status_code=404, content={"detail": "gone"}),
        methods=["GET"],
    )
    async with connect(handle) as c:
        with pytest.raises(WebUIHTTPError):
            await c.ping()


async def test_txt2img_sends_a_scheduler_so_a1111_does_not_autocorrect(
    sim: SimulatorHandle,
) -> None:
    """A1111 1.9+ logs "Sampler Scheduler autocorrection" for a txt2img without scheduler."""
    import httpx

    assert httpx.post(sim.url + "/sdapi/v1/txt2img", json=BODY, timeout=30).status_code == 200
    assert len(sim.sim.autocorrections) == 1  # the stand-in does what A1111 does
    async with connect(sim) as c:
        await c.txt2img(BODY)
        await c.txt2img({**BODY, "sampler_name": "DPM++ 2M Karras"})  # A1111 splits it off
        await c.txt2img({**BODY, "sampler_name": "Euler", "scheduler": "Karras"})
    assert len(sim.sim.autocorrections) == 1, sim.sim.autocorrections


def test_with_scheduler_keeps_the_payloads_and_the_legacy_sampler_suffix() -> None:
    from autombw_cli.webui.client import with_scheduler

    assert with_scheduler({"prompt": "x"})["scheduler"] == "Automatic"
    assert with_scheduler({"scheduler": "Karras"})["scheduler"] == "Karras"
    assert "scheduler" not in with_scheduler({"sampler_name": "DPM++ 2M Karras"})
    assert "scheduler" not in with_scheduler({"sampler_index": "DPM++ 2M SDE sgm_uniform"})
    assert with_scheduler({"sampler_name": "DDIM"})["scheduler"] == "Automatic"


async def test_fault_oom(sim: SimulatorHandle) -> None:
    sim.sim.set_faults(oom_every=2)
    async with connect(sim) as c:
        assert len((await c.txt2img(BODY)).images) == 1
        with pytest.raises(WebUIServerError) as exc:
            await c.txt2img(BODY)
        assert exc.value.out_of_memory and "CUDA out of memory" in str(exc.value)
        assert len((await c.txt2img(BODY)).images) == 1  # the instance is fine afterwards


async def test_fault_dropped_connection_is_not_reposted(sim: SimulatorHandle) -> None:
    sim.sim.set_faults(drop_every=1)
    async with connect(sim) as c:
        with pytest.raises(WebUIUnreachable) as exc:
            await c.txt2img(BODY)
        assert exc.value.request_sent
        assert sim.sim._count == 1  # sent once, never re-posted
        sim.sim.set_faults(FaultPlan())
        assert len((await c.txt2img(BODY)).images) == 1


async def test_fault_stall_times_out(sim: SimulatorHandle) -> None:
    sim.sim.set_faults(stall_every=1, stall_seconds=30)
    async with connect(sim) as c:
        with pytest.raises(WebUITimeout) as exc:
            await c.txt2img(BODY)
    assert exc.value.stalled_s is not None and exc.value.stalled_s >= FAST.stall


async def test_fault_restart_loses_the_merge(sim: SimulatorHandle) -> None:
    async with connect(sim) as c:
        merge = await c.bridge_merge("simA", "simB", Weights.uniform(Arch.SD1, 0.5))
        sim.sim.set_faults(restart_every=1)
        with pytest.raises(WebUIUnreachable):
            await c.txt2img(BODY, expect_merge_id=merge.merge_id)
        sim.sim.set_faults(FaultPlan())
        with pytest.raises(MergeLost):
            await c.ensure_merge_live(merge.merge_id)
