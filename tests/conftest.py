"""Shared pytest setup: GPU tests run only where CUDA is present, and the simulated-WebUI
fixtures (`start_sim`, `sim`, `http`) every loopback-HTTP test starts its simulators with."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # imported in the fixtures: the GPU machine runs `-m gpu` without uvicorn
    import httpx

    from autombw_cli.sim.server import SimulatorHandle

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # copies of ../shared/fixtures
REPO_ROOT = Path(__file__).resolve().parents[1]
# every example config the project ships (tests load and `config check` each of them)
SHIPPED_CONFIGS = sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml"))

StartSim = Callable[..., "SimulatorHandle"]


def cli_exit_code(argv: list[str]) -> int:
    """Run ``autombw ARGV`` in-process through the CLI's entry point; its exit code."""
    from autombw_cli.cli import main  # imported here: conftest stays light for `-m gpu`

    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    """``start_sim(**options)`` starts a simulated WebUI on a free loopback port and returns
    its running handle; ``options`` are `SimulatedWebUI`'s (arch, latency_per_image, model_dir,
    auth, faults, api, bridge, nowebui). Every simulator started is stopped after the test,
    each with ``handle.stop(stop_timeout)``; stopping one the test already stopped is harmless.
    """
    with contextlib.ExitStack() as started:

        def start(*, stop_timeout: float = 10.0, **options: Any) -> SimulatorHandle:
            from autombw_cli.sim.server import start_simulator_in_thread

            handle = start_simulator_in_thread(**options)
            started.callback(handle.stop, stop_timeout)
            return handle

        yield start


@pytest.fixture
def sim_options() -> dict[str, Any]:
    """The options of the `sim` fixture's simulator; a test module overrides this fixture to
    change them (e.g. to give it a ``model_dir`` under ``tmp_path``)."""
    return {"arch": "sd1"}


@pytest.fixture
def sim(start_sim: StartSim, sim_options: dict[str, Any]) -> SimulatorHandle:
    """One simulated WebUI started with `sim_options`, stopped after the test."""
    return start_sim(**sim_options)


@pytest.fixture
def http(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    """An httpx client on the `sim` fixture's URL."""
    import httpx

    with httpx.Client(base_url=sim.url, timeout=30) as client:
        yield client
