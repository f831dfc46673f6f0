"""Reference per-row quantization of activations to fp8-e4m3 and int8.

Both use a symmetric per-row scale from the row's absolute maximum, so one outlier row
cannot flatten the others. Error bounds (per element, original units, finite rows):

- fp8 e4m3fn (3 mantissa bits, scale = absmax/448):
  ``|x - x_hat| <= 2**-4 * |x| + 2**-10 * absmax / 448``
  (half an ulp relative for normals; half the subnormal step 2**-9 near zero).
- int8 (scale = absmax/127): ``|x - x_hat| <= absmax / 254`` (half a quantization step).

A row of zeros gets scale 0 and decodes to zeros. Rows must be finite: NaN/inf have no
faithful encoding here, so the writer refuses them for these dtypes.
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn
INT8_MAX = 127.0


def _row_scale(x: torch.Tensor, qmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (scale [n] float32, safe divisor [n, 1]) for rows of ``x [n, d]``."""
    absmax = x.abs().amax(dim=1) if x.shape[1] else torch.zeros(x.shape[0], device=x.device)
    scale = (absmax / qmax).to(torch.float32)
    # A zero row would divide by zero; any divisor gives q = 0 there, and scale 0 decodes to 0.
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, safe[:, None]


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [n, d]`` float -> (e4m3fn bits as uint8 ``[n, d]``, scale float32 ``[n]``)."""
    x = x.to(torch.float32)
    scale, safe = _row_scale(x, FP8_MAX)
    q = (x / safe).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(torch.uint8), scale


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [n, d]`` float -> (int8 ``[n, d]``, scale float32 ``[n]``), round half to even."""
    x = x.to(torch.float32)
    scale, safe = _row_scale(x, INT8_MAX)
    q = torch.round(x / safe).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def dequantize_fp8(bits: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 e4m3fn bits ``[n, d]`` and scale ``[n]`` -> ``[n, d]`` in ``dtype``."""
    return (bits.view(torch.float8_e4m3fn).to(torch.float32) * scale.to(torch.float32)[:, None]).to(dtype)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """int8 ``[n, d]`` and scale ``[n]`` -> ``[n, d]`` in ``dtype``."""
    return (q.to(torch.float32) * scale.to(torch.float32)[:, None]).to(dtype)
