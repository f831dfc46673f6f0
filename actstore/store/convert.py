"""Conversion between user tensors and the stored representation of one hook.

``to_stored`` turns float activations ``[n, d]`` into the stored array (and per-row scale
for fp8/int8/q16); ``from_stored`` turns stored rows back into a torch tensor of the asked
dtype. bf16 goes through the native round-to-nearest-even converter (NumPy has no
bfloat16); bf16 input is stored bit-exactly. Every per-dtype fact comes from the registry
(``store/format.DTYPES``). :class:`Packed` is one hook's batch in the stored
representation with its statistics, as ``actstore.ops.capture_pack`` produces it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import _native
from .format import DType
from .quantize import dequantize, quantize


@dataclass
class Packed:
    """One hook's batch after capture: ``n`` kept rows in the stored representation.

    data ``[n, d]`` in ``DType.torch_dtype``; scale ``[n]`` float32 for scaled dtypes, else
    None; bad ``[n]`` bool (the row holds NaN/inf, its bytes are not meaningful); s1, s2
    ``[d]``: sums of ``x - shift`` and of its square over the good rows; norm_sum ``[1]``:
    sum of their L2 norms (float32, or float64 from the native CPU path).
    """

    data: torch.Tensor
    scale: torch.Tensor | None
    bad: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    norm_sum: torch.Tensor


def to_stored(dtype: DType, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """``x [n, d]`` float tensor (any device) -> (stored ``[n, d]`` numpy, scale ``[n]`` or None)."""
    if dtype.scaled:
        q, scale = quantize(x, dtype)
        return q.cpu().numpy().view(dtype.stored), scale.cpu().numpy()  # q16: int16 holder -> uint16
    if dtype.torch_dtype == torch.bfloat16:
        if x.dtype == torch.bfloat16 or x.is_cuda:
            # Convert on the device (halves the copy to host); bf16 input is kept bit-exact.
            bits = x.to(torch.bfloat16).contiguous().view(torch.int16).cpu().numpy()
            return bits.view(np.uint16), None
        x32 = x.to(torch.float32).contiguous().numpy()
        return _native.fp32_to_bf16(x32), None
    return x.to(dtype.torch_dtype).contiguous().cpu().numpy(), None


def from_stored(dtype: DType, stored: np.ndarray, scale: np.ndarray | None, out_dtype: torch.dtype) -> torch.Tensor:
    """Stored rows ``[n, d]`` (+ scale ``[n]``) -> torch tensor ``[n, d]`` of ``out_dtype``."""
    if dtype.scaled:
        codes = torch.from_numpy(np.ascontiguousarray(stored).view(dtype.container))  # q16's uint16 as int16
        return dequantize(codes, torch.from_numpy(scale), dtype, out_dtype)
    if dtype.torch_dtype == torch.bfloat16:
        if out_dtype == torch.bfloat16:
            return torch.from_numpy(stored.view(np.int16)).view(torch.bfloat16)
        f32 = torch.from_numpy(_native.bf16_to_fp32(stored))
        return f32 if out_dtype == torch.float32 else f32.to(out_dtype)
    t = torch.from_numpy(stored)
    return t if t.dtype == out_dtype else t.to(out_dtype)
