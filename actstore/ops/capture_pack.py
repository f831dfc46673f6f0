"""``capture_pack``: compact, convert and summarize one hook's batch of activations.

CUDA tensors go to the Triton kernel ``actstore.kernels.capture_pack`` (one pass over
the activations). CPU tensors go to the ``native`` path: the same results from
``actstore._C`` (bf16 rounding, shifted moments) on ONE thread, because on the CPU
capture packs in a background thread while the model's forward owns torch's intra-op
threads (packing with torch ops there slowed the forward by ~9%). ``backend`` forces one:
``reference`` (``actstore.reference.capture_pack``, the oracle), ``native``, or
``triton`` (also on CPU tensors under ``TRITON_INTERPRET=1``, how CPU tests check it).
``dtype`` is a storage dtype of ``store/format.DTYPES``: its name (``"bf16"``), its
logical alias (``"bfloat16"``) or the :class:`~actstore.store.format.DType`.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _native
from ..errors import CaptureError
from ..reference.capture_pack import capture_pack_reference
from ..store.convert import Packed
from ..store.format import DType, parse_dtype
from ..store.quantize import quantize
from ._dispatch import resolve_backend


def capture_pack(
    x: torch.Tensor,
    keep: torch.Tensor,
    shift: torch.Tensor,
    dtype: str | DType,
    *,
    dst: torch.Tensor | None = None,
    n_keep: int | None = None,
    backend: str | None = None,
    buffers: dict | None = None,
) -> Packed:
    """x ``[N, d]`` float, keep ``[N]`` bool, shift ``[d]`` float32 -> :class:`Packed`
    (see ``actstore.reference.capture_pack``). ``dst`` (``cumsum(keep) - 1``, int64) and
    ``n_keep`` may be passed precomputed to avoid a device sync; ``buffers`` holds
    preallocated staging outputs for the Triton path (keys out, scale, bad, moments)."""
    spec = parse_dtype(dtype)
    backend = resolve_backend(x, backend, native=True)
    if backend == "reference":
        return capture_pack_reference(x, keep, shift, spec)
    if backend == "native":
        return _capture_pack_native(x, keep, shift, spec)
    from ..kernels.capture_pack import _capture_pack_unsupported, capture_pack_fwd  # Triton: optional

    if x.is_cuda:
        why = _capture_pack_unsupported(spec, torch.cuda.get_device_capability(x.device))
        if why is not None:
            raise CaptureError(why)

    if dst is None:
        dst = torch.cumsum(keep.to(torch.int64), 0) - 1
    if n_keep is None:
        n_keep = int(keep.sum())
    data, scale, bad, s1, s2, norm = capture_pack_fwd(
        x, keep, dst, shift.to(torch.float32), spec, n_keep, **(buffers or {})
    )
    return Packed(data, scale, bad.to(torch.bool), s1, s2, norm)


def _capture_pack_native(x: torch.Tensor, keep: torch.Tensor, shift: torch.Tensor, spec: DType) -> Packed:
    """CPU path on one thread; statistics come back in float64 (more exact than needed)."""
    keep_np = keep.numpy().astype(bool, copy=False)
    if x.dtype == torch.float32:
        kept = x.numpy()[keep_np]  # NumPy fancy indexing: one thread, a contiguous copy
    else:
        kept = x[keep].to(torch.float32).numpy()
    kept = np.ascontiguousarray(kept)
    sh = shift.double().numpy()
    s1, s2, norm = _native.row_moments(kept, sh, threads=1)
    bad = np.zeros(kept.shape[0], dtype=bool)
    if not (np.isfinite(s1).all() and np.isfinite(s2).all() and np.isfinite(norm)):
        # Rare path: some row holds NaN/inf. Flag those rows, sum the others.
        bad = ~np.isfinite(kept).all(axis=1)
        s1, s2, norm = _native.row_moments(np.ascontiguousarray(kept[~bad]), sh, threads=1)
    scale = None
    if spec.scaled:
        data, scale = quantize(torch.from_numpy(kept), spec)
    elif spec.torch_dtype == torch.bfloat16:
        # NumPy has no bfloat16: the native converter rounds to nearest even, on this thread.
        data = torch.from_numpy(_native.fp32_to_bf16(kept, threads=1).view(np.int16)).view(torch.bfloat16)
    else:
        data = torch.from_numpy(kept.astype(spec.stored, copy=False))
    return Packed(
        data,
        scale,
        torch.from_numpy(bad),
        torch.from_numpy(s1),
        torch.from_numpy(s2),
        torch.tensor([norm], dtype=torch.float64),
    )
