"""BridgeCore with the live model on CUDA (caches on the GPU and on pinned CPU memory):
the merge matches the CPU reference and restore is bit-exact. Skipped without CUDA."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from autombw_cli.blocks import Arch, layout
from autombw_cli.merging.kernels import lerp_tensor
from autombw_cli.sim.checkpoints import random_state_dict, write_checkpoint
from autombw_cli.sim.host import SimHost, module_from_state_dict
from autombw_cli.webui.bridge.core import BridgeCore
from autombw_cli.webui.bridge.names import CheckpointRef

pytestmark = pytest.mark.gpu


class CudaHost(SimHost):
    """The simulator's host, but the loaded model lives on the GPU."""

    def load_checkpoint(self, ref: CheckpointRef) -> None:
        super().load_checkpoint(ref)
        model = self.live_model()
        assert model is not None
        self._model = model.to("cuda")


@pytest.mark.parametrize("cache", ["cuda", "cpu", "auto"])
@pytest.mark.parametrize("arch", [Arch.SD1, Arch.SDXL], ids=["sd1", "sdxl"])
def test_cuda_merge_and_bit_exact_restore(tmp_path: Path, cache: str, arch: Arch) -> None:
    a = random_state_dict(arch, "tiny", 1)
    b = random_state_dict(arch, "tiny", 2)
    write_checkpoint(tmp_path / "A.safetensors", a)
    write_checkpoint(tmp_path / "B.safetensors", b)
    host = CudaHost(tmp_path, lock=threading.Lock())
    core = BridgeCore(host, version="gpu-test")
    host.on_model_loaded(core.mark_lost)
    host.load_checkpoint(host.find("A"))

    lay = layout(arch)
    weights = {s: round(0.05 + 0.9 * i / 30, 3) for i, s in enumerate(lay.slots)}
    out = core.merge("A", "B", weights, cache_device=cache)
    assert out.cache_device.startswith("cuda" if cache != "cpu" else "cpu")
    live = {k: v.detach().cpu() for k, v in host.live_model().state_dict().items()}
    for key, ta in a.items():
        slot = lay.slot_of(key)
        want = lerp_tensor(ta, b[key], weights[slot]) if slot else ta
        torch.testing.assert_close(live[key], want, atol=1e-3, rtol=0)

    core.merge("A", "B", {**weights, "M00": 1.0}, cache_device=cache)
    core.restore(free_caches=True)
    live = {k: v.detach().cpu() for k, v in host.live_model().state_dict().items()}
    assert all(torch.equal(live[k], t) for k, t in a.items())
    assert core.cache_bytes() == 0


def test_module_from_state_dict_moves_to_cuda() -> None:
    sd = random_state_dict(Arch.SD1, "tiny", 3)
    module = module_from_state_dict(sd).to("cuda")
    assert {k for k, _ in module.state_dict().items()} == set(sd)
