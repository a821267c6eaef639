"""Checkpoint reading (checkpoint_io.py), the streaming safetensors writer and A/B validation."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from autombw_cli.errors import ConfigError, ModelMismatchError
from autombw_cli.merging.checkpoint_io import (
    check_same_keys_and_shapes,
    checkpoint,
    open_checkpoint,
    read_key_shapes,
)
from autombw_cli.merging.safetensors_writer import (
    SafetensorsStreamWriter,
    TensorEntry,
    write_safetensors,
    write_safetensors_stream,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.f16": torch.randn(3, 5, generator=g).half(),
        "b.f32": torch.randn(7, generator=g),
        "c.bf16": torch.randn(2, 2, 2, generator=g).bfloat16(),
        "d.i64": torch.arange(77).reshape(1, 77),
        "e.scalar": torch.tensor(2.5),
        "f.empty": torch.empty(0, 4),
        "g.bool": torch.tensor([True, False, True]),
    }


def test_our_writer_is_read_by_the_safetensors_library(tmp_path) -> None:
    tensors = _tensors()
    path = tmp_path / "x.safetensors"
    write_safetensors(path, tensors.items(), metadata={"k": "v"})
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"k": "v"}
        assert set(f.keys()) == set(tensors)
        for k, t in tensors.items():
            assert torch.equal(f.get_tensor(k), t), k


def test_reader_reads_files_from_the_safetensors_library(tmp_path) -> None:
    tensors = _tensors()
    path = tmp_path / "lib.safetensors"
    save_file(tensors, path, metadata={"m": "1"})
    with checkpoint(path) as r:
        assert r.format == "safetensors"
        assert r.metadata == {"m": "1"}
        assert set(r.keys()) == set(tensors)
        for k, t in tensors.items():
            got = r.get(k)
            assert got.dtype == t.dtype and torch.equal(got, t), k
    assert read_key_shapes(path) == {k: tuple(t.shape) for k, t in tensors.items()}


def test_writer_refuses_tensors_out_of_order_or_unlike_their_entry(tmp_path) -> None:
    entries = [TensorEntry("x", torch.float16, (2,)), TensorEntry("y", torch.float16, (3,))]
    with open(tmp_path / "f", "wb") as fh:
        w = SafetensorsStreamWriter(fh, entries, None)
        with pytest.raises(ValueError, match="expected tensor 'x'"):
            w.write("y", torch.zeros(3, dtype=torch.float16))
        with pytest.raises(ValueError, match="declared"):
            w.write("x", torch.zeros(2, dtype=torch.float32))
        w.write("x", torch.zeros(2, dtype=torch.float16))
        with pytest.raises(ValueError, match="only 1 of 2"):
            w.finish()


def test_writer_failure_leaves_nothing_behind(tmp_path) -> None:
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"old")
    entries = [TensorEntry(f"t{i}", torch.float32, (4,)) for i in range(5)]

    def produce(entry: TensorEntry) -> torch.Tensor:
        if entry.key == "t3":
            raise RuntimeError("disk on fire")
        return torch.ones(4)

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_safetensors_stream(target, entries, produce, write_behind=True)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_ckpt_with_state_dict_and_plain_dict(tmp_path) -> None:
    tensors = {"model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3)}
    torch.save({"state_dict": tensors, "global_step": 7}, tmp_path / "a.ckpt")
    torch.save(tensors, tmp_path / "b.pt")
    torch.save(
        {"state_dict": tensors}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False
    )
    for name in ("a.ckpt", "b.pt", "legacy.ckpt"):
        with checkpoint(tmp_path / name) as r:
            assert r.format == "torch"
            assert r.keys() == list(tensors)
            assert torch.equal(r.get(next(iter(tensors))), next(iter(tensors.values())))


class _Evil:
    """A pickle payload: unpickling it calls os.makedirs(marker)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.makedirs, (self.marker,))


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Evil(str(marker))}, path)
    with pytest.raises(ModelMismatchError) as info:
        open_checkpoint(path)
    msg = str(info.value)
    assert "refused" in msg and "weights_only" in msg and str(path) in msg
    assert "os.makedirs" in msg or "makedirs" in msg
    assert not marker.exists()
    # the file really is malicious: a full unpickle runs the payload
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "only 0 bytes"),
        (b"hello, I am a text file and no checkpoint at all\n", "no safetensors header"),
        (struct.pack("<Q", 8) + b"not json", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_non_checkpoint_files_get_a_clear_error(tmp_path, content: bytes, why: str) -> None:
    path = tmp_path / "thing.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelMismatchError, match=why) as info:
        open_checkpoint(path)
    assert str(path) in str(info.value) and "not a valid checkpoint" in str(info.value)


def test_truncated_safetensors_is_refused(tmp_path) -> None:
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"w": torch.ones(100)}.items())
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelMismatchError, match="offsets"):
        open_checkpoint(path)


