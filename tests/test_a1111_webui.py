"""The bridge and the search inside a real AUTOMATIC1111 1.10.1 (CPU, offline).

Marked ``a1111``; skipped unless ``AUTOMBW_A1111_ROOT`` points at an install made by
``../shared/a1111/setup.sh``. Run (minutes on 2 cores; each WebUI start is ~1 min):

    AUTOMBW_A1111_ROOT=/tmp/a1111 python -m pytest -m a1111 -v tests/test_a1111_webui.py

Two WebUIs are started from this checkout's bridge: one in UI mode with ``--api-auth`` (as a
LAN user runs it), one API-only (``--nowebui``) without auth. Scores come from a random-weight
tiny ImageReward and mean nothing: these tests check the WebUI path (bridge loading, merge,
render, restore, save, caches), with pixels and tensors compared exactly.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from a1111_harness import (
    SLOTS,
    Install,
    WebUI,
    a1111_root,
    assert_offline_merge_equals,
    record,
    run_cli,
    start_webui,
    tensor_hashes,
)

ROOT = a1111_root()
pytestmark = [
    pytest.mark.a1111,
    pytest.mark.skipif(ROOT is None, reason="set AUTOMBW_A1111_ROOT to a ../shared/a1111 install"),
    pytest.mark.timeout(3600),
]
AUTH = ("autombw", "it-secret")
_MIX = "0 .7 .3 1 .6 .2 .9 .5 .1 .8 .4 0 .7 .3 1 .6 .2 .9 .5 .1 .8 .4 0 .7 .3 1 .6"
MIX = dict(zip(SLOTS, map(float, _MIX.split()), strict=True))


@pytest.fixture(scope="module")
def install() -> Install:
    assert ROOT is not None
    inst = Install(ROOT)
    missing = inst.missing()
    if missing:
        pytest.fail(f"{ROOT} is not a complete ../shared/a1111/setup.sh install: {missing}")
    inst.install_extensions()
    return inst


@pytest.fixture(scope="module")
def webui(install: Install, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUI]:
    """A1111 in UI mode with --api-auth, rndA loaded."""
    w = start_webui(install, tmp_path_factory.mktemp("webui"), auth=AUTH)
    record({"what": "start", "mode": "ui+api-auth", "s": round(w.started_s, 1),
            "rss_mb": round(w.rss_mb())})  # fmt: skip
    yield w
    if w.proc.poll() is None:  # api_only() stops it first when the nowebui tests run
        record({"what": "end", "mode": "ui+api-auth", "rss_mb": round(w.rss_mb())})
    w.stop()


@pytest.fixture(scope="module")
def scratch(install: Install) -> Iterator[Path]:
    """A sub-folder of the WebUI's checkpoint folder for offline files (removed after)."""
    folder = install.models / "autombw-it"
    folder.mkdir(exist_ok=True)
    yield folder
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


@pytest.fixture(scope="module")
def plain_a(webui: WebUI) -> np.ndarray:
    webui.restore(free_caches=True)
    webui.load("rndA.safetensors")
    return webui.txt2img()


def assert_bridge_save_equals(
    webui: WebUI, install: Install, ref: dict[str, str], stem: str, *recipe_lines: str
) -> None:
    """The bridge's fp32 save of the live merge has the tensors ``ref`` and a recipe with
    ``recipe_lines``; the saved files are removed again."""
    name = f"{stem}-{int(time.time())}"
    try:
        saved = webui.ok("POST", "/autombw/v1/save", {"name": name, "dtype": "fp32"})
        assert tensor_hashes(Path(saved["path"])) == ref
        recipe = Path(saved["recipe_path"]).read_text(encoding="utf-8").splitlines()
        assert all(line in recipe for line in recipe_lines), recipe
    finally:
        for p in install.models.glob(f"{name}*"):
            p.unlink()


