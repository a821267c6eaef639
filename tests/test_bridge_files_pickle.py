"""The one checkpoint reader (merging/checkpoint_io.py, used by the offline merge, the bridge's
merge and save, and the simulator) refuses a .ckpt whose pickle would run code, in both torch
serialisations, and runs none of it; the bridge answers that refusal as a clear 400.

The other load paths have their own tests: the zip format's message in
tests/test_checkpoints_io.py::test_a_pickle_that_runs_code_is_refused_without_running_it, the
CLI's ``merge`` and ``recover`` and the bridge's merge route in tests/test_safety.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from autombw_cli.errors import ModelMismatchError
from autombw_cli.merging.checkpoint_io import open_checkpoint, read_key_shapes
from autombw_cli.webui.bridge.errors import BridgeError
from autombw_cli.webui.bridge.names import CheckpointRef
from autombw_cli.webui.bridge.pairs import PairChecker


class _Evil:
    """A pickle payload: unpickling it calls os.makedirs(marker)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reader_refuses_a_pickle_that_runs_code(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": {"w": torch.zeros(2)}, "x": _Evil(str(marker))},
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    for open_it in (open_checkpoint, read_key_shapes):
        with pytest.raises(ModelMismatchError, match=r"evil\.ckpt: refused to load this pickle"):
            open_it(path)
        assert not marker.exists(), "the reader ran the pickle's code"
    ref = CheckpointRef(title="evil.ckpt", name="evil", path=path)
    with pytest.raises(BridgeError) as err:
        PairChecker().check(ref, ref)
    assert (err.value.status, err.value.kind) == (400, "ModelMismatch")
    assert err.value.message.startswith("evil: not a readable checkpoint (")
    assert "refused to load this pickle" in err.value.message
    assert "weights_only=False" not in str(err.value)  # no advice to load it fully
    assert not marker.exists()
    # the file really is malicious: a full unpickle runs the payload
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_reader_reads_a_plain_pickle_by_content(tmp_path: Path, suffix: str) -> None:
    """A plain torch pickle is read (non-tensor entries dropped), whatever its suffix."""
    path = tmp_path / f"ok{suffix}"
    torch.save({"state_dict": {"w": torch.ones(3), "step": 5}}, path)
    reader = open_checkpoint(path)
    try:
        assert reader.keys() == ["w"] and reader.shapes() == {"w": (3,)}
        assert torch.equal(reader.get("w"), torch.ones(3))
    finally:
        reader.close()
