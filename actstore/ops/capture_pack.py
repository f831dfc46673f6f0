"""``capture_pack``: compact, convert and summarize one hook's batch of activations.

CUDA tensors go to the Triton kernel ``actstore.kernels.capture_pack`` (one pass over
the activations); CPU tensors to ``actstore.reference.capture_pack``. ``backend``
forces one ("triton" also runs on CPU tensors under ``TRITON_INTERPRET=1``, which is how
the CPU tests check the kernel).
"""

from __future__ import annotations

import torch

from ..reference.capture_pack import Packed, capture_pack_reference


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def capture_pack(x: torch.Tensor, keep: torch.Tensor, shift: torch.Tensor, dtype: str, *,
                 dst: torch.Tensor | None = None, n_keep: int | None = None, backend: str | None = None,
                 buffers: dict | None = None) -> Packed:
    """x ``[N, d]`` float, keep ``[N]`` bool, shift ``[d]`` float32 -> :class:`Packed`
    (see ``actstore.reference.capture_pack``). ``dst`` (``cumsum(keep) - 1``, int64) and
    ``n_keep`` may be passed precomputed to avoid a device sync; ``buffers`` holds
    preallocated staging outputs for the Triton path (keys out, scale, bad, moments)."""
    if backend is None:
        backend = "triton" if x.is_cuda and triton_available() else "reference"
    if backend == "reference":
        return capture_pack_reference(x, keep, shift, dtype)
    if backend != "triton":
        raise ValueError(f"unknown backend {backend!r}: use 'triton' or 'reference'")
    from ..kernels.capture_pack import capture_pack_fwd

    if dst is None:
        dst = torch.cumsum(keep.to(torch.int64), 0) - 1
    if n_keep is None:
        n_keep = int(keep.sum())
    data, scale, bad, s1, s2, norm = capture_pack_fwd(x, keep, dst, shift.to(torch.float32), dtype, n_keep,
                                                      **(buffers or {}))
    return Packed(data, scale, bad.to(torch.bool), s1, s2, norm)