def assert_restore_gives_plain_a(webui: WebUI, install: Install, plain_a: np.ndarray) -> None:
    """Restore (caches freed): the live model holds A's tensors and renders A's pixels."""
    webui.restore(free_caches=True)
    a_ref = tensor_hashes(install.models / "rndA.safetensors")
    live = webui.live_hashes()
    assert not [k for k in a_ref if k in live and live[k] != a_ref[k]]
    assert np.array_equal(webui.txt2img(), plain_a)


def assert_checkpoint_renders(webui: WebUI, title: str, pixels: np.ndarray) -> None:
    """A1111 itself loads ``title`` (an offline merge) and renders ``pixels``; then A again."""
    webui.refresh()
    webui.load(title)
    assert np.array_equal(webui.txt2img(), pixels)
    webui.load("rndA.safetensors")


def offline_merge(install: Install, out: Path, *args: str) -> Path:
    t0 = time.monotonic()
    done = run_cli(
        "merge",
        str(install.models / "rndA.safetensors"),
        str(install.models / "rndB.safetensors"),
        "-o",
        str(out),
        "--dtype",
        "fp32",
        "--force",
        *args,
        cwd=out.parent,
    )
    assert done.returncode == 0, done.stderr
    record({"what": "offline merge fp32 (autombw merge)", "s": round(time.monotonic() - t0, 1)})
    return out


def weights_text(weights: dict[str, float]) -> str:
    return ",".join(f"{k}:{v}" for k, v in weights.items())


# --- the bridge loads and is guarded ----------------------------------------------------------
def test_bridge_loads_in_a1111(webui: WebUI) -> None:
    status = webui.status()
    assert status["host"] == "a1111"
    assert status["webui_version"] == "v1.10.1"
    log = webui.log_text()
    assert "Error executing callback" not in log, webui.log_tail()
    assert "routes under /autombw/v1/ are ready" in log


def test_api_auth_is_enforced_on_the_bridge_routes(webui: WebUI) -> None:
    for method, path, body in [
        ("GET", "/autombw/v1/status", None),
        ("POST", "/autombw/v1/merge", {"model_a": "rndA", "model_b": "rndB", "weights": {}}),
        ("POST", "/autombw/v1/restore", {}),
        ("POST", "/autombw/v1/save", {"name": "x", "weights": {}}),
    ]:
        assert webui.call(method, path, body, auth=None).status_code == 401, path
        assert webui.call(method, path, body, auth=("autombw", "wrong")).status_code == 401
    assert webui.call("GET", "/autombw/v1/status").status_code == 200


# --- merges are what they say -----------------------------------------------------------------
def test_weight_zero_is_plain_a_and_restore_gives_plain_a(
    webui: WebUI, plain_a: np.ndarray, install: Install
) -> None:
    t0 = time.monotonic()
    webui.merge(0.0)
    took = round(time.monotonic() - t0, 1)
    record(
        {"what": "first bridge merge, all weights 0", "s": took, "rss_mb": round(webui.rss_mb())}
    )
    assert np.array_equal(webui.txt2img(), plain_a)
    t0 = time.monotonic()
    webui.merge(1.0)
    record(
        {
            "what": "bridge merge, all weights 1 (reads B's blocks into the cache)",
            "s": round(time.monotonic() - t0, 1),
        }
    )
    assert not np.array_equal(webui.txt2img(), plain_a)
    webui.restore()
    assert np.array_equal(webui.txt2img(), plain_a)
    live = webui.live_hashes()
    ref = tensor_hashes(install.models / "rndA.safetensors")
    differ = [k for k in ref if k in live and live[k] != ref[k]]
    assert not differ, differ[:5]


