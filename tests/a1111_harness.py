"""Start and drive a real AUTOMATIC1111 WebUI for the ``a1111`` integration tests.

The install comes from ``../shared/a1111/setup.sh`` (A1111 1.10.1, CPU, offline, random-weight
SD1.5 checkpoints ``rndA``/``rndB``, a tiny random-weight ImageReward in ``ir-tiny/``);
``AUTOMBW_A1111_ROOT`` points at it. The bridge is installed from *this* checkout (the test
process's ``autombw_cli``) before each WebUI start, so the suite tests the code under review,
not the copy ``setup.sh`` cloned.

Nothing here is a stand-in: the WebUI is A1111's own ``launch.py`` in its own Python 3.10
venv, and the checks go over HTTP exactly as ``autombw`` does.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT_ENV = "AUTOMBW_A1111_ROOT"
DEBUG_EXT = Path(__file__).resolve().parent / "a1111_debug_ext"
SLOTS = [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
SLOTS += ["OUT", "TIME_EMBED"]
PAYLOAD: dict[str, Any] = {
    "prompt": "a photo of a cat",
    "negative_prompt": "",
    "seed": 1234,
    "sampler_name": "Euler",
    "scheduler": "Automatic",
    "steps": 2,
    "cfg_scale": 7,
    "width": 64,
    "height": 64,
    "batch_size": 1,
    "n_iter": 1,
}


def a1111_root() -> Path | None:
    raw = os.environ.get(ROOT_ENV)
    return Path(raw) if raw else None


@dataclass
class Install:
    """The folders of a ``setup.sh`` install."""

    root: Path

    @property
    def webui(self) -> Path:
        return self.root / "stable-diffusion-webui"

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def models(self) -> Path:
        return self.webui / "models" / "Stable-diffusion"

    @property
    def ir_tiny(self) -> Path:
        return self.root / "ir-tiny"

    def missing(self) -> list[str]:
        need = [
            self.python,
            self.webui / "launch.py",
            self.models / "rndA.safetensors",
            self.models / "rndB.safetensors",
            self.ir_tiny / "ImageReward.pt",
            self.root / "hf",
        ]
        return [str(p) for p in need if not p.exists()]

    def install_extensions(self) -> None:
        """The bridge from this checkout, and the test-only ``/debug/live_hashes`` route."""
        from autombw_cli.webui.bridge.extension import install_extension

        install_extension(self.webui)
        target = self.webui / "extensions" / "zz-autombw-debug"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(DEBUG_EXT, target)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WebUI:
    """One running A1111 (its own process group), started by `start_webui`."""

    install: Install
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    args: tuple[str, ...]
    auth: tuple[str, str] | None = None
    started_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 60) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mb(self) -> float:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs) / 2**20
        except psutil.Error:
            return float("nan")

    # --- HTTP ---------------------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: tuple[str, str] | bool | None = True,
        timeout: float = 900,
    ) -> httpx.Response:
        use = self.auth if auth is True else (auth or None)
        with httpx.Client(timeout=timeout, auth=use) as client:
            return client.request(method, self.url + path, json=body)

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        t0 = time.monotonic()
        resp = self.call(method, path, body, **kw)
        self.timings[f"{method} {path}"] = time.monotonic() - t0
        assert resp.status_code == 200, f"{method} {path}: {resp.status_code} {resp.text[:800]}"
        return resp.json() if resp.content else None

    def txt2img(self, **overrides: Any) -> np.ndarray:
        """Decoded pixels (PNG bytes differ by infotext, pixels must not)."""
        ans = self.ok("POST", "/sdapi/v1/txt2img", {**PAYLOAD, **overrides})
        img = Image.open(io.BytesIO(base64.b64decode(ans["images"][0]))).convert("RGB")
        return np.asarray(img)

    def merge(self, weights: dict[str, float] | float, **extra: Any) -> dict[str, Any]:
        if not isinstance(weights, dict):
            weights = dict.fromkeys(SLOTS, float(weights))
        body = {"model_a": "rndA", "model_b": "rndB", "weights": weights, **extra}
        return self.ok("POST", "/autombw/v1/merge", body)

    def status(self) -> dict[str, Any]:
        return self.ok("GET", "/autombw/v1/status")

    def restore(self, free_caches: bool = False) -> dict[str, Any]:
        return self.ok("POST", "/autombw/v1/restore", {"free_caches": free_caches})

    def load(self, title: str) -> None:
        """A plain A1111 checkpoint switch (what a user does in the UI)."""
        self.ok("POST", "/sdapi/v1/options", {"sd_model_checkpoint": title})

    def refresh(self) -> None:
        self.ok("POST", "/sdapi/v1/refresh-checkpoints", {})

    def live_hashes(self, prefix: str = "") -> dict[str, str]:
        ans = self.ok("GET", f"/debug/live_hashes?prefix={prefix}")
        return {k: v[1] for k, v in ans["hashes"].items()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def start_webui(
    install: Install,
    log_dir: Path,
    *extra_args: str,
    auth: tuple[str, str] | None = None,
    ready_s: float = 600,
) -> WebUI:
    """Start A1111's launch.py on the CPU (as ``../shared/a1111/run-webui.sh`` does), with
    ``rndA`` loaded, and wait until the bridge answers and the model is loaded."""
    port = free_port()
    log_path = log_dir / f"webui-{port}.log"
    env = {
        **os.environ,
        "HF_HOME": str(install.root / "hf"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "2"),
    }
    for var in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(var, None)  # A1111 runs in its own venv, not ours
    args = (
        "--skip-prepare-environment",
        "--skip-install",
        "--skip-torch-cuda-test",
        "--skip-python-version-check",
        "--skip-version-check",
        "--no-download-sd-model",
        "--do-not-download-clip",
        "--use-cpu",
        "all",
        "--no-half",
        "--precision",
        "full",
        "--api",
        "--port",
        str(port),
        "--ckpt",
        str(install.models / "rndA.safetensors"),
        *extra_args,
    )
    if auth:
        args = (*args, "--api-auth", f"{auth[0]}:{auth[1]}")
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(install.python), "launch.py", *args],
            cwd=install.webui,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    webui = WebUI(install, proc, port, log_path, args, auth=auth)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"A1111 exited with {proc.returncode}:\n{webui.log_tail()}")
        text = webui.log_text() if log_path.exists() else ""
        if "Model loaded in" in text or "Startup time" in text:
            try:
                resp = webui.call("GET", "/sdapi/v1/options", timeout=10)
            except httpx.HTTPError:
                resp = None
            if resp is not None and resp.status_code == 200:
                model = resp.json().get("sd_model_checkpoint") or ""
                if "Model loaded in" in text and model:
                    webui.started_s = time.monotonic() - t0
                    return webui
        time.sleep(1.0)
    webui.stop()
    raise RuntimeError(f"A1111 not ready after {ready_s:.0f} s:\n{webui.log_tail()}")


def run_cli(*args: str, cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """``autombw ARGS`` as a user runs it (this checkout's package, a fresh process)."""
    return subprocess.run(
        [sys.executable, "-m", "autombw_cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def assert_offline_merge_equals(saved: Path, offline: Path, *merge_args: str, cwd: Path) -> None:
    """``autombw merge MERGE_ARGS -o OFFLINE`` (fp16) succeeds and writes exactly the tensors
    of ``saved``, the checkpoint the bridge saved."""
    done = run_cli("merge", *merge_args, "-o", str(offline), "--dtype", "fp16", "--force", cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert tensor_hashes(saved) == tensor_hashes(offline)


def tensor_hashes(path: Path) -> dict[str, str]:
    """sha1 of every tensor of a safetensors file, float tensors as float32 (as the debug
    route hashes the live model)."""
    import hashlib

    from safetensors import safe_open

    out = {}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            t = f.get_tensor(key)
            t = t.float() if t.is_floating_point() else t
            out[key] = hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()
    return out


def record(report: dict[str, Any]) -> None:
    """Append one measurement line to ``$AUTOMBW_A1111_REPORT`` (for BENCHMARKS.md)."""
    path = os.environ.get("AUTOMBW_A1111_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(report) + "\n")
