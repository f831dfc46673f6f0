"""Triton kernel of the loader's last step: decode stored rows, scale, shift, multiply.

``out[i, j] = (decode(x[i, j]) * scale[i] - shift[j]) * mul[j]`` in float32, one rounding to
the output dtype; see ``actstore.reference.dequant_normalize`` (the oracle).

Shapes: x ``[n, d]`` (row stride ``stride_x``, last dim contiguous), scale ``[n]`` float32,
shift/mul ``[d]`` float32, out ``[n, d]`` contiguous (float32, bfloat16 or float16).

The decodes are integer arithmetic, so they do not depend on a backend's float casts: bf16
bits shifted into a float32, and fp8 e4m3fn assembled from its sign, exponent and mantissa
(no fp8 dtype needed, so the same code runs under TRITON_INTERPRET=1, where fp8 casts
are unreliable, and on GPUs without native fp8). tests/ops/test_dequant_normalize.py checks every
stored dtype bit for bit against the reference under the interpreter on a CPU; it has not
yet run on a GPU (see benchmarks/README.md). One read of the stored bytes and one write
of the output: the kernel is memory-bound by design (its bandwidth is not yet measured).

``MODE`` is the storage dtype's ``DType.mode`` (``actstore/store/format.py``: 2 bf16 bits,
3 fp8 bits, 5 q16's zigzag codes, else values), passed in by the launcher; this module imports nothing from
actstore.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _dequant_normalize_fwd_kernel(
    x_ptr,
    stride_x,
    scale_ptr,
    shift_ptr,
    mul_ptr,
    out_ptr,
    N,
    D,
    MODE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    HAS_MUL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < N
    cmask = cols < D
    m = rmask[:, None] & cmask[None, :]
    raw = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=m, other=0)
    if MODE == 2:
        # bf16 bits are the upper half of a float32.
        v = ((raw.to(tl.int32) & 0xFFFF) << 16).to(tl.float32, bitcast=True)
    elif MODE == 3:
        # e4m3fn: s eeee mmm, bias 7; exponent 0 is subnormal (m * 2^-9); 0x7F/0xFF are NaN.
        b = raw.to(tl.int32) & 0xFF
        e = (b >> 3) & 0xF
        mant = b & 0x7
        pow2 = ((e + 117) << 23).to(tl.float32, bitcast=True)  # 2^(e - 10), exact
        normal = (mant + 8).to(tl.float32) * pow2
        sub = mant.to(tl.float32) * 0.001953125  # 2^-9
        mag = tl.where(e == 0, sub, normal)
        mag = tl.where((e == 15) & (mant == 7), float("nan"), mag)
        v = tl.where((b & 0x80) != 0, -mag, mag)
    elif MODE == 5:
        # q16: zigzag bits in an int16 holder -> the signed code, (z >> 1) ^ -(z & 1).
        z = raw.to(tl.int32) & 0xFFFF
        v = ((z >> 1) ^ (0 - (z & 1))).to(tl.float32)
    else:  # fp32, fp16, int8: the values
        v = raw.to(tl.float32)
    if HAS_SCALE:
        s = tl.load(scale_ptr + rows, mask=rmask, other=0.0)
        v = v * s[:, None]
    if HAS_SHIFT:
        sh = tl.load(shift_ptr + cols, mask=cmask, other=0.0)
        v = v - sh[None, :]
    if HAS_MUL:
        mu = tl.load(mul_ptr + cols, mask=cmask, other=0.0)
        v = v * mu[None, :]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], v.to(out_ptr.dtype.element_ty), mask=m)


def _dequant_normalize_config(d: int, dtype, has_scale: bool, has_shift: bool, has_mul: bool) -> dict:
    """The launch's constexprs and ``num_warps`` (pure; benchmarks/gpu_compile.py compiles
    what a launch would). 2D tiles of 4096 elements (16 KiB of fp32 out): enough bytes in
    flight per program for a memory-bound kernel, and few programs under the interpreter.
    Rows whose width is no multiple of 16 load unvectorised, one element per register: at 4
    warps fp16 spilled 80 B at sm_90a (d=1000), at 8 warps (16 elements a thread) nothing."""
    block_d = min(256, triton.next_power_of_2(d))
    return dict(
        MODE=dtype.mode,
        HAS_SCALE=has_scale,
        HAS_SHIFT=has_shift,
        HAS_MUL=has_mul,
        BLOCK_N=max(1, 4096 // block_d),
        BLOCK_D=block_d,
        num_warps=4 if d % 16 == 0 else 8,
    )


def dequant_normalize_fwd(
    x: torch.Tensor,
    dtype,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    mul: torch.Tensor | None,
    out_dtype: torch.dtype,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the kernel; arguments as in ``actstore.reference.dequant_normalize``, with
    ``dtype`` an ``actstore.store.format.DType`` (its ``mode`` selects the decode)."""
    n, d = x.shape
    if x.stride(1) != 1:
        x = x.contiguous()
    if out is None:
        out = torch.empty((n, d), dtype=out_dtype, device=x.device)
    if n == 0 or d == 0:
        return out
    cfg = _dequant_normalize_config(d, dtype, scale is not None, shift is not None, mul is not None)
    dummy = x  # never read when the matching HAS_* is False
    grid = (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(d, cfg["BLOCK_D"]))
    _dequant_normalize_fwd_kernel[grid](
        x,
        x.stride(0),
        scale if scale is not None else dummy,
        shift if shift is not None else dummy,
        mul if mul is not None else dummy,
        out,
        n,
        d,
        **cfg,
    )
    return out