def test_bridge_merge_equals_offline_merge_tensors_and_pixels(
    webui: WebUI, install: Install, scratch: Path
) -> None:
    out = offline_merge(install, scratch / "mix.safetensors", "-w", weights_text(MIX))
    ref = tensor_hashes(out)
    t0 = time.monotonic()
    webui.merge(MIX)
    record({"what": "bridge merge, 27 blocks changed, caches warm",
            "s": round(time.monotonic() - t0, 1), "rss_mb": round(webui.rss_mb())})  # fmt: skip
    live = webui.live_hashes()
    missing = [k for k in ref if k not in live]
    differ = [k for k in ref if k in live and live[k] != ref[k]]
    assert not missing and not differ, (missing[:5], differ[:5])
    bridge_pixels = webui.txt2img()
    webui.restore(free_caches=True)  # A1111 + the bridge's CPU caches + a 4 GB load: > 20 GB
    webui.refresh()
    webui.load("autombw-it/mix.safetensors")
    assert np.array_equal(webui.txt2img(), bridge_pixels)
    assert webui.status()["merge_live"] is False  # a plain checkpoint load ends the merge
    webui.load("rndA.safetensors")


def test_text_encoder_merge_changes_the_render_of_an_already_rendered_prompt(
    webui: WebUI, install: Install, scratch: Path, plain_a: np.ndarray
) -> None:
    out = offline_merge(
        install, scratch / "te.safetensors", "-w", "0", "--text-encoder-weight", "1"
    )
    webui.restore(free_caches=True)
    webui.refresh()
    webui.load("autombw-it/te.safetensors")
    plain_te = webui.txt2img()
    assert not np.array_equal(plain_te, plain_a)
    webui.load("rndA.safetensors")
    assert np.array_equal(webui.txt2img(), plain_a)  # A's conds for this prompt now cached
    webui.merge(0.0, text_encoder_weight=1.0)
    live = webui.live_hashes("cond_stage_model.")
    ref = {k: v for k, v in tensor_hashes(out).items() if k.startswith("cond_stage_model.")}
    assert ref and all(live.get(k) == v for k, v in ref.items())
    assert np.array_equal(webui.txt2img(), plain_te), "stale conds: A1111's cond cache was kept"
    webui.restore()
    assert np.array_equal(webui.txt2img(), plain_a), "restore must drop the merged conds too"


def test_the_bridge_never_overwrites_the_pair_it_holds(webui: WebUI, install: Install) -> None:
    a_file = install.models / "rndA.safetensors"
    before = (a_file.stat().st_mtime_ns, a_file.stat().st_size)
    webui.merge(0.5)
    body = {"name": "rndA", "weights": dict.fromkeys(SLOTS, 0.5), "overwrite": True}
    resp = webui.call("POST", "/autombw/v1/save", body)
    assert resp.status_code >= 400, resp.text
    assert (a_file.stat().st_mtime_ns, a_file.stat().st_size) == before
    webui.restore()


