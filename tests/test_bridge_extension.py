"""`autombw webui install-extension`: the written folder is self-contained.

AUTOMATIC1111 cannot be installed here, so the extension is loaded in a subprocess next to a
small stand-in ``modules`` package (script_callbacks, shared, sd_models, call_queue) that
mimics the A1111 functions the bridge calls; ``autombw_cli`` is made unimportable there, so
the test fails if the extension reaches back into the installed package.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from autombw_cli.cli import app
from autombw_cli.errors import ConfigError
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from autombw_cli.webui.bridge.extension import (
    EXTENSION_NAME,
    PRIVATE_PACKAGE,
    collect_modules,
    install_extension,
    rewrite_source,
)

STUB_MODULES = {
    "__init__.py": "",
    "call_queue.py": "import threading\nqueue_lock = threading.Lock()\n",
    "launch_utils.py": "def git_tag():\n    return 'v1.10.1'\n",
    "script_callbacks.py": """
        app_started, model_loaded = [], []

        def on_app_started(fn):
            app_started.append(fn)

        def on_model_loaded(fn):
            model_loaded.append(fn)

        def app_started_callback(demo, app):
            for fn in app_started:
                fn(demo, app)
    """,
    "processing.py": """
        # modules/processing.py (A1111 1.10.1): conditionings cached in class attributes
        class StableDiffusionProcessing:
            cached_uc = [None, None]
            cached_c = [None, None]

        class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
            cached_hr_uc = [None, None]
            cached_hr_c = [None, None]
    """,
    "shared.py": """
        import types

        cmd_opts = types.SimpleNamespace(
            api_auth=None, listen=True, share=False, server_name=None, ckpt_dir=None
        )
        opts = types.SimpleNamespace(data={})
        sd_model = None

        def refresh_checkpoints():
            from modules import sd_models
            sd_models.list_models()
    """,
    "sd_models.py": """
        import os
        import types
        from pathlib import Path

        import torch
        from safetensors.torch import load_file

        from modules import script_callbacks, shared

        model_path = os.environ["STUB_MODELS"]
        checkpoints_list = {}

        def list_models():
            checkpoints_list.clear()
            for p in sorted(Path(model_path).glob("*.safetensors")):
                info = types.SimpleNamespace(
                    title=p.name, model_name=p.stem, name=p.name, filename=str(p), sha256=None
                )
                checkpoints_list[info.title] = info

        def get_closet_checkpoint_match(name):
            return checkpoints_list.get(name)

        def reload_model_weights(sd_model=None, info=None):
            root = torch.nn.Module()
            for key, t in load_file(info.filename).items():
                # A1111 wraps the text encoder: cond_stage_model.wrapped.transformer...
                key = key.replace("cond_stage_model.", "cond_stage_model.wrapped.")
                *path, leaf = key.split(".")
                mod = root
                for part in path:
                    if part not in mod._modules:
                        mod.add_module(part, torch.nn.Module())
                    mod = mod._modules[part]
                if t.is_floating_point():
                    mod.register_parameter(leaf, torch.nn.Parameter(t, requires_grad=False))
                else:
                    mod.register_buffer(leaf, t)
            root.sd_checkpoint_info = info
            shared.sd_model = root
            for fn in script_callbacks.model_loaded:
                fn(root)
            return root
    """,
}

FORGE_VERSION = "version = '2.0.1v1.10.1'\n"  # modules_forge/forge_version.py of Forge 2

# How A1111 1.10.1 loads an extension's script: modules/scripts.py load_scripts() swaps in a
# new sys.path with the extension's folder first, runs modules/script_loading.py load_module(),
# then puts the old sys.path object back (whatever the script added to sys.path is gone).
LOAD_LIKE_A1111 = """
import importlib.util
import os
import sys


def load_script_like_a1111(basedir, path):
    syspath = sys.path
    try:
        sys.path = [str(basedir)] + sys.path
        module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    finally:
        sys.path = syspath
"""

DRIVER = (
    LOAD_LIKE_A1111
    + """
import importlib.abc
import json
from pathlib import Path


