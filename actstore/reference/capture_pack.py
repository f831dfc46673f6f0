"""Reference for the capture kernel: compact kept rows, convert to the storage dtype,
accumulate statistics, in plain PyTorch. It is the CPU path of
:func:`actstore.ops.capture_pack` and the oracle for ``kernels/capture_pack.py``.

Inputs (one hook, one batch):
    x      ``[N, d]`` float activations (N = batch * seq), any float dtype
    keep   ``[N]`` bool: rows to store (pad rows and rows past the token budget are False)
    shift  ``[d]`` float32: a centre for the moments, the running mean so far (it keeps
           ``sum((x - shift)^2)`` from cancelling when a dimension's mean dwarfs its std)

Outputs (:class:`actstore.store.convert.Packed`), for the ``n = keep.sum()`` kept rows in order:
    data      ``[n, d]`` stored representation (``DType.torch_dtype``): bf16 (round to
              nearest even), fp16, fp32, fp8 e4m3fn bits (uint8) or int8; the quantizer
              is the store's (``actstore.store.quantize``)
    scale     ``[n]`` float32 per-row scale for fp8/int8/q16, else None
    bad       ``[n]`` bool: the row holds NaN or inf (its bytes are not meaningful)
    s1, s2    ``[d]`` float32: sum of ``x - shift`` and of its square over kept finite rows
    norm_sum  ``[1]`` float32: sum of the L2 norms of kept finite rows
    count     kept finite rows (host int)
"""

from __future__ import annotations

import torch

from ..store.convert import Packed
from ..store.format import DType, parse_dtype
from ..store.quantize import quantize


def capture_pack_reference(x: torch.Tensor, keep: torch.Tensor, shift: torch.Tensor, dtype: str | DType) -> Packed:
    """See the module docstring. Statistics are computed in float64 and returned as
    float32, so the reference is at least as accurate as any kernel it judges."""
    spec = parse_dtype(dtype)
    kept = x[keep.to(torch.bool)]
    x32 = kept.to(torch.float32)
    bad = ~torch.isfinite(x32).all(dim=1)
    good = x32[~bad].to(torch.float64)
    centred = good - shift.to(torch.float64)
    s1 = centred.sum(dim=0).to(torch.float32)
    s2 = (centred * centred).sum(dim=0).to(torch.float32)
    norm_sum = good.norm(dim=1).sum().reshape(1).to(torch.float32)
    scale = None
    if spec.scaled:
        data, scale = quantize(x32, spec)
    else:
        data = x32.to(spec.torch_dtype)
    return Packed(data, scale, bad, s1, s2, norm_sum)
