"""The bridge's checkpoint reader (webui/bridge/files.py TensorFile, also used by the simulator
and the bridge's save route) refuses a .ckpt whose pickle would run code, and runs none of it.

The other load paths have their own tests: CheckpointReader in
tests/test_checkpoints_io.py::test_a_pickle_that_runs_code_is_refused_without_running_it, the CLI's
``merge`` and ``recover`` and the bridge's merge route in tests/test_safety.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from autombw_cli.webui.bridge.files import TensorFile, read_shapes


class _Evil:
    """A pickle payload: unpickling it calls os.makedirs(marker)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.makedirs, (self.marker,))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_tensorfile_refuses_a_pickle_that_runs_code(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": {"w": torch.zeros(2)}, "x": _Evil(str(marker))},
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    for open_it in (TensorFile, read_shapes):
        with pytest.raises(ValueError, match=r"evil\.ckpt: refused to load this pickle") as info:
            open_it(path)
        assert "weights_only=False" not in str(info.value)  # no advice to load it fully
        assert not marker.exists(), "the bridge's reader ran the pickle's code"
    # the file really is malicious: a full unpickle runs the payload
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_tensorfile_still_reads_a_plain_ckpt(tmp_path: Path) -> None:
    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3), "step": 5}}, path)
    with TensorFile(path) as tf:
        assert tf.tensor_keys() == ["w"] and tf.shape("w") == (3,)