class NoAutombw(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "autombw_cli" or name.startswith("autombw_cli."):
            raise ImportError("the extension must not import autombw_cli")
        return None


sys.meta_path.insert(0, NoAutombw())
ext = Path(sys.argv[1])
from modules import script_callbacks, sd_models, shared  # noqa: E402

sd_models.list_models()
sd_models.reload_model_weights(info=sd_models.checkpoints_list["simA.safetensors"])
load_script_like_a1111(ext, str(ext / "scripts" / "autombw_bridge.py"))
assert str(ext) not in sys.path

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

app = FastAPI()
script_callbacks.app_started_callback(None, app)
client = TestClient(app)
slots = ["IN%02d" % i for i in range(12)] + ["M00"] + ["OUT%02d" % i for i in range(12)]
weights = dict.fromkeys(slots + ["OUT", "TIME_EMBED"], 0.5)
te_key = "cond_stage_model.wrapped.transformer.text_model.final_layer_norm.weight"
te_before = shared.sd_model.state_dict()[te_key].clone()
from modules import processing  # noqa: E402

P, T = processing.StableDiffusionProcessing, processing.StableDiffusionProcessingTxt2Img
CONDS = [(P, "cached_c"), (P, "cached_uc"), (T, "cached_hr_c"), (T, "cached_hr_uc")]
for cls, attr in CONDS:
    setattr(cls, attr, [("a cat", 20), "conditioning of A's text encoder"])
out = {"status": client.get("/autombw/v1/status").json()}
merged = client.post(
    "/autombw/v1/merge",
    json={"model_a": "simA", "model_b": "simB", "weights": weights, "text_encoder_weight": 0.5},
)
out["merge"] = [merged.status_code, merged.json()]
out["te_changed"] = not bool((shared.sd_model.state_dict()[te_key] == te_before).all())
out["conds_after_merge"] = [getattr(cls, attr) for cls, attr in CONDS]
out["live"] = client.get("/autombw/v1/status").json()["merge_live"]
out["save"] = client.post("/autombw/v1/save", json={"name": "bridged"}).json()
as_ckpt = {"name": "bridged", "format": "ckpt", "overwrite": True}  # its recipe file exists
out["save_ckpt"] = client.post("/autombw/v1/save", json=as_ckpt).json()
sd_models.reload_model_weights(info=sd_models.checkpoints_list["simB.safetensors"])
out["after_reload"] = client.get("/autombw/v1/status").json()
out["autombw_cli_loaded"] = [m for m in sys.modules if m.startswith("autombw_cli")]
print("RESULT " + json.dumps(out))
"""
)


ROUTES_DRIVER = (
    LOAD_LIKE_A1111
    + """
import json
from pathlib import Path

ext = Path(sys.argv[1])
from modules import script_callbacks, sd_models  # noqa: E402

sd_models.list_models()
load_script_like_a1111(ext, str(ext / "scripts" / "autombw_bridge.py"))

from fastapi import FastAPI  # noqa: E402

app = FastAPI()
script_callbacks.app_started_callback(None, app)  # A1111 fires it after load_scripts()
out = {"paths": sorted(r.path for r in app.routes), "ext_on_path": str(ext) in sys.path}
print("RESULT " + json.dumps(out))
"""
)


FORGE_DRIVER = (
    LOAD_LIKE_A1111
    + """
import json
from pathlib import Path

ext = Path(sys.argv[1])
from modules import script_callbacks, sd_models  # noqa: E402

sd_models.forge_model_reload = lambda: None  # Forge 2's lazy loader (modules/sd_models.py)
sd_models.list_models()
load_script_like_a1111(ext, str(ext / "scripts" / "autombw_bridge.py"))

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

app = FastAPI()
script_callbacks.app_started_callback(None, app)
client = TestClient(app)
weights = {"IN00": 0.5}
calls = {
    "status": client.get("/autombw/v1/status"),
    "merge": client.post("/autombw/v1/merge", json={"model_a": "simA", "model_b": "simB",
                                                     "weights": weights}),
    "restore": client.post("/autombw/v1/restore", json={}),
    "save": client.post("/autombw/v1/save", json={"name": "x", "weights": weights}),
}
out = {name: [r.status_code, r.json()] for name, r in calls.items()}
print("RESULT " + json.dumps(out))
"""
)


@pytest.fixture
def webui(tmp_path: Path) -> Path:
    root = tmp_path / "stable-diffusion-webui"
    (root / "extensions").mkdir(parents=True)
    (root / "webui.py").write_text("# stand-in\n")
    return root


def write_stub(tmp_path: Path) -> tuple[Path, Path]:
    stub = tmp_path / "stub"
    (stub / "modules").mkdir(parents=True)
    for name, text in STUB_MODULES.items():
        (stub / "modules" / name).write_text(textwrap.dedent(text))
    models = tmp_path / "models"
    models.mkdir()
    write_checkpoint(models / "simA.safetensors", random_state_dict("sd1", "tiny", 1))
    write_checkpoint(models / "simB.safetensors", random_state_dict("sd1", "tiny", 2))
    return stub, models


def test_installed_extension_runs_standalone_in_a_stand_in_webui(
    webui: Path, tmp_path: Path
) -> None:
    ext = install_extension(webui, version="9.9.9")
    assert ext == webui / "extensions" / EXTENSION_NAME
    assert (ext / "VERSION").read_text().strip() == "9.9.9"
    stub, models = write_stub(tmp_path)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = subprocess.run(
        [sys.executable, str(driver), str(ext)],
        capture_output=True,
        text=True,
        timeout=240,
        env={"PYTHONPATH": str(stub), "STUB_MODELS": str(models), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    assert out["status"]["version"] == "9.9.9" and out["status"]["host"] == "a1111"
    assert out["merge"][0] == 200, out["merge"]
    assert "BASE" in out["merge"][1]["changed_blocks"] and out["te_changed"] is True
    assert out["conds_after_merge"] == [[None, None]] * 4  # A1111's cond caches reset
    assert out["live"] is True
    assert Path(out["save"]["path"]).parent == models.resolve(), out["save"]
    assert out["status"]["webui_version"] == "v1.10.1"  # modules.launch_utils.git_tag()
    ckpt = torch.load(out["save_ckpt"]["path"], weights_only=True)["state_dict"]
    assert ckpt.keys() == load_file(out["save"]["path"]).keys()
    assert out["after_reload"]["merge_live"] is False
    assert out["autombw_cli_loaded"] == []
    assert "without --api-auth" in proc.stdout  # listening beyond loopback: a warning


def run_driver(
    driver_text: str, ext: Path, tmp_path: Path, *, extra_modules: dict[str, str] | None = None
) -> dict:
    stub, models = write_stub(tmp_path)
    for name, text in (extra_modules or {}).items():
        (stub / name).parent.mkdir(parents=True, exist_ok=True)
        (stub / name).write_text(text)
    driver = tmp_path / "driver.py"
    driver.write_text(driver_text)
    proc = subprocess.run(
        [sys.executable, str(driver), str(ext)],
        capture_output=True,
        text=True,
        timeout=240,
        env={"PYTHONPATH": str(stub), "STUB_MODELS": str(models), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return {**json.loads(line[len("RESULT ") :]), "stdout": proc.stdout}


def test_routes_register_when_a1111_restored_sys_path_before_app_started(
    webui: Path, tmp_path: Path
) -> None:
    """A1111 undoes the script's sys.path changes before on_app_started fires: the callback
    must not import from the extension's folder (it did: ModuleNotFoundError)."""
    ext = install_extension(webui, version="9.9.9")
    out = run_driver(ROUTES_DRIVER, ext, tmp_path)
    assert out["ext_on_path"] is False
    for route in ("status", "merge", "restore", "save"):
        assert f"/autombw/v1/{route}" in out["paths"]


def test_forge_gets_routes_that_refuse_with_the_reason(webui: Path, tmp_path: Path) -> None:
    """Forge keeps its model outside an A1111 LatentDiffusion: the bridge must say so on every
    route (501 UnsupportedWebUI) and in the console, not merge into nothing or vanish (404
    would read as "not installed")."""
    ext = install_extension(webui, version="9.9.9")
    forge = {"modules_forge/__init__.py": "", "modules_forge/forge_version.py": FORGE_VERSION}
    out = run_driver(FORGE_DRIVER, ext, tmp_path, extra_modules=forge)
    for route in ("status", "merge", "restore", "save"):
        status, body = out[route]
        assert status == 501, (route, body)
        assert body["error"] == "UnsupportedWebUI"
        assert "Forge 2.0.1v1.10.1" in body["detail"] and "not supported" in body["detail"]
        assert "autombw merge" in body["hint"]
    assert "autombw bridge 9.9.9: Stable Diffusion WebUI Forge" in out["stdout"]


def test_the_client_reads_the_forge_refusal_as_a_setup_problem(webui: Path, tmp_path: Path) -> None:
    """The bridge's real 501 answer becomes `UnsupportedWebUI` (not a retryable server error),
    with the bridge's reason and hint."""
    import httpx

    from autombw_cli.webui.errors import UnsupportedWebUI, WebUIServerError
    from autombw_cli.webui.mapping import raise_for_status

    ext = install_extension(webui, version="9.9.9")
    forge = {"modules_forge/__init__.py": "", "modules_forge/forge_version.py": FORGE_VERSION}
    status, body = run_driver(FORGE_DRIVER, ext, tmp_path, extra_modules=forge)["merge"]
    resp = httpx.Response(status, json=body)
    with pytest.raises(UnsupportedWebUI) as caught:
        raise_for_status(
            resp,
            method="POST",
            path="/autombw/v1/merge",
            what="merge",
            instance="forge-box",
            url="http://127.0.0.1:7860",
            user=None,
        )
    assert not isinstance(caught.value, WebUIServerError)
    assert "Forge" in caught.value.message and "autombw merge" in (caught.value.hint or "")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o027, 0o750)])