def write_base_model(install: Install, path: Path) -> Path:
    """A third SD1.5 checkpoint for add difference ("B's base"): half of rndB, tensor by
    tensor (same keys and shapes, distinct from A and B, the same bytes every run)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(install.models / "rndB.safetensors"), "pt") as f:
        state = {
            k: (t * 0.5).to(t.dtype) if t.is_floating_point() else t
            for k in f.keys()  # noqa: SIM118 (safe_open is not a mapping)
            for t in [f.get_tensor(k)]
        }
    save_file(state, str(path))
    return path


def assert_one_key_is_add_difference(install: Install, rnd_c: Path, ref: dict[str, str]) -> None:
    """One IN01 tensor of the merge is A + (B - C) * w, not the weighted sum of A and B."""
    import hashlib

    from safetensors import safe_open

    from autombw_cli.merging.kernels import add_difference_tensor, lerp_tensor

    key = "model.diffusion_model.input_blocks.1.0.in_layers.0.weight"
    tensors = []
    for path in (install.models / "rndA.safetensors", install.models / "rndB.safetensors", rnd_c):
        with safe_open(str(path), "pt") as f:
            tensors.append(f.get_tensor(key))
    a, b, c = tensors

    def sha1(t: object) -> str:
        return hashlib.sha1(t.float().contiguous().numpy().tobytes()).hexdigest()  # type: ignore[attr-defined]

    assert ref[key] == sha1(add_difference_tensor(a.float(), b, c, MIX["IN01"]))
    assert ref[key] != sha1(lerp_tensor(a.float(), b, MIX["IN01"]))


def test_add_difference_bridge_merge_equals_offline_merge_restore_and_save(
    webui: WebUI, install: Install, scratch: Path, plain_a: np.ndarray
) -> None:
    """A + (B - C) * w in the real WebUI: the live tensors equal `autombw merge --model-c`,
    the render equals loading that file, restore gives A's tensors back, and the bridge's save
    writes the same tensors as the offline merge."""
    webui.restore(free_caches=True)  # room for three UNet copies in the bridge's CPU cache
    rnd_c = write_base_model(install, scratch / "rndC.safetensors")
    webui.refresh()
    t0 = time.monotonic()
    out = offline_merge(install, scratch / "addiff.safetensors", "-w", weights_text(MIX),
                        "--model-c", str(rnd_c))  # fmt: skip
    record({"what": "offline add-difference merge fp32 (autombw merge --model-c)",
            "s": round(time.monotonic() - t0, 1)})  # fmt: skip
    ref = tensor_hashes(out)
    t0 = time.monotonic()
    answer = webui.merge(MIX, formula="add_difference", model_c="rndC.safetensors")
    record({"what": "first add-difference bridge merge (caches A, B and C)",
            "s": round(time.monotonic() - t0, 1), "rss_mb": round(webui.rss_mb())})  # fmt: skip
    assert answer["formula"] == "add_difference" and answer["model_c"].startswith("autombw-it")
    status = webui.status()
    assert status["formula"] == "add_difference"
    assert status["model_c"]["file"].endswith("rndC.safetensors")
    live = webui.live_hashes()
    missing = [k for k in ref if k not in live]
    differ = [k for k in ref if k in live and live[k] != ref[k]]
    assert not missing and not differ, (missing[:5], differ[:5])
    assert_one_key_is_add_difference(install, rnd_c, ref)
    bridge_pixels = webui.txt2img()
    assert not np.array_equal(bridge_pixels, plain_a)

    assert_bridge_save_equals(
        webui, install, ref, "autombw-it-addiff",
        "modelC=rndC.safetensors", "merge_mode=Add difference",
    )  # fmt: skip
    assert_restore_gives_plain_a(webui, install, plain_a)
    assert_checkpoint_renders(webui, "autombw-it/addiff.safetensors", bridge_pixels)
    for p in (rnd_c, out):
        p.unlink()
    webui.refresh()


def write_test_lora(install: Install, path: Path) -> Path:
    """A kohya-named random LoRA (rank 4, alpha 2) over rndA's real SD1 keys: the transformer
    blocks' layers and the text encoder."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from autombw_cli.blocks import Arch
    from autombw_cli.sim.loras import lora_for_shapes

    with safe_open(str(install.models / "rndA.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_for_shapes(shapes, Arch.SD1, seed=7), str(path))
    return path


def test_lora_block_weights_equal_the_offline_bake_and_a1111s_own_lora(
    webui: WebUI, install: Install, scratch: Path, plain_a: np.ndarray
) -> None:
    """formula lora in the real WebUI: at strength 1 everywhere the render is A1111's own
    ``<lora:...:1>``; with a strength per block the live tensors equal `autombw merge --lora`,
    the render equals loading that file, the save writes the same tensors, restore gives A."""
    webui.restore(free_caches=True)
    lora = write_test_lora(install, install.models.parent / "Lora" / "autombw-it-lora.safetensors")
    try:
        # A1111's own LoRA at multiplier 1 (then a plain render: A1111 puts A back)
        tagged = webui.txt2img(prompt="a photo of a cat <lora:autombw-it-lora:1>")
        assert not np.array_equal(tagged, plain_a)
        assert np.array_equal(webui.txt2img(), plain_a)
        ones = dict.fromkeys(SLOTS, 1.0)
        t0 = time.monotonic()
        answer = webui.merge(ones, model_b="autombw-it-lora", formula="lora",
                             text_encoder_weight=1.0)  # fmt: skip
        record({"what": "first LoRA bridge merge (places the LoRA, caches its deltas)",
                "s": round(time.monotonic() - t0, 1), "rss_mb": round(webui.rss_mb())})  # fmt: skip
        assert answer["formula"] == "lora" and answer["model_b"] == "autombw-it-lora"
        ours = webui.txt2img()
        gap = np.abs(ours.astype(int) - tagged.astype(int)).mean()
        record({"what": "LoRA at 1: bridge vs A1111 <lora:..:1>, mean |pixel diff|",
                "value": float(gap), "exact": bool(np.array_equal(ours, tagged))})  # fmt: skip
        assert gap < 0.1 * np.abs(ours.astype(int) - plain_a.astype(int)).mean()

        out = scratch / "lora-baked.safetensors"
        done = run_cli("merge", str(install.models / "rndA.safetensors"), str(lora), "--lora",
                       "-w", weights_text(MIX), "-o", str(out), "--dtype", "fp32", "--force",
                       cwd=scratch)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (scratch / "lora-baked.lbw.txt").read_text().startswith("lora-baked:0,")
        ref = tensor_hashes(out)
        t0 = time.monotonic()
        webui.merge(MIX, model_b="autombw-it-lora", formula="lora")
        record({"what": "LoRA bridge merge, strengths per block, deltas cached",
                "s": round(time.monotonic() - t0, 1)})  # fmt: skip
        assert webui.status()["formula"] == "lora"
        live = webui.live_hashes()
        differ = [k for k in ref if live.get(k) != ref[k]]
        assert not differ, differ[:5]
        bridge_pixels = webui.txt2img()
        assert not np.array_equal(bridge_pixels, plain_a)

        assert_bridge_save_equals(webui, install, ref, "autombw-it-lora", "merge_mode=LoRA")
        assert_restore_gives_plain_a(webui, install, plain_a)
        assert_checkpoint_renders(webui, "autombw-it/lora-baked.safetensors", bridge_pixels)
    finally:
        lora.unlink()
        webui.refresh()


class _Evil:
    """A pickle payload: unpickling it calls os.makedirs(marker)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.makedirs, (self.marker,))


def test_a_ckpt_that_runs_code_is_refused_inside_a1111(
    webui: WebUI, install: Install, tmp_path: Path
) -> None:
    """The bridge's own reader inside the real WebUI (torch 2.1.2): a .ckpt whose pickle would
    run code is refused with a message naming the file, and the code never runs."""
    import torch

    marker = tmp_path / "pwned"
    evil = install.models / "zzEvil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Evil(str(marker))}, evil)
    try:
        webui.refresh()
        resp = webui.call(
            "POST",
            "/autombw/v1/merge",
            {"model_a": "rndA", "model_b": "zzEvil", "weights": dict.fromkeys(SLOTS, 0.5)},
        )
        assert 400 <= resp.status_code < 500, resp.text
        assert "zzEvil.ckpt" in resp.json()["detail"], resp.text
        assert not marker.exists()
    finally:
        evil.unlink()
        webui.refresh()


# --- the CLI against the real WebUI -----------------------------------------------------------
def write_config(
    path: Path, install: Install, url: str, *, output: str, auth: bool, evaluations: int,
    final_merge: bool, run_dir: Path, text_encoder: bool = False,
) -> Path:  # fmt: skip
    ir = install.ir_tiny
    auth_line = "    auth: {user_env: AMBW_IT_USER, password_env: AMBW_IT_PASS}\n" if auth else ""
    initial = ""
    if text_encoder:
        held = ",".join(f"{s}:0" for s in SLOTS) + ",BASE:1"
        initial = f'  initial: {{weights: "{held}"}}\n'
    path.write_text(
        f"""models: {{a: rndA.safetensors, b: rndB.safetensors, output: {output}, arch: sd1}}
instances:
  - url: {url}
    label: cpu0
    timeouts: {{stall: 600}}
{auth_line}payloads: {{files: [payload.json]}}
scorer:
  name: imagereward
  device: cpu
  batch_size: 4
  tally: arithmetic
  paths:
    checkpoint: {ir / "ImageReward.pt"}
    med_config: {ir / "med_config.json"}
    tokenizer: {ir / "vocab.txt"}
search:
  blocks: all
  intervals: 10
{initial}  passes: [{{optimizer: cmaes}}]
  early_stopping: false
  max_evaluations: {evaluations}
  seed: 0
outputs:
  run_dir: {run_dir}
  save_images: best
  final_merge: {str(final_merge).lower()}
  merge_via: bridge
  format: safetensors
  dtype: fp16
""",
        encoding="utf-8",
    )
    (path.parent / "payload.json").write_text(
        '{"prompt": "a photo of a cat", "negative_prompt": "", "seed": 1234, '
        '"sampler_name": "Euler", "steps": 2, "cfg_scale": 7, "width": 64, "height": 64, '
        '"batch_size": 1, "n_iter": 1, "wildcard_type": "none"}',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def auth_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBW_IT_USER", AUTH[0])
    monkeypatch.setenv("AMBW_IT_PASS", AUTH[1])


def history_rows(run_dir: Path) -> list[dict[str, str]]:
    (history,) = run_dir.glob("*/history.csv")
    with history.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_doctor_search_and_final_merge_leave_plain_a(
    webui: WebUI, install: Install, plain_a: np.ndarray, tmp_path: Path, auth_env: None,
    scratch: Path,
) -> None:  # fmt: skip
    output = f"autombw-it-{int(time.time())}"
    cfg = write_config(tmp_path / "cfg.yaml", install, webui.url, output=output, auth=True,
                       evaluations=6, final_merge=True, run_dir=tmp_path / "runs")  # fmt: skip
    doctor = run_cli("doctor", str(cfg), cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "v1.10.1" in doctor.stdout
    t0 = time.monotonic()
    search = run_cli("search", str(cfg), "--plain", cwd=tmp_path)
    elapsed = time.monotonic() - t0
    assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]
    rows = history_rows(tmp_path / "runs")
    assert len(rows) == 6
    record({"what": "search: 6 evaluations + final merge via the bridge", "s": round(elapsed, 1),
            "rss_mb": round(webui.rss_mb())})  # fmt: skip
    saved = install.models / f"{output}.safetensors"
    try:
        assert saved.is_file(), search.stdout[-3000:]
        # the bridge's final merge is bit-identical to `autombw merge` of the recipe it wrote
        (recipe,) = (tmp_path / "runs").glob("*/*.recipe.txt")
        offline = scratch / "final-offline.safetensors"
        a, b = install.models / "rndA.safetensors", install.models / "rndB.safetensors"
        assert_offline_merge_equals(saved, offline, str(a), str(b), "--recipe", str(recipe),
                                    cwd=tmp_path)  # fmt: skip
    finally:
        for p in install.models.glob(f"{output}*"):
            p.unlink()
    # the WebUI is back to plain A, with the bridge's caches freed
    status = webui.status()
    assert status["merge_live"] is False
    assert status["cache_bytes"] == 0
    assert str(status["loaded_checkpoint"]).startswith("rndA")
    assert np.array_equal(webui.txt2img(), plain_a)


def test_search_with_text_encoder_weight_scores_merged_conds(
    webui: WebUI, install: Install, plain_a: np.ndarray, tmp_path: Path, auth_env: None
) -> None:
    """With BASE: 1 held, the renders differ from plain A's (they used the merged text encoder)
    even though A1111 had this prompt's conds cached from rendering A."""
    webui.txt2img()  # cache A's conds for the payload prompt
    cfg = write_config(tmp_path / "cfg.yaml", install, webui.url, output="unused", auth=True,
                       evaluations=1, final_merge=False, run_dir=tmp_path / "runs",
                       text_encoder=True)  # fmt: skip
    text = cfg.read_text().replace("save_images: best", "save_images: all")
    cfg.write_text(text)
    search = run_cli("search", str(cfg), "--plain", cwd=tmp_path)
    assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]
    images = sorted((tmp_path / "runs").glob("*/images/**/*.png"))
    assert images, list((tmp_path / "runs").rglob("*"))
    from PIL import Image

    rendered = np.asarray(Image.open(images[0]).convert("RGB"))
    assert not np.array_equal(rendered, plain_a), "the search scored A's cached conds"


def test_search_with_pruning_and_validation(
    webui: WebUI, install: Install, tmp_path: Path, auth_env: None
) -> None:
    """Pruning stops a candidate after its first payload's image inside A1111; validation
    renders the top candidates again with fresh seeds and the final merge takes its winner."""
    output = f"autombw-it-val-{int(time.time())}"
    cfg = write_config(tmp_path / "cfg.yaml", install, webui.url, output=output, auth=True,
                       evaluations=8, final_merge=True, run_dir=tmp_path / "runs")  # fmt: skip
    text = cfg.read_text().replace("payloads: {files: [payload.json]}",
                                   "payloads: {files: [payload.json, dog.json]}")  # fmt: skip
    text = text.replace("  seed: 0\n", "  seed: 0\n  pruning: {after: 1, confidence: 0.5, "
                        "min_evaluations: 2}\n")  # fmt: skip
    text += "  validation: {top: 2, seeds: 2}\n"
    cfg.write_text(text, encoding="utf-8")
    dog = (tmp_path / "payload.json").read_text().replace("a photo of a cat", "a dog, painting")
    (tmp_path / "dog.json").write_text(dog.replace("1234", "77"), encoding="utf-8")
    t0 = time.monotonic()
    search = run_cli("search", str(cfg), "--plain", cwd=tmp_path)
    elapsed = time.monotonic() - t0
    assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]
    try:
        rows = history_rows(tmp_path / "runs")
        assert len(rows) == 8 and {r["state"] for r in rows} <= {"complete", "pruned"}
        pruned = [r for r in rows if r["state"] == "pruned"]
        assert pruned, search.stdout[-3000:]
        (run,) = (tmp_path / "runs").glob("*/summary.json")
        summary = json.loads(run.read_text())
        assert summary["pruned"] == len(pruned)
        v = summary["validation"]
        assert v["complete"] and len(v["candidates"]) == 2
        assert all(c["images"] == 4 for c in v["candidates"])  # 2 payloads x 2 fresh seeds
        # fresh seeds: other images, so other scores than the search's
        assert all(c["validated_score"] != c["search_score"] for c in v["candidates"])
        winner = next(t for t in summary["top"] if t["number"] == v["winner"])
        from autombw_cli.recipe import read_recipe_file

        (recipe,) = (tmp_path / "runs").glob("*/*.recipe.txt")
        assert read_recipe_file(recipe).weights.to_dict() == pytest.approx(winner["weights"])
        assert (install.models / f"{output}.safetensors").is_file()
        record({"what": "search: 8 evaluations with pruning, validation of 2 x 2 seeds, final "
                "merge", "s": round(elapsed, 1), "pruned": len(pruned),
                "validated_winner_differs": v["winner"] != v["search_best"]})  # fmt: skip
    finally:
        for p in install.models.glob(f"{output}*"):
            p.unlink()


