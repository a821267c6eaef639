"""``.ckpt`` output (``outputs.format: ckpt``, ``merge -o x.ckpt``, the bridge's save with
``format: ckpt``): a streamed torch pickle ``{"state_dict": ...}`` that loads with
``torch.load(weights_only=True)`` and holds exactly the tensors of the ``.safetensors`` result."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autombw_cli.blocks import Arch, Weights, layout
from autombw_cli.errors import ConfigError
from autombw_cli.merging.ckpt_writer import build_pickle, write_ckpt_stream
from autombw_cli.merging.offline import merge_checkpoints, output_path
from autombw_cli.merging.safetensors_writer import TensorEntry
from autombw_cli.recipe import Recipe
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from autombw_cli.sim.host import SimHost
from autombw_cli.webui.bridge.core import BridgeCore
from autombw_cli.webui.bridge.errors import BridgeError
from search_helpers import write_search_config


def _load_ckpt(path: Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    assert isinstance(obj, dict) and list(obj) == ["state_dict"]
    return obj["state_dict"]


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want) or set(got) == set(want)
    for key, t in want.items():
        assert got[key].dtype == t.dtype, key
        assert torch.equal(got[key], t), key


def _entries(sd: dict[str, torch.Tensor]) -> list[TensorEntry]:
    return [TensorEntry(k, t.dtype, tuple(t.shape)) for k, t in sd.items()]


MIXED = {
    "half": torch.randn(3, 4, generator=torch.Generator().manual_seed(0)).half(),
    "long": torch.arange(5),
    "empty": torch.zeros(0, 3),
    "bf16": torch.randn(2, 2, generator=torch.Generator().manual_seed(1)).bfloat16(),
    "flags": torch.tensor([True, False, True]),
    "double": torch.randn(7, generator=torch.Generator().manual_seed(2)).double(),
    "scalar": torch.tensor(3.5),
}


@pytest.mark.parametrize("write_behind", [False, True])
@pytest.mark.parametrize("mmap", [False, True])
def test_streamed_ckpt_loads_back_with_weights_only(
    tmp_path: Path, write_behind: bool, mmap: bool
) -> None:
    path = tmp_path / "x.ckpt"
    size = write_ckpt_stream(
        path, _entries(MIXED), lambda e: MIXED[e.key], write_behind=write_behind
    )
    assert size == path.stat().st_size
    got = _load_ckpt(path, mmap=mmap)
    assert list(got) == list(MIXED)  # A1111 sees the keys in the order given
    _assert_same(got, MIXED)


def test_ckpt_equals_what_torch_save_writes(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.ckpt", tmp_path / "theirs.ckpt"
    write_ckpt_stream(ours, _entries(MIXED), lambda e: MIXED[e.key])
    torch.save({"state_dict": MIXED}, theirs)
    _assert_same(_load_ckpt(ours), _load_ckpt(theirs))
    names = {n.split("/", 1)[1] for n in zipfile.ZipFile(ours).namelist()}
    assert {"data.pkl", "byteorder", ".format_version", "version"} <= names
    assert {f"data/{i}" for i in range(len(MIXED))} <= names


def test_views_write_only_their_own_bytes(tmp_path: Path) -> None:
    base = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    sd = {"rows": base[3:5], "column": base[:, 1], "t": base.t()}
    write_ckpt_stream(tmp_path / "v.ckpt", _entries(sd), lambda e: sd[e.key])
    _assert_same(_load_ckpt(tmp_path / "v.ckpt"), {k: v.contiguous() for k, v in sd.items()})


def test_the_pickle_names_only_what_a_restricted_unpickler_allows() -> None:
    """A1111's safe unpickler (and torch's weights_only) allow these globals and no others."""
    import pickletools

    ops = pickletools.genops(build_pickle(_entries(MIXED)))
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert globals_ == {
        "torch._utils _rebuild_tensor_v2",
        "collections OrderedDict",
        *(
            f"torch {n}"
            for n in [
                "HalfStorage",
                "FloatStorage",
                "DoubleStorage",
                "BFloat16Storage",
                "LongStorage",
                "BoolStorage",
            ]
        ),
    }


def test_bad_input_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "x.ckpt"
    path.write_bytes(b"old")
    fp8 = {"w": torch.zeros(2, dtype=torch.float8_e4m3fn)}
    with pytest.raises(TypeError, match=r"cannot be stored in a \.ckpt"):
        write_ckpt_stream(path, _entries(fp8), lambda e: fp8[e.key])
    wrong = {"w": torch.zeros(3)}
    with pytest.raises(ValueError, match="declared"):
        write_ckpt_stream(path, [TensorEntry("w", torch.float32, (2,))], lambda e: wrong["w"])
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ckpt"]  # no temp file left


# --- the offline merge ------------------------------------------------------------------
def _pair(tmp_path: Path, suffix: str = ".safetensors") -> tuple[Path, Path]:
    pa = write_checkpoint(tmp_path / f"A{suffix}", random_state_dict(Arch.SD1, "tiny", 1))
    pb = write_checkpoint(tmp_path / f"B{suffix}", random_state_dict(Arch.SD1, "tiny", 2))
    return pa, pb


def _weights() -> Weights:
    slots = layout(Arch.SD1).slots
    return Weights(Arch.SD1, {s: (i + 1) / (len(slots) + 2) for i, s in enumerate(slots)})


@pytest.mark.parametrize("dtype", [None, "fp32", "bf16"])
def test_offline_ckpt_equals_offline_safetensors(tmp_path: Path, dtype: str | None) -> None:
    pa, pb = _pair(tmp_path)
    recipe = Recipe("A.safetensors", "B.safetensors", "mix", _weights())
    st = merge_checkpoints(pa, pb, recipe, tmp_path / "mix.safetensors", dtype=dtype)
    ck = merge_checkpoints(pa, pb, recipe, tmp_path / "out" / "mix.ckpt", dtype=dtype)
    assert ck.output == tmp_path / "out" / "mix.ckpt"
    assert ck.bytes_written == ck.output.stat().st_size
    assert (tmp_path / "out" / "mix.recipe.txt").is_file()
    _assert_same(_load_ckpt(ck.output), load_file(st.output))


def test_offline_merge_reads_a_ckpt_it_wrote(tmp_path: Path) -> None:
    pa, pb = _pair(tmp_path)
    half = Recipe("A", "B", "h", Weights.uniform(Arch.SD1, 0.5))
    ck = merge_checkpoints(pa, pb, half, tmp_path / "half.ckpt").output
    again = merge_checkpoints(ck, pb, half, tmp_path / "again.ckpt").output
    assert _load_ckpt(again).keys() == load_file(pa).keys()


def test_output_path_accepts_ckpt_and_refuses_other_pickles() -> None:
    assert output_path("mix.ckpt") == Path("mix.ckpt")
    assert output_path("mix.CKPT") == Path("mix.CKPT")
    assert output_path("mix") == Path("mix.safetensors")
    for name in ("mix.pt", "mix.pth", "mix.bin"):
        with pytest.raises(ConfigError, match=r"\.safetensors or \.ckpt"):
            output_path(name)


def test_merge_command_writes_a_ckpt(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from autombw_cli.cli import app

    pa, pb = _pair(tmp_path)
    res = CliRunner().invoke(
        app, ["merge", str(pa), str(pb), "-w", "0.5", "-o", str(tmp_path / "m.ckpt")]
    )
    assert res.exit_code == 0, res.output
    merged = _load_ckpt(tmp_path / "m.ckpt")
    assert set(merged) == set(load_file(pa))


# --- the bridge's save ------------------------------------------------------------------
def _bridge(folder: Path) -> BridgeCore:
    write_checkpoint(folder / "simA.safetensors", random_state_dict(Arch.SD1, "tiny", 1))
    write_checkpoint(folder / "simB.safetensors", random_state_dict(Arch.SD1, "tiny", 2))
    host = SimHost(folder)
    core = BridgeCore(host, version="test")
    host.on_model_loaded(core.mark_lost)
    core.merge("simA", "simB", _weights().to_dict())
    return core


def test_bridge_save_ckpt_equals_its_safetensors(tmp_path: Path) -> None:
    core = _bridge(tmp_path)
    st = core.save("mix", dtype="fp16")
    with pytest.raises(BridgeError, match=r"mix\.recipe\.txt already exists"):
        core.save("mix", dtype="fp16", fmt="ckpt")  # the recipe file beside mix.safetensors
    ck = core.save("mix", dtype="fp16", fmt="ckpt", overwrite=True)
    assert Path(ck.path) == (tmp_path / "mix.ckpt").resolve()
    assert ck.bytes == Path(ck.path).stat().st_size and len(ck.sha256) == 64
    assert core.host.find("mix.ckpt") is not None  # listed after the refresh
    _assert_same(_load_ckpt(Path(ck.path)), load_file(st.path))
    assert Path(ck.recipe_path).name == "mix.recipe.txt"
    with pytest.raises(BridgeError, match="already exists"):
        core.save("mix.ckpt", fmt="ckpt")
    with pytest.raises(BridgeError, match="format must be one of"):
        core.save("other", fmt="pt")


def test_bridge_save_route_takes_a_format(tmp_path: Path) -> None:
    import asyncio

    import httpx
    from fastapi import FastAPI

    from autombw_cli.webui.bridge.routes import register_routes
    from autombw_cli.webui.endpoints import BRIDGE_SAVE

    core = _bridge(tmp_path)
    app = FastAPI()
    register_routes(app, core)

    async def post(body: dict[str, object]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
            return await client.post(BRIDGE_SAVE, json=body)

    resp = asyncio.run(post({"name": "r", "format": "ckpt", "dtype": "fp32"}))
    assert resp.status_code == 200, resp.text
    assert resp.json()["name"] == "r.ckpt"
    assert _load_ckpt(tmp_path / "r.ckpt")
    bad = asyncio.run(post({"name": "q", "format": "zip"}))
    assert bad.status_code == 422 and "format" in bad.json()["detail"]


# --- a whole search -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("via", ["bridge", "offline"])
def test_search_final_merge_as_ckpt(tmp_path: Path, via: str, capsys) -> None:  # type: ignore[no-untyped-def]
    from autombw_cli.cli import main

    models = "{a: simA.safetensors, b: simB.safetensors, output: test-merge, arch: sd1}"
    if via == "offline":
        pa, pb = _pair(tmp_path)
        models = (
            "{a: simA.safetensors, b: simB.safetensors, output: test-merge, arch: sd1, "
            f"a_file: {pa}, b_file: {pb}}}"
        )
    cfg = write_search_config(
        tmp_path,
        evaluations=4,
        models=models,
        outputs=f"{{run_dir: runs, save_images: none, format: ckpt, merge_via: {via}}}",
    )
    try:
        main(["search", "--plain", str(cfg)])
    except SystemExit as done:
        assert done.code in (0, None), capsys.readouterr()
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    ckpt = Path(summary["outputs"]["checkpoint"])
    assert ckpt.suffix == ".ckpt" and ckpt.parent == run_dir
    state = _load_ckpt(ckpt)
    assert any(k.startswith("model.diffusion_model.") for k in state)
