"""Safety: secrets never leak, the bridge warns when exposed, pickles never run code.

Already covered elsewhere (not repeated here):
- bridge save refusals (path traversal ``../``, ``..\\``, sub folders, absolute POSIX and Windows
  paths, reserved names CON/NUL/COM1/LPT9/aux, hidden and odd names, overwriting without the
  flag): tests/test_bridge_core.py::test_save_refuses_names_outside_a_plain_file,
  ::test_save_refuses_overwrite_without_flag and over HTTP
  tests/test_bridge_http.py::test_save_writes_only_into_the_checkpoint_folder;
- bridge routes need the ``--api-auth`` credentials:
  tests/test_bridge_http.py::test_bridge_routes_use_the_api_auth_credentials;
- the warning when an installed bridge starts in a WebUI with ``--listen`` and no ``--api-auth``:
  tests/test_bridge_extension.py (end-to-end with a stub WebUI);
- reading a ``.ckpt`` whose pickle runs code is refused without running it:
  tests/test_checkpoints_io.py::test_a_pickle_that_runs_code_is_refused_without_running_it;
- configs must name environment variables, not secrets:
  tests/test_config_errors.py::test_auth_must_name_variables_not_secrets.

Added here: a whole search (real subprocess) with credentials from the environment, grepping every
output for the secret (also base64-encoded, as it travels in the Basic header); a wrong password;
the exposure check over every listen/auth combination; the malicious pickle through the user-facing
commands (``merge``, ``recover``) and through the bridge's merge route.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import httpx
import pytest
import torch

from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from autombw_cli.sim.server import start_simulator_in_thread
from search_helpers import write_search_config

pytestmark = pytest.mark.timeout(180)

USER = "alice"
SECRET = "Sup3r-S3cret-pw-7f3a9"
WRONG = "Wr0ng-guess-pw-11c2e"


def _needles(*secrets: str) -> list[bytes]:
    out = []
    for s in secrets:
        out += [s.encode(), base64.b64encode(f"{USER}:{s}".encode())]
    return out


def _leaks(blobs: dict[str, bytes], secrets: list[bytes]) -> list[str]:
    return [name for name, data in blobs.items() for s in secrets if s in data]


def _autombw(*args: str, cwd: Path, password: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "SAFE_USER": USER, "SAFE_PASSWORD": password, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "autombw_cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=150,
    )


def _config(tmp_path: Path, url: str) -> Path:
    return write_search_config(
        tmp_path,
        instances=f"[{{url: '{url}', label: locked, auth: {{user_env: SAFE_USER, "
        f"password_env: SAFE_PASSWORD}}}}]",
        evaluations=6,
        outputs="{run_dir: runs, save_images: all, final_merge: true}",
    )


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="posix")
def test_credentials_never_reach_any_output(tmp_path: Path) -> None:
    with start_simulator_in_thread(0, auth=(USER, SECRET), latency_per_image=0.01) as sim:
        _config(tmp_path, sim.url)
        ok = _autombw(
            "search",
            "search.yaml",
            "--plain",
            "--json-log",
            "events.jsonl",
            cwd=tmp_path,
            password=SECRET,
        )
        assert ok.returncode == 0, ok.stderr.decode()
        check = _autombw("config", "check", "search.yaml", "--json", cwd=tmp_path, password=SECRET)
        (run_dir,) = (tmp_path / "runs").iterdir()
        resumed = _autombw(
            "search", "--resume", str(run_dir), "--plain", cwd=tmp_path, password=SECRET
        )
        bad = _autombw("search", "search.yaml", "--plain", cwd=tmp_path, password=WRONG)
        bad_debug = _autombw("--debug", "search", "search.yaml", cwd=tmp_path, password=WRONG)
        bad_doctor = _autombw("doctor", "search.yaml", cwd=tmp_path, password=WRONG)

    assert bad.returncode == 3 and bad_doctor.returncode == 3, bad.stderr.decode()
    assert bad_debug.returncode == 3 and b"Traceback" in bad_debug.stderr  # --debug: same code
    assert b"locked" in bad.stderr and (b"401" in bad.stderr or b"credential" in bad.stderr)
    files = {
        str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
    }
    assert any(k.endswith("history.csv") for k in files) and "events.jsonl" in files
    assert any(k.endswith("run.log") for k in files) and any(k.endswith(".png") for k in files)
    streams = {
        f"{name}.{kind}": getattr(proc, kind)
        for name, proc in [
            ("search", ok),
            ("config-check", check),
            ("resume", resumed),
            ("wrong-password", bad),
            ("wrong-password-debug", bad_debug),
            ("wrong-password-doctor", bad_doctor),
        ]
        for kind in ("stdout", "stderr")
    }
    leaks = _leaks({**files, **streams}, _needles(SECRET, WRONG))
    assert not leaks, f"the secret appears in {leaks}"
    # the resolved config keeps the variable names, so --resume can read them again
    assert b"SAFE_PASSWORD" in files[str((run_dir / "config.yaml").relative_to(tmp_path))]
    assert json.loads(check.stdout)  # config check answered


@pytest.mark.parametrize(
    ("listen", "share", "server_name", "api_auth", "warns"),
    [
        (False, False, None, None, False),  # A1111's default: 127.0.0.1 only
        (False, False, "127.0.0.1", None, False),
        (False, False, "localhost", None, False),
        (False, False, "::1", None, False),
        (True, False, None, None, True),  # --listen: 0.0.0.0
        (False, True, None, None, True),  # --share: a public gradio link
        (False, False, "0.0.0.0", None, True),  # --server-name 0.0.0.0
        (False, False, "192.168.1.20", None, True),
        (True, False, None, "user:pw", False),  # exposed but with --api-auth
        (False, False, "0.0.0.0", "a:b,c:d", False),
        (True, False, None, "no-colon", True),  # an --api-auth without a password pair
    ],
)
def test_bridge_warns_when_exposed_without_api_auth(
    listen: bool, share: bool, server_name: str | None, api_auth: str | None, warns: bool
) -> None:
    from autombw_cli.webui.bridge.a1111_host import A1111Host

    host = A1111Host.__new__(A1111Host)  # the WebUI's modules are not importable here
    host._shared = types.SimpleNamespace(  # type: ignore[attr-defined]
        cmd_opts=types.SimpleNamespace(
            listen=listen, share=share, server_name=server_name, api_auth=api_auth
        )
    )
    assert host.exposed_without_auth() is warns


@pytest.mark.parametrize(
    ("argv", "warns"),
    [
        # A1111 1.10.1 api_only(): uvicorn.run(host=gradio_server_name()) and that is None
        # without --listen/--server-name: uvicorn then binds every interface
        (["--nowebui"], True),
        (["--nowebui", "--api"], True),
        (["--nowebui", "--listen"], True),
        (["--nowebui", "--server-name", "127.0.0.1"], False),
        (["--nowebui", "--server-name", "0.0.0.0"], True),
        (["--nowebui", "--api-auth", "u:p"], False),
        (["--api"], False),  # UI mode: Gradio's server binds 127.0.0.1
    ],
)
def test_bridge_warns_for_api_only_webui_on_every_interface(argv: list[str], warns: bool) -> None:
    import argparse

    from autombw_cli.webui.bridge.a1111_host import A1111Host

    parser = argparse.ArgumentParser()  # the flags as modules/cmd_args.py declares them
    for flag in ("--listen", "--share", "--api", "--nowebui"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--server-name", type=str, default=None)
    parser.add_argument("--api-auth", type=str, default=None)
    host = A1111Host.__new__(A1111Host)
    host._shared = types.SimpleNamespace(cmd_opts=parser.parse_args(argv))  # type: ignore[attr-defined]
    assert host.exposed_without_auth() is warns


class _Evil:
    """A pickle payload: unpickling it calls os.makedirs(marker)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.makedirs, (self.marker,))