def test_header_with_bad_offsets_is_refused(tmp_path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(ModelMismatchError, match="'w'"):
        open_checkpoint(path)


def test_corrupt_ckpt_and_missing_file(tmp_path) -> None:
    path = tmp_path / "broken.ckpt"
    path.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ModelMismatchError, match="cannot read as a torch checkpoint"):
        open_checkpoint(path)
    with pytest.raises(ConfigError, match="no such file"):
        open_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(ConfigError, match="folder"):
        open_checkpoint(tmp_path)


SHAPES = {"a.w": (2, 3), "b.w": (4,), "c.w": (5, 5)}


def test_same_keys_and_shapes_pass() -> None:
    check_same_keys_and_shapes(SHAPES, dict(SHAPES))


def test_first_missing_key_is_named() -> None:
    b = {k: v for k, v in SHAPES.items() if k not in ("b.w", "c.w")}
    with pytest.raises(ModelMismatchError) as info:
        check_same_keys_and_shapes(SHAPES, b)
    msg = info.value.message
    assert "'b.w' is in model A but not in model B" in msg and "1 more" in msg


def test_key_only_in_b_is_named() -> None:
    b = {**SHAPES, "0.extra": (1,)}
    with pytest.raises(ModelMismatchError, match=r"'0\.extra' is in model B but not in model A"):
        check_same_keys_and_shapes(SHAPES, b)


def test_first_shape_mismatch_is_named() -> None:
    b = {**SHAPES, "c.w": (5, 6)}
    with pytest.raises(ModelMismatchError, match=r"'c\.w' has shape \[5, 5\] in A but \[5, 6\]"):
        check_same_keys_and_shapes(SHAPES, b, name_a="A", name_b="B")


def test_reader_without_positional_reads_gives_the_same_tensors(tmp_path, monkeypatch) -> None:
    """Windows has no os.preadv (the WebUI bridge runs there): the reader seeks and reads
    instead, one read at a time, and gets the same bytes."""
    from autombw_cli.merging import checkpoint_io

    tensors = _tensors()
    path = tmp_path / "lib.safetensors"
    save_file(tensors, path)
    monkeypatch.setattr(checkpoint_io, "_MAP_FILES", False)  # Windows: not mapped either
    monkeypatch.setattr(checkpoint_io, "_HAS_PREADV", False)
    monkeypatch.delattr(os, "preadv", raising=False)
    with checkpoint(path) as r:
        for k in reversed(list(tensors)):  # out of file order: every read seeks
            assert torch.equal(r.get(k), tensors[k]), k


@pytest.mark.parametrize("mapped", [True, False])
def test_tensors_outlive_the_reader_and_writes_never_reach_the_file(tmp_path, mapped) -> None:
    """Mapped (POSIX) or read into fresh memory: a tensor handed out stays valid after the
    reader is closed and collected (the bridge's cache keeps them), and writing to it changes
    this process's copy only, not the checkpoint on disk."""
    import gc

    from autombw_cli.merging.checkpoint_io import SafetensorsReader

    tensors = _tensors()
    path = tmp_path / "lib.safetensors"
    save_file(tensors, path)
    before = path.read_bytes()
    reader = SafetensorsReader(path, mapped=mapped)
    assert reader.mapped is (mapped and os.name == "posix")
    got = {k: reader.get(k) for k in tensors}
    reader.close()
    del reader
    gc.collect()
    for k, t in tensors.items():
        assert torch.equal(got[k], t), k
    got["b.f32"].add_(1.0)
    got["a.f16"].zero_()
    assert torch.equal(got["b.f32"], tensors["b.f32"] + 1.0)
    assert path.read_bytes() == before
    with checkpoint(path) as again:
        assert torch.equal(again.get("b.f32"), tensors["b.f32"])
