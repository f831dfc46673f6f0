"""Reference for the capture kernel: compact kept rows, convert to the storage dtype,
accumulate statistics, in plain PyTorch. It is the CPU path of
:func:`actstore.ops.capture_pack` and the oracle for ``kernels/capture_pack.py``.

Inputs (one hook, one batch):
    x      ``[N, d]`` float activations (N = batch * seq), any float dtype
    keep   ``[N]`` bool: rows to store (pad rows and rows past the token budget are False)
    shift  ``[d]`` float32: a centre for the moments, the running mean so far (it keeps
           ``sum((x - shift)^2)`` from cancelling when a dimension's mean dwarfs its std)

Outputs (:class:`Packed`), for the ``n = keep.sum()`` kept rows in order:
    data      ``[n, d]`` stored representation: bf16 (bits of round-to-nearest-even),
              fp16, fp32, fp8 e4m3fn bits (uint8) or int8
    scale     ``[n]`` float32 per-row scale for fp8/int8, else None
    bad       ``[n]`` bool: the row holds NaN or inf (its bytes are not meaningful)
    s1, s2    ``[d]`` float32: sum of ``x - shift`` and of its square over kept finite rows
    norm_sum  ``[1]`` float32: sum of the L2 norms of kept finite rows
    count     kept finite rows (host int)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .quantize import quantize_fp8, quantize_int8

STORAGE_TORCH_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                       "fp8": torch.uint8, "int8": torch.int8}


@dataclass
class Packed:
    data: torch.Tensor
    scale: torch.Tensor | None
    bad: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    norm_sum: torch.Tensor


def capture_pack_reference(x: torch.Tensor, keep: torch.Tensor, shift: torch.Tensor, dtype: str) -> Packed:
    """See the module docstring. Statistics are computed in float64 and returned as
    float32, so the reference is at least as accurate as any kernel it judges."""
    if dtype not in STORAGE_TORCH_DTYPE:
        raise ValueError(f"unknown storage dtype {dtype!r}: use one of {', '.join(STORAGE_TORCH_DTYPE)}")
    kept = x[keep.to(torch.bool)]
    x32 = kept.to(torch.float32)
    bad = ~torch.isfinite(x32).all(dim=1)
    good = x32[~bad].to(torch.float64)
    centred = good - shift.to(torch.float64)
    s1 = centred.sum(dim=0).to(torch.float32)
    s2 = (centred * centred).sum(dim=0).to(torch.float32)
    norm_sum = good.norm(dim=1).sum().reshape(1).to(torch.float32)
    scale = None
    if dtype == "fp8":
        data, scale = quantize_fp8(x32)
    elif dtype == "int8":
        data, scale = quantize_int8(x32)
    else:
        data = x32.to(STORAGE_TORCH_DTYPE[dtype])
    return Packed(data, scale, bad, s1, s2, norm_sum)