def _evil_ckpt(path: Path, marker: Path) -> Path:
    state = random_state_dict("sd1", "tiny", 1)
    torch.save({"state_dict": state, "x": _Evil(str(marker))}, path)
    return path


@pytest.mark.slow
def test_malicious_ckpt_is_refused_by_merge_and_recover(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    write_checkpoint(tmp_path / "a.safetensors", random_state_dict("sd1", "tiny", 2))
    _evil_ckpt(tmp_path / "evil.ckpt", marker)
    for args, code in [
        (["merge", "a.safetensors", "evil.ckpt", "--weights", "0.5", "-o", "out"], 4),
        (["merge", "evil.ckpt", "a.safetensors", "--weights", "0.5", "-o", "out"], 4),
        (["recover", "evil.ckpt"], None),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "autombw_cli", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode != 0 and (code is None or proc.returncode == code), proc.stderr
        first = proc.stderr.strip().splitlines()[0]
        assert first.startswith("error: ") and "evil.ckpt" in first, proc.stderr
        assert "Traceback" not in proc.stderr
        assert not marker.exists(), f"{args}: the pickle ran code"
    assert not (tmp_path / "out.safetensors").exists()


def test_bridge_refuses_a_malicious_ckpt_as_model_b(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with start_simulator_in_thread(0) as sim:
        _evil_ckpt(sim.sim.model_dir / "evil.ckpt", marker)
        httpx.post(sim.url + "/sdapi/v1/refresh-checkpoints", timeout=30)
        names = {m["model_name"] for m in httpx.get(sim.url + "/sdapi/v1/sd-models").json()}
        assert "evil" in names
        r = httpx.post(
            sim.url + "/autombw/v1/merge",
            json={"model_a": "simA", "model_b": "evil", "weights": {"IN00": 0.5}},
            timeout=60,
        )
        assert r.status_code >= 400, r.text
        assert "evil" in r.text
    assert not marker.exists(), "the bridge unpickled code"