def test_a_two_step_chain_saves_its_step_and_replays_offline(
    webui: WebUI, install: Install, scratch: Path, tmp_path: Path, auth_env: None
) -> None:
    """(rndA + rndB) then (AB + rndC), 2 evaluations each: step 1's best is saved through the
    bridge into A1111's checkpoint folder and loaded by A1111 as step 2's A; the final merge
    equals `autombw merge rndA rndB rndC --recipe chain.recipe.json` tensor by tensor."""
    rnd_c = scratch / "rndC.safetensors"
    if not rnd_c.is_file():
        write_base_model(install, rnd_c)
    webui.refresh()
    output = f"autombw-it-chain-{int(time.time())}"
    cfg = write_config(tmp_path / "cfg.yaml", install, webui.url, output=output, auth=True,
                       evaluations=2, final_merge=True, run_dir=tmp_path / "runs")  # fmt: skip
    text = cfg.read_text() + "chain:\n  - b: rndC.safetensors\n    search: {max_evaluations: 2}\n"
    cfg.write_text(text, encoding="utf-8")
    t0 = time.monotonic()
    search = run_cli("search", str(cfg), "--plain", cwd=tmp_path)
    elapsed = time.monotonic() - t0
    try:
        assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]
        (chain_dir,) = (tmp_path / "runs").iterdir()
        step1 = install.models / f"{chain_dir.name}-step1.safetensors"
        assert step1.is_file(), search.stdout[-3000:]
        config2 = (chain_dir / "step-2" / "config.yaml").read_text()
        assert f"a: {chain_dir.name}-step1" in config2
        with (chain_dir / "step-2" / "history.csv").open(encoding="utf-8") as f:
            assert len(list(csv.DictReader(f))) == 2
        record({"what": "chain: 2 steps x 2 evaluations, one intermediate save, final merge",
                "s": round(elapsed, 1), "rss_mb": round(webui.rss_mb())})  # fmt: skip
        saved = install.models / f"{output}.safetensors"
        offline = scratch / "chain-offline.safetensors"
        assert_offline_merge_equals(saved, offline, str(install.models / "rndA.safetensors"),
                                    str(install.models / "rndB.safetensors"), str(rnd_c),
                                    "--recipe", str(chain_dir / "chain.recipe.json"),
                                    cwd=tmp_path)  # fmt: skip
    finally:
        for p in install.models.glob(f"{output}*"):
            p.unlink()
        for p in scratch.glob("chain-offline*"):
            p.unlink()
        webui.refresh()
    status = webui.status()
    assert status["merge_live"] is False
    assert str(status["loaded_checkpoint"]).startswith("rndA")


