"""The offline merge (merging/offline.py) on small SD1- and SDXL-keyed checkpoints it builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from autombw_cli.blocks import UNET_PREFIX, Arch, Weights, is_text_encoder_key, layout
from autombw_cli.errors import ConfigError, ModelMismatchError, OutputExistsError
from autombw_cli.merging.kernels import ChunkedLerp, lerp_tensor
from autombw_cli.merging.offline import merge_checkpoints, output_path
from autombw_cli.recipe import Recipe, read_recipe_file
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint


def _distinct_weights(arch: Arch, te: float | None = None) -> Weights:
    """A different weight per slot, so a key landing in the wrong slot is caught."""
    slots = layout(arch).slots
    return Weights(arch, {s: (i + 1) / (len(slots) + 2) for i, s in enumerate(slots)}, te)


def _recipe(w: Weights) -> Recipe:
    return Recipe("A.safetensors", "B.safetensors", "out", w)


def _pair(tmp_path: Path, arch: Arch, dtype=torch.float16, suffix=".safetensors"):
    a = random_state_dict(arch, "tiny", seed=1, dtype=dtype)
    b = random_state_dict(arch, "tiny", seed=2, dtype=dtype)
    pa = write_checkpoint(tmp_path / f"A{suffix}", a)
    pb = write_checkpoint(tmp_path / f"B{suffix}", b)
    return a, b, pa, pb


def _expected(a, b, weights: Weights, dtype=None):
    lay = layout(weights.arch)
    out = {}
    for k, ta in a.items():
        slot = lay.slot_of(k)
        w = weights[slot] if slot else None
        if w is None and weights.text_encoder is not None and is_text_encoder_key(k, weights.arch):
            w = weights.text_encoder
        target = dtype if (dtype is not None and ta.is_floating_point()) else ta.dtype
        if w is None or not ta.is_floating_point():
            out[k] = ta.to(target)
        else:
            out[k] = torch.lerp(ta.float(), b[k].float(), w).to(target)
    return out


@pytest.mark.parametrize("arch", [Arch.SD1, Arch.SDXL])
def test_merge_equals_a_direct_per_key_lerp(tmp_path: Path, arch: Arch) -> None:
    a, b, pa, pb = _pair(tmp_path, arch)
    weights = _distinct_weights(arch)
    report = merge_checkpoints(pa, pb, _recipe(weights), tmp_path / "out.safetensors")
    merged = load_file(report.output)
    expected = _expected(a, b, weights)
    assert set(merged) == set(a)
    for k, t in expected.items():
        assert merged[k].dtype == t.dtype and torch.equal(merged[k], t), k
    n_unet = sum(k.startswith(UNET_PREFIX) for k in a)
    assert sum(report.keys_per_slot.values()) == n_unet
    assert report.copied_keys == len(a) - n_unet
    assert report.arch is arch


@pytest.mark.parametrize("arch", [Arch.SD1, Arch.SDXL])
def test_everything_outside_the_unet_is_a_bit_for_bit(tmp_path: Path, arch: Arch) -> None:
    a, _, pa, pb = _pair(tmp_path, arch)
    merge_checkpoints(pa, pb, _recipe(Weights.uniform(arch, 0.7)), tmp_path / "o")
    merged = load_file(tmp_path / "o.safetensors")
    outside = [k for k in a if not k.startswith(UNET_PREFIX)]
    assert any(k.startswith("first_stage_model.") for k in outside)
    assert any(is_text_encoder_key(k, arch) for k in outside)
    for k in outside:
        assert merged[k].dtype == a[k].dtype
        assert torch.equal(
            merged[k].reshape(-1).view(torch.uint8), a[k].reshape(-1).view(torch.uint8)
        ), k
    changed = [k for k in a if k.startswith(UNET_PREFIX) and not torch.equal(merged[k], a[k])]
    assert len(changed) > 100


def test_w0_gives_a_and_w1_gives_b_bit_exact(tmp_path: Path) -> None:
    a, b, pa, pb = _pair(tmp_path, Arch.SD1)
    merge_checkpoints(pa, pb, _recipe(Weights.uniform(Arch.SD1, 0.0)), tmp_path / "zero")
    zero = load_file(tmp_path / "zero.safetensors")
    assert all(torch.equal(zero[k], a[k]) for k in a)
    merge_checkpoints(pa, pb, _recipe(Weights.uniform(Arch.SD1, 1.0)), tmp_path / "one")
    one = load_file(tmp_path / "one.safetensors")
    for k in a:
        assert torch.equal(one[k], b[k] if k.startswith(UNET_PREFIX) else a[k]), k


def test_text_encoder_weight_lerps_text_encoder_but_not_vae(tmp_path: Path) -> None:
    a, b, pa, pb = _pair(tmp_path, Arch.SDXL)
    weights = _distinct_weights(Arch.SDXL, te=0.25)
    report = merge_checkpoints(pa, pb, _recipe(weights), tmp_path / "te")
    merged = load_file(report.output)
    expected = _expected(a, b, weights)
    assert all(torch.equal(merged[k], expected[k]) for k in a)
    te_keys = [k for k in a if is_text_encoder_key(k, Arch.SDXL)]
    float_te = [k for k in te_keys if a[k].is_floating_point()]
    assert report.keys_per_slot["BASE"] == len(float_te) > 0
    assert not torch.equal(merged[float_te[0]], a[float_te[0]])
    pos = "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"
    assert torch.equal(merged[pos], a[pos])  # integer buffers are never interpolated
    vae = next(k for k in a if k.startswith("first_stage_model."))
    assert torch.equal(merged[vae], a[vae])


@pytest.mark.parametrize(
    ("src", "dtype", "want"),
    [
        (torch.float16, "fp32", torch.float32),
        (torch.float32, "fp16", torch.float16),
        (torch.float32, "bf16", torch.bfloat16),
        (torch.bfloat16, None, torch.bfloat16),
    ],
)
def test_output_dtype(tmp_path: Path, src, dtype, want) -> None:
    a, b, pa, pb = _pair(tmp_path, Arch.SD1, dtype=src)
    weights = _distinct_weights(Arch.SD1)
    report = merge_checkpoints(pa, pb, _recipe(weights), tmp_path / "o", dtype=dtype)
    merged = load_file(report.output)
    expected = _expected(a, b, weights, dtype=want)
    for k in a:
        assert torch.equal(merged[k], expected[k]), k
        assert merged[k].dtype == (want if a[k].is_floating_point() else torch.int64)
    assert report.dtype == dtype


def test_ckpt_inputs_merge_like_safetensors(tmp_path: Path) -> None:
    a, b, pa, pb = _pair(tmp_path, Arch.SD1, suffix=".ckpt")
    weights = _distinct_weights(Arch.SD1)
    merged = load_file(merge_checkpoints(pa, pb, _recipe(weights), tmp_path / "o").output)
    expected = _expected(a, b, weights)
    assert all(torch.equal(merged[k], expected[k]) for k in a)


def test_output_carries_recipe_metadata_and_sidecars(tmp_path: Path) -> None:
    _, _, pa, pb = _pair(tmp_path, Arch.SD1)
    recipe = _recipe(_distinct_weights(Arch.SD1))
    report = merge_checkpoints(pa, pb, recipe, tmp_path / "mix")
    assert report.output == tmp_path / "mix.safetensors"
    with safe_open(report.output, "pt") as f:
        meta = f.metadata()
    assert Recipe.from_safetensors_metadata(meta) == recipe
    assert "sd_mbwrt_recipe" in meta and meta["format"] == "pt"
    txt, js = report.recipe_files
    assert txt == tmp_path / "mix.recipe.txt" and js == tmp_path / "mix.recipe.json"
    assert read_recipe_file(txt) == recipe and read_recipe_file(js) == recipe


def test_sd1_recipe_weights_apply_to_sd2_checkpoints(tmp_path: Path) -> None:
    _, _, pa, pb = _pair(tmp_path, Arch.SD2)
    report = merge_checkpoints(pa, pb, _recipe(Weights.uniform(Arch.SD1, 0.5)), tmp_path / "o")
    assert report.arch is Arch.SD2


def _without(path: Path, out: Path, drop: str | None = None, reshape: str | None = None) -> Path:
    sd = load_file(path)
    if drop:
        del sd[drop]
    if reshape:
        sd[reshape] = torch.zeros(3, 3, dtype=sd[reshape].dtype)
    return write_checkpoint(out, sd)


def test_missing_key_is_named_and_nothing_written(tmp_path: Path) -> None:
    _, _, pa, pb = _pair(tmp_path, Arch.SD1)
    key = UNET_PREFIX + "output_blocks.4.0.emb_layers.1.bias"
    bad = _without(pb, tmp_path / "B-missing.safetensors", drop=key)
    with pytest.raises(ModelMismatchError) as info:
        merge_checkpoints(pa, bad, _recipe(Weights.uniform(Arch.SD1, 0.5)), tmp_path / "o")
    assert repr(key) in info.value.message and "not in model B" in info.value.message
    assert not (tmp_path / "o.safetensors").exists()
    assert not (tmp_path / "o.recipe.txt").exists()


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    _, _, pa, pb = _pair(tmp_path, Arch.SD1)
    key = "first_stage_model.decoder.conv_out.bias"
    bad = _without(pb, tmp_path / "B-shape.safetensors", reshape=key)
    with pytest.raises(ModelMismatchError, match=f"'{key}' has shape"):
        merge_checkpoints(pa, bad, _recipe(Weights.uniform(Arch.SD1, 0.5)), tmp_path / "o")


def test_different_architectures_are_refused(tmp_path: Path) -> None:
    pa = write_checkpoint(tmp_path / "sd1.safetensors", random_state_dict(Arch.SD1, "tiny", 1))
    pb = write_checkpoint(tmp_path / "xl.safetensors", random_state_dict(Arch.SDXL, "tiny", 2))
    with pytest.raises(ModelMismatchError) as info:
        merge_checkpoints(pa, pb, _recipe(Weights.uniform(Arch.SD1, 0.5)), tmp_path / "o")
    msg = info.value.message
    assert "is sd1 but model B (xl.safetensors) is sdxl" in msg
    assert "first mismatching key: 'alphas_cumprod'" in msg


def test_weights_for_another_arch_are_refused(tmp_path: Path) -> None:
    _, _, pa, pb = _pair(tmp_path, Arch.SD1)
    with pytest.raises(ModelMismatchError, match="weights are for sdxl"):
        merge_checkpoints(pa, pb, _recipe(Weights.uniform(Arch.SDXL, 0.5)), tmp_path / "o")


def test_failure_mid_write_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    _, _, pa, pb = _pair(tmp_path, Arch.SD1)
    calls = {"n": 0}
    real = ChunkedLerp.__call__

    def failing(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 200:
            raise RuntimeError("simulated crash mid-write")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ChunkedLerp, "__call__", failing)
    target = tmp_path / "out.safetensors"
    with pytest.raises(RuntimeError, match="simulated crash"):
        merge_checkpoints(pa, pb, _recipe(Weights.uniform(Arch.SD1, 0.5)), target)
    assert calls["n"] == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.safetensors", "B.safetensors"]
    # with --force over an existing file, a failure keeps the old file intact
    target.write_bytes(b"previous merge")
    calls["n"] = 0
    with pytest.raises(RuntimeError):
        merge_checkpoints(pa, pb, _recipe(Weights.uniform(Arch.SD1, 0.5)), target, force=True)
    assert target.read_bytes() == b"previous merge"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_never_overwrites_without_force(tmp_path: Path) -> None:
    _, _, pa, pb = _pair(tmp_path, Arch.SD1)
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match=r"out\.safetensors already exists"):
        merge_checkpoints(pa, pb, _recipe(Weights.uniform(Arch.SD1, 0.5)), target)
    assert target.read_bytes() == b"keep me"
    (tmp_path / "o2.recipe.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"o2\.recipe\.txt"):
        merge_checkpoints(pa, pb, _recipe(Weights.uniform(Arch.SD1, 0.5)), tmp_path / "o2")
    merge_checkpoints(pa, pb, _recipe(Weights.uniform(Arch.SD1, 0.5)), target, force=True)
    assert load_file(target)


def test_output_path_rules(tmp_path: Path) -> None:
    assert output_path("mix") == Path("mix.safetensors")
    assert output_path("v1.5-mix") == Path("v1.5-mix.safetensors")
    assert output_path("mix.SAFETENSORS") == Path("mix.SAFETENSORS")
    assert output_path("mix.ckpt") == Path("mix.ckpt")  # a torch pickle (test_ckpt_format.py)
    with pytest.raises(ConfigError, match=r"safetensors or \.ckpt"):
        output_path("mix.pt")
    _, _, pa, pb = _pair(tmp_path, Arch.SD1)
    with pytest.raises(ConfigError, match="model A itself"):
        merge_checkpoints(pa, pb, _recipe(Weights.uniform(Arch.SD1, 0.5)), pa, force=True)
    with pytest.raises(ConfigError, match="unknown dtype"):
        merge_checkpoints(pa, pb, _recipe(Weights.uniform(Arch.SD1, 0.5)), "x", dtype="fp8")


def test_chunked_lerp_equals_the_shared_kernel_on_odd_sizes() -> None:
    lerp = ChunkedLerp(chunk=1000)
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        a = torch.randn(37, 129, generator=g).to(dtype)
        b = torch.randn(37, 129, generator=g).to(dtype)
        for w in (0.0, 0.3, 0.5, 0.77, 1.0, -0.5, 1.5):
            assert torch.equal(lerp(a, b, w, dtype), lerp_tensor(a, b, w)), (dtype, w)
        want = lerp_tensor(a.float(), b, 0.3).to(torch.float16)
        assert torch.equal(lerp(a, b, 0.3, torch.float16), want)
