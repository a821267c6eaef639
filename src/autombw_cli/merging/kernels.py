"""Merge kernels: small pure functions over tensors (no I/O, no globals)."""

from __future__ import annotations

import torch
from torch import Tensor


def lerp_tensor(a: Tensor, b: Tensor, w: float) -> Tensor:
    """``a + w * (b - a)`` computed in float32 and cast back to ``a``'s dtype.

    ``w == 0`` returns ``a`` itself (bit-exact); ``w == 1`` returns ``b`` in ``a``'s dtype.
    Non-float tensors (integer buffers) are never interpolated: ``a`` is returned.
    """
    if w == 0.0 or not a.is_floating_point():
        return a
    if w == 1.0:
        return b.to(dtype=a.dtype, device=a.device)
    out = torch.lerp(a.float(), b.to(device=a.device).float(), float(w))
    return out.to(a.dtype)


KERNELS = {"lerp": lerp_tensor}
