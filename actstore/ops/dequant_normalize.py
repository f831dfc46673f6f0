"""``dequant_normalize``: stored rows ``[n, d]`` -> normalized floats on their device.

CUDA tensors go to the Triton kernel ``actstore.kernels.dequant_normalize`` (one read of
the stored bytes, one write). CPU tensors go to the reference
(``actstore.reference.dequant_normalize``), except the two conversions that need no
arithmetic beyond a widening: bf16 -> bf16 is a view and bf16 -> float32 with no
normalization uses the native converter. ``backend`` forces one path: ``reference`` or
``triton`` (also on CPU tensors under ``TRITON_INTERPRET=1``, how CPU tests check it).
``dtype`` is the storage dtype of ``store/format.DTYPES``, as in ``capture_pack``: its
name (``"bf16"``), its logical alias (``"bfloat16"``) or the ``DType``.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _native
from ..reference.dequant_normalize import dequant_normalize_reference
from ..store.format import DType, parse_dtype
from ._dispatch import resolve_backend


def dequant_normalize(
    x: torch.Tensor,
    dtype: str | DType,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    mul: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    *,
    backend: str | None = None,
    threads: int = 0,
) -> torch.Tensor:
    """x ``[n, d]`` stored (int16 bf16 bits, fp16, fp32, uint8 e4m3fn bits or int8), scale
    ``[n]`` float32 (fp8/int8/q16), shift/mul ``[d]`` float32 -> ``[n, d]`` of ``out_dtype``:
    ``(decode(x) * scale[:, None] - shift) * mul``, each term optional. ``threads`` is for
    the native CPU conversion (0: default)."""
    spec = parse_dtype(dtype)
    if x.dim() != 2:
        raise ValueError(f"dequant_normalize: x must be [n, d], got shape {tuple(x.shape)}")
    backend = resolve_backend(x, backend)
    if backend == "triton":
        from ..kernels.dequant_normalize import dequant_normalize_fwd  # kernels need Triton, an optional dependency

        return dequant_normalize_fwd(x, spec, scale, shift, mul, out_dtype)
    plain = scale is None and shift is None and mul is None
    if plain and spec.torch_dtype == torch.bfloat16 and not x.is_cuda:
        if out_dtype == torch.bfloat16:
            return x.view(torch.bfloat16)
        if out_dtype == torch.float32 and x.is_contiguous():
            return torch.from_numpy(_native.bf16_to_fp32(x.numpy().view(np.uint16), threads=threads))
    return dequant_normalize_reference(x, spec, scale, shift, mul, out_dtype)
