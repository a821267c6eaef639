"""The merge kernel: linear interpolation of A and B in float32, rounded once to the output
dtype (no I/O, no globals; torch only).

`lerp_tensor` is the kernel; `ChunkedLerp` computes exactly the same values for big CPU tensors
without a float32 copy of the whole tensor (the offline merge and the bridge's save).
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 20  # float32 scratch chunks of 4 MiB


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


class ChunkedLerp:
    """`lerp_tensor` for big tensors: float32 work in small reused scratch buffers.

    Gives exactly ``lerp_tensor(a, b, w)`` cast to ``out_dtype`` (float32 ``torch.lerp``
    rounded once to the output dtype; ``w == 0`` copies A, ``w == 1`` copies B), but never
    allocates a float32 copy of a whole tensor: allocating and faulting in fresh float32
    temporaries costs more than the arithmetic (about 5x on the 2-core test machine). One
    instance per merge (it owns its two scratch buffers of `CHUNK_ELEMENTS` floats).
    """

    def __init__(self, chunk: int | None = None) -> None:
        self.chunk = chunk = chunk or CHUNK_ELEMENTS
        self._sa = torch.empty(chunk, dtype=torch.float32)
        self._sb = torch.empty(chunk, dtype=torch.float32)

    def __call__(self, a: Tensor, b: Tensor, w: float, out_dtype: torch.dtype) -> Tensor:
        if not a.is_floating_point():
            return a
        if w == 0.0 and a.dtype == out_dtype:
            return a
        out = torch.empty(a.shape, dtype=out_dtype)
        if w in (0.0, 1.0):
            return out.copy_(a if w == 0.0 else b)
        flat_out, flat_a, flat_b = out.view(-1), a.reshape(-1), b.reshape(-1)
        n = flat_a.numel()
        for i in range(0, n, self.chunk):
            m = min(self.chunk, n - i)
            fa, fb = self._sa[:m], self._sb[:m]
            fa.copy_(flat_a[i : i + m])
            fb.copy_(flat_b[i : i + m])
            torch.lerp(fa, fb, float(w), out=fa)
            flat_out[i : i + m].copy_(fa)
        return out


KERNELS = {"lerp": lerp_tensor}