def test_installed_folder_mode_follows_the_umask(webui: Path, umask: int, mode: int) -> None:
    """The WebUI may run as another user: the folder must not be mkdtemp's 0700."""
    old = os.umask(umask)
    try:
        ext = install_extension(webui, version="1.0.0")
    finally:
        os.umask(old)
    assert stat.S_IMODE(ext.stat().st_mode) == mode
    for folder in (ext / "scripts", ext / PRIVATE_PACKAGE):
        assert stat.S_IMODE(folder.stat().st_mode) == mode
    assert stat.S_IMODE((ext / "scripts" / "autombw_bridge.py").stat().st_mode) == mode & 0o666


def test_reinstall_upgrades_in_place(webui: Path) -> None:
    ext = install_extension(webui, version="1.0.0")
    (ext / "stale.txt").write_text("from the old version")
    again = install_extension(webui, version="1.1.0")
    assert again == ext and (ext / "VERSION").read_text().strip() == "1.1.0"
    assert not (ext / "stale.txt").exists()
    assert [p.name for p in (webui / "extensions").iterdir()] == [EXTENSION_NAME]


def test_install_removes_what_an_interrupted_install_left(webui: Path) -> None:
    """A killed install leaves hidden staging folders in extensions/; A1111 1.10.1 loads hidden
    folders too (a second copy of the bridge), so the next install removes old ones."""
    extensions = webui / "extensions"
    stale_new = extensions / f".{EXTENSION_NAME}.new-0badf00d"
    stale_old = extensions / f".{EXTENSION_NAME}.old-0badf00d"
    fresh = extensions / f".{EXTENSION_NAME}.new-5ec0d5ec"  # an install running right now
    for folder in (stale_new, stale_old, fresh):
        (folder / "scripts").mkdir(parents=True)
        (folder / "scripts" / "autombw_bridge.py").write_text("# a half-written copy\n")
    other = extensions / "sd-webui-other"
    other.mkdir()
    hour_ago = time.time() - 3600
    for path in (stale_new, stale_old, other):
        os.utime(path, (hour_ago, hour_ago))
    install_extension(webui, version="1.0.0")
    names = sorted(p.name for p in extensions.iterdir())
    assert names == sorted([EXTENSION_NAME, fresh.name, other.name])


