"""Conversion between user tensors and the stored representation of one hook.

``to_stored`` turns float activations ``[n, d]`` into the stored array (and per-row scale
for fp8/int8); ``from_stored`` turns stored rows back into a torch tensor of the asked
dtype. bf16 goes through the native round-to-nearest-even converter; bf16 input is stored
bit-exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _native
from ..reference.quantize import dequantize_fp8, dequantize_int8, quantize_fp8, quantize_int8
from .format import DType


def to_stored(dtype: DType, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """``x [n, d]`` float tensor (any device) -> (stored ``[n, d]`` numpy, scale ``[n]`` or None)."""
    if dtype.name == "bf16":
        if x.dtype == torch.bfloat16 or x.is_cuda:
            # Convert on the device (halves the copy to host); bf16 input is kept bit-exact.
            bits = x.to(torch.bfloat16).contiguous().view(torch.int16).cpu().numpy()
            return bits.view(np.uint16), None
        x32 = x.to(torch.float32).contiguous().numpy()
        return _native.fp32_to_bf16(x32), None
    if dtype.name in ("fp16", "fp32"):
        t = torch.float16 if dtype.name == "fp16" else torch.float32
        return x.to(t).contiguous().cpu().numpy(), None
    if dtype.name == "fp8":
        q, scale = quantize_fp8(x)
        return q.cpu().numpy(), scale.cpu().numpy()
    if dtype.name == "int8":
        q, scale = quantize_int8(x)
        return q.cpu().numpy(), scale.cpu().numpy()
    raise AssertionError(dtype)


def from_stored(dtype: DType, stored: np.ndarray, scale: np.ndarray | None, out_dtype: torch.dtype) -> torch.Tensor:
    """Stored rows ``[n, d]`` (+ scale ``[n]``) -> torch tensor ``[n, d]`` of ``out_dtype``."""
    if dtype.name == "bf16":
        if out_dtype == torch.bfloat16:
            return torch.from_numpy(stored.view(np.int16)).view(torch.bfloat16)
        f32 = torch.from_numpy(_native.bf16_to_fp32(stored))
        return f32 if out_dtype == torch.float32 else f32.to(out_dtype)
    if dtype.name in ("fp16", "fp32"):
        t = torch.from_numpy(stored)
        return t if t.dtype == out_dtype else t.to(out_dtype)
    if dtype.name == "fp8":
        return dequantize_fp8(torch.from_numpy(stored), torch.from_numpy(scale), out_dtype)
    if dtype.name == "int8":
        return dequantize_int8(torch.from_numpy(stored), torch.from_numpy(scale), out_dtype)
    raise AssertionError(dtype)
