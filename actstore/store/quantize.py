"""Per-row quantization of activations to the store's scaled dtypes: fp8-e4m3, int8 and q16.

fp8 and int8 use a symmetric per-row scale from the row's absolute maximum,
``scale = absmax / qmax`` (``qmax`` from the dtype registry, ``store/format.DTYPES``: 448
for fp8, 127 for int8), so one outlier row cannot flatten the others. q16 scales by the
row's RMS instead, ``scale = rms_step * sqrt(mean(x^2))`` (rms_step 1/32), with 16-bit
codes: its error is a fixed share of the row's norm whatever the row's outlier channels,
which an absmax scale is not (one channel at 20x the RMS makes int8's step 20x coarser for
every other channel). Error bounds (per element, original units, finite rows):

- fp8 e4m3fn (3 mantissa bits, scale = absmax/448):
  ``|x - x_hat| <= 2**-4 * |x| + 2**-10 * absmax / 448``
  (half an ulp relative for normals; half the subnormal step 2**-9 near zero).
- int8 (scale = absmax/127): ``|x - x_hat| <= absmax / 254`` (half a quantization step).
- q16 (scale = rms/32, codes stored zigzag): ``|x - x_hat| <= rms / 64``, so the row's relative RMS error
  ``||x - x_hat|| / ||x||`` is at most 1/64 = 1.6%; rounding errors spread evenly over a
  step make it about ``1/(32*sqrt(12))`` = 0.90% on real rows (benchmarks/results/lossy_codecs.json).
  No code clips: ``|x| <= sqrt(d) * rms`` and the store refuses q16 rows wider than
  ``(32767/32)**2`` columns.

A row of zeros gets scale 0 and decodes to zeros. Rows must be finite: NaN/inf have no
faithful encoding here, so the writer refuses them for these dtypes.

Shapes: x ``[n, d]`` float (any device) -> codes ``[n, d]`` in ``dtype.torch_dtype`` (fp8 as
its uint8 bits, q16 as its zigzag bits in int16) and scale ``[n]`` float32. The capture
kernel (``kernels/capture_pack.py``) computes the same codes on a GPU (bit for bit; q16's
scale to fp32 rounding); this module is the store's quantizer and the
CPU path of ``actstore.ops.capture_pack``.
"""

from __future__ import annotations

import torch

from .format import DTYPES, DType


def _row_scale(x: torch.Tensor, dtype: DType) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (scale [n] float32, safe divisor [n, 1]) for float32 rows of ``x [n, d]``."""
    if not x.shape[1]:
        scale = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    elif dtype.rms_step:
        # float32 throughout, as the capture kernel computes it (its sum's order differs,
        # so its scale may differ in the last bit: tests/ops/test_capture_pack.py).
        scale = torch.sqrt((x * x).sum(dim=1) / x.shape[1]) * dtype.rms_step
    else:
        scale = (x.abs().amax(dim=1) / dtype.qmax).to(torch.float32)
    # A zero row would divide by zero; any divisor gives q = 0 there, and scale 0 decodes to 0.
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, safe[:, None]


def zigzag(q: torch.Tensor) -> torch.Tensor:
    """Signed integer codes (int32, within int16) -> their zigzag bits as int16: 0, -1, 1, -2,
    2 ... -> 0, 1, 2, 3, 4 ... (``(q << 1) ^ (q >> 31)``, kept to the low 16 bits)."""
    q = q.to(torch.int32)
    return ((q << 1) ^ (q >> 31)).to(torch.int16)  # the cast keeps the low 16 bits


def unzigzag(z: torch.Tensor) -> torch.Tensor:
    """Zigzag bits (int16 or uint16 holder) -> the signed codes as int32: ``(z >> 1) ^ -(z & 1)``."""
    u = z.view(torch.int16).to(torch.int32) & 0xFFFF
    return (u >> 1) ^ -(u & 1)


def quantize(x: torch.Tensor, dtype: DType) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [n, d]`` float -> (codes ``[n, d]`` in ``dtype.torch_dtype``, scale float32 ``[n]``)
    for a scaled ``dtype``. fp8 rounds to nearest even in the cast; int8 and q16 round half to even."""
    if not dtype.scaled:
        raise ValueError(
            f"quantize: {dtype.name} is not a scaled dtype: use one of "
            f"{', '.join(d.name for d in DTYPES.values() if d.scaled)}"
        )
    x = x.to(torch.float32)
    scale, safe = _row_scale(x, dtype)
    q = (x / safe).clamp(-dtype.qmax, dtype.qmax)
    if not dtype.value_dtype.is_floating_point:
        q = torch.round(q)  # an integer cast would truncate
    if dtype.zigzag:
        return zigzag(q.to(torch.int32)), scale
    return q.to(dtype.value_dtype).view(dtype.torch_dtype), scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: DType, out_dtype=torch.float32) -> torch.Tensor:
    """Codes ``[n, d]`` (as from :func:`quantize`) and scale ``[n]`` -> ``[n, d]`` in ``out_dtype``."""
    values = unzigzag(codes) if dtype.zigzag else codes.view(dtype.value_dtype)
    return (values.to(torch.float32) * scale.to(torch.float32)[:, None]).to(out_dtype)


def quantize_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [n, d]`` float -> (e4m3fn bits as uint8 ``[n, d]``, scale float32 ``[n]``)."""
    return quantize(x, DTYPES["fp8"])


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [n, d]`` float -> (int8 ``[n, d]``, scale float32 ``[n]``), round half to even."""
    return quantize(x, DTYPES["int8"])


def dequantize_fp8(bits: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 e4m3fn bits ``[n, d]`` and scale ``[n]`` -> ``[n, d]`` in ``dtype``."""
    return dequantize(bits, scale, DTYPES["fp8"], dtype)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """int8 ``[n, d]`` and scale ``[n]`` -> ``[n, d]`` in ``dtype``."""
    return dequantize(q, scale, DTYPES["int8"], dtype)