def test_refuses_a_folder_it_did_not_write_and_a_non_webui(webui: Path, tmp_path: Path) -> None:
    (webui / "extensions" / EXTENSION_NAME).mkdir()
    with pytest.raises(ConfigError, match="not written by autombw"):
        install_extension(webui)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ConfigError, match="does not look like"):
        install_extension(plain)


def test_module_closure_and_import_rewrite() -> None:
    names = {m.name for m in collect_modules()}
    assert {
        "autombw_cli.webui.bridge.core",
        "autombw_cli.merging.kernels",
        "autombw_cli.blocks",
        "autombw_cli.webui.endpoints",
    } <= names
    assert not any(n.startswith(("autombw_cli.sim", "autombw_cli.cli")) for n in names)
    text = "from autombw_cli.blocks import Arch\n    import autombw_cli.errors\nx = 'autombw_cli'\n"
    assert rewrite_source(text) == (
        f"from {PRIVATE_PACKAGE}.blocks import Arch\n    import {PRIVATE_PACKAGE}.errors\n"
        "x = 'autombw_cli'\n"
    )


def test_cli_print_path_writes_nothing(webui: Path) -> None:
    result = CliRunner().invoke(app, ["webui", "install-extension", str(webui), "--print-path"])
    assert result.exit_code == 0
    assert result.stdout.strip() == str(webui / "extensions" / EXTENSION_NAME)
    assert not (webui / "extensions" / EXTENSION_NAME).exists()
    result = CliRunner().invoke(app, ["webui", "install-extension", str(webui)])
    assert result.exit_code == 0 and (webui / "extensions" / EXTENSION_NAME / "VERSION").exists()