def test_config_check_refuses_an_output_naming_model_a(install: Install, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", install, "http://127.0.0.1:9", output="rndA",
                       auth=False, evaluations=1, final_merge=True,
                       run_dir=tmp_path / "runs")  # fmt: skip
    done = run_cli("config", "check", str(cfg), cwd=tmp_path)
    assert done.returncode != 0
    assert "models.output" in done.stdout + done.stderr


# --- API-only WebUI (--nowebui) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def api_only(
    install: Install, webui: WebUI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebUI]:
    webui.stop()  # one WebUI at a time: each holds ~5-12 GB on this machine
    w = start_webui(install, tmp_path_factory.mktemp("nowebui"), "--nowebui")
    record({"what": "start", "mode": "nowebui", "s": round(w.started_s, 1),
            "rss_mb": round(w.rss_mb())})  # fmt: skip
    yield w
    record({"what": "end", "mode": "nowebui", "rss_mb": round(w.rss_mb())})
    w.stop()


def test_nowebui_bridge_loads_and_warns_it_is_exposed(api_only: WebUI) -> None:
    assert api_only.call("GET", "/internal/ping").status_code == 404  # UI mode only
    assert api_only.status()["host"] == "a1111"
    assert "listens beyond this machine without --api-auth" in api_only.log_text()


def test_nowebui_doctor_and_search(api_only: WebUI, install: Install, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", install, api_only.url, output="unused",
                       auth=False, evaluations=2, final_merge=False,
                       run_dir=tmp_path / "runs")  # fmt: skip
    doctor = run_cli("doctor", str(cfg), cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    search = run_cli("search", str(cfg), "--plain", cwd=tmp_path)
    assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]
    assert len(history_rows(tmp_path / "runs")) == 2
    assert api_only.status()["merge_live"] is False
