"""The WebUI's version per instance: the bridge's status reports it (A1111:
``modules.launch_utils.git_tag()``; the simulator: ``autombw-sim X``, the same string its renders
carry), and ``autombw doctor`` and the search's preflight show it."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from autombw_cli.blocks import Arch
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from autombw_cli.sim.host import SIM_WEBUI_VERSION, SimHost
from autombw_cli.webui.bridge.a1111_host import A1111Host
from autombw_cli.webui.bridge.core import BridgeCore
from autombw_cli.webui.models import BridgeStatus
from search_helpers import write_search_config


def test_bridge_status_reports_the_hosts_webui_version(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "simA.safetensors", random_state_dict(Arch.SD1, "tiny", 1))
    core = BridgeCore(SimHost(tmp_path), version="test")
    status = core.status()
    assert status["webui_version"] == SIM_WEBUI_VERSION
    assert BridgeStatus.model_validate(status).webui_version == SIM_WEBUI_VERSION


class _BrokenHost(SimHost):
    def webui_version(self) -> str:
        raise RuntimeError("git is not installed")


def test_a_version_that_cannot_be_read_does_not_break_status(tmp_path: Path) -> None:
    core = BridgeCore(_BrokenHost(tmp_path), version="test")
    assert core.status()["webui_version"] is None


@pytest.mark.parametrize(
    ("tag", "want"),
    [("v1.10.1", "v1.10.1"), ("v1.9.4-12-gabc1234\n", "v1.9.4-12-gabc1234"), ("<none>", None)],
)
def test_a1111_host_reads_launch_utils_git_tag(
    monkeypatch: pytest.MonkeyPatch, tag: str, want: str | None
) -> None:
    # A stand-in for A1111's own `modules` package (it cannot be installed here).
    modules = types.ModuleType("modules")
    launch_utils = types.ModuleType("modules.launch_utils")
    launch_utils.git_tag = lambda: tag  # type: ignore[attr-defined]
    modules.launch_utils = launch_utils  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.launch_utils", launch_utils)
    host = object.__new__(A1111Host)  # skip __init__: it binds the WebUI's other modules
    assert host.webui_version() == want


def test_a1111_before_launch_utils_has_no_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "modules", types.ModuleType("modules"))
    monkeypatch.delitem(sys.modules, "modules.launch_utils", raising=False)
    assert object.__new__(A1111Host).webui_version() is None


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from autombw_cli.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out + err


def test_doctor_shows_each_instances_webui_version(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = write_search_config(tmp_path, instances="{simulate: 2}")
    code, out = _main(["doctor", str(cfg)], capsys)
    assert code == 0, out
    rows = [line for line in out.splitlines() if "ready" in line]
    assert len(rows) == 2
    assert all("autombw-sim" in row for row in rows), out


@pytest.mark.slow
def test_search_preflight_prints_versions_and_the_summary_keeps_them(
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    import json

    cfg = write_search_config(
        tmp_path, evaluations=2, outputs="{run_dir: runs, save_images: none, final_merge: false}"
    )
    code, out = _main(["search", "--plain", str(cfg)], capsys)
    assert code == 0, out
    lines = [line for line in out.splitlines() if f"WebUI {SIM_WEBUI_VERSION}" in line]
    assert len(lines) == 2 and all("bridge " in line for line in lines), out
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {i["webui_version"] for i in summary["instances"].values()} == {SIM_WEBUI_VERSION}
