"""Reference of the loader's last step: stored rows -> normalized floats.

``y[i, j] = (decode(x[i, j]) * scale[i] - shift[j]) * mul[j]``, computed in float32 and
rounded once to the output dtype. ``dtype`` is the storage dtype (``store/format.DTYPES``:
a name such as ``"bf16"``, its logical alias ``"bfloat16"``, or the ``DType``); ``decode``
reads the stored representation exactly:

- bf16: int16 (or uint16) holding bf16 bits;
- fp16 / fp32: the values;
- fp8: uint8 e4m3fn bits, times the per-row ``scale``;
- int8: the integers, times the per-row ``scale``;
- q16: int16 (or uint16) holding zigzag codes ``z``: ``(z >> 1) ^ -(z & 1)``, times ``scale``.

``shift`` and ``mul`` are optional ``[d]`` float32 vectors: the loader passes
``mul = sqrt(d) / mean_norm`` for SAELens' norm scaling (mean norm -> sqrt(d)) and
``shift = mean, mul = 1/std`` to standardize.
"""

from __future__ import annotations

import torch

from ..store.format import DType, parse_dtype
from ..store.quantize import unzigzag


def decode_stored(x: torch.Tensor, dtype: str | DType) -> torch.Tensor:
    """Stored ``[n, d]`` -> float32 ``[n, d]`` values (before the per-row scale). Integer
    tensors holding a float format's bits (bf16, fp8) are reinterpreted; values are converted."""
    spec = parse_dtype(dtype)
    if spec.zigzag:
        return unzigzag(x).to(torch.float32)
    value = spec.value_dtype
    if value.is_floating_point and not x.dtype.is_floating_point:
        x = x.view(value)
    return x.to(torch.float32)


def dequant_normalize_reference(
    x: torch.Tensor,
    dtype: str | DType,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    mul: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x ``[n, d]`` stored, scale ``[n]``, shift/mul ``[d]`` -> ``[n, d]`` of ``out_dtype``."""
    v = decode_stored(x, dtype)
    if scale is not None:
        v = v * scale.to(torch.float32)[:, None]
    if shift is not None:
        v = v - shift.to(torch.float32)
    if mul is not None:
        v = v * mul.to(torch.float32)
    return v.to(out_dtype)
