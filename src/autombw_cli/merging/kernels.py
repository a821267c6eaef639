"""The merge kernels, computed in float32 and rounded once to the output dtype (no I/O, no
globals; torch only):

- weighted sum: `lerp_tensor`, ``A + w * (B - A)`` (``torch.lerp``);
- a LoRA delta: `add_delta_tensor`, ``A + w * delta``, the same last two steps;
- add difference: `add_difference_tensor`, ``A + w * (B - C)``, as three separate float32
  operations (``B - C``, ``* w``, ``+ A``), each rounded once, so any split of a tensor into
  pieces (CPU vector lanes, chunks, CUDA) gives the same bits; no fused multiply-add.

`merge_tensor` picks the kernel: C given means add difference. `ChunkedLerp` computes exactly
the same values for big CPU tensors without a float32 copy of the whole tensor (the offline
merge and the bridge's save), for either formula.
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


def add_difference_tensor(a: Tensor, b: Tensor, c: Tensor, w: float) -> Tensor:
    """``a + w * (b - c)`` computed in float32 and cast back to ``a``'s dtype.

    ``w == 0`` returns ``a`` itself (bit-exact); non-float tensors are never merged (``a``)."""
    if w == 0.0 or not a.is_floating_point():
        return a
    diff = b.to(device=a.device, dtype=torch.float32) - c.to(device=a.device, dtype=torch.float32)
    diff.mul_(float(w))
    diff.add_(a.float())  # float addition commutes exactly: this is a + diff
    return diff.to(a.dtype)


def add_delta_tensor(
    a: Tensor, delta: Tensor, w: float, dtype: torch.dtype | None = None
) -> Tensor:
    """``a + w * delta`` (a LoRA at strength ``w``; ``delta`` float32) computed in float32 and
    cast once to ``dtype`` (default ``a``'s): the last two steps of `add_difference_tensor`.

    ``w == 0`` returns ``a`` (cast to ``dtype`` when that differs); non-float tensors are never
    patched."""
    out_dtype = a.dtype if dtype is None else dtype
    if w == 0.0 or not a.is_floating_point():
        return a if a.dtype == out_dtype or not a.is_floating_point() else a.to(out_dtype)
    out = delta.to(device=a.device, dtype=torch.float32) * float(w)
    out.add_(a.float())
    return out.to(out_dtype)


def merge_tensor(a: Tensor, b: Tensor, c: Tensor | None, w: float) -> Tensor:
    """The kernel of a merge: `lerp_tensor` without C, `add_difference_tensor` with it."""
    return lerp_tensor(a, b, w) if c is None else add_difference_tensor(a, b, c, w)


class ChunkedLerp:
    """`merge_tensor` for big tensors: float32 work in small reused scratch buffers.

    Gives exactly ``merge_tensor(a, b, c, w)`` cast to ``out_dtype`` (float32 ``torch.lerp``,
    or with ``c`` the add-difference steps, rounded once to the output dtype; ``w == 0``
    copies A, a weighted sum with ``w == 1`` copies B), but never allocates a float32 copy of
    a whole tensor: allocating and faulting in fresh float32 temporaries costs more than the
    arithmetic (about 5x on the 2-core test machine). One instance per merge (it owns its
    scratch buffers of `CHUNK_ELEMENTS` floats; the third, for C, only once C is used).
    """

    def __init__(self, chunk: int | None = None) -> None:
        self.chunk = chunk = chunk or CHUNK_ELEMENTS
        self._sa = torch.empty(chunk, dtype=torch.float32)
        self._sb = torch.empty(chunk, dtype=torch.float32)
        self._sc: Tensor | None = None

    def __call__(
        self, a: Tensor, b: Tensor, w: float, out_dtype: torch.dtype, c: Tensor | None = None
    ) -> Tensor:
        if not a.is_floating_point():
            return a
        if w == 0.0 and a.dtype == out_dtype:
            return a
        out = torch.empty(a.shape, dtype=out_dtype)
        if w == 0.0 or (w == 1.0 and c is None):
            return out.copy_(a if w == 0.0 else b)
        flat_out, flat_a, flat_b = out.view(-1), a.reshape(-1), b.reshape(-1)
        flat_c = None if c is None else c.reshape(-1)
        if flat_c is not None and self._sc is None:
            self._sc = torch.empty(self.chunk, dtype=torch.float32)
        n = flat_a.numel()
        for i in range(0, n, self.chunk):
            m = min(self.chunk, n - i)
            fa, fb = self._sa[:m], self._sb[:m]
            fa.copy_(flat_a[i : i + m])
            fb.copy_(flat_b[i : i + m])
            if flat_c is None:
                torch.lerp(fa, fb, float(w), out=fa)
            else:
                assert self._sc is not None
                fc = self._sc[:m]
                fc.copy_(flat_c[i : i + m])
                fb.sub_(fc)  # the same three steps as add_difference_tensor
                fb.mul_(float(w))
                fa = fb.add_(fa)
            flat_out[i : i + m].copy_(fa)
        return out


KERNELS = {
    "lerp": lerp_tensor,
    "add_difference": add_difference_tensor,
    "add_delta": add_delta_tensor,
}
