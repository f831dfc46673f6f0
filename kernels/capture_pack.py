"""Triton capture kernels: two passes over a hook's activations that compact the kept rows,
write them in the storage dtype and accumulate the store's statistics.

Shapes: x ``[N, d]`` (rows of ``[batch, seq, d]``, last dim contiguous), keep ``[N]``
(int8), dst ``[N]`` int64 (output row of each kept row: ``cumsum(keep) - 1``), shift
``[d]`` float32 (centre for the moments). Outputs: data ``[n, d]`` in the storage dtype,
scale ``[n]`` float32 (fp8/int8), bad ``[n]`` int8, s1/s2 ``[d]`` float32 and norm_sum
``[1]`` float32, the last three accumulated with atomics (zero them first).

Pass 1 (``_capture_row_stats_kernel``, a row reduction): each program owns BLOCK_M rows and
walks d, finding each row's squared norm, absmax (for the fp8/int8 scale) and non-finite
count; it writes scale and bad at the row's output position and adds the good rows' norms.
Pass 2 (``_capture_pack_fwd_kernel``, element-wise): each program owns a strip of BLOCK_D
columns over ROWS_PER_PROG rows, converts and stores each element (reading the row's scale
and bad back), and sums the centred moments of its columns in registers, adding them to
s1/s2 once. Pass 2 reads x a second time, from L2 where the batch fits (a design intent, not
measured), as the single kernel's second walk did before. Splitting the passes is what lets
pass 2 use small tiles (see ``_capture_pack_config``).

fp8 storage converts with ``tl.float8e4nv``, which sm_80 (A100) lacks: the launcher refuses
it there in one line (``_capture_pack_unsupported``) rather than fail to compile.

``MODE`` is the storage dtype's ``DType.mode`` (``actstore/store/format.py``: 0 fp32,
1 fp16, 2 bf16, 3 fp8, 4 int8, 5 q16), passed in by the launcher with ``SCALED``, ``QMAX``
and ``RMS_STEP`` (q16's scale is a share of the row's RMS, not of its absmax);
this module imports nothing from actstore.

Checked against ``actstore.reference.capture_pack`` by tests/ops/test_capture_pack.py under
TRITON_INTERPRET=1 on a CPU: fp32/fp16/int8 data and the scales bit-exact, statistics to
fp32 rounding; q16's scale to fp32 rounding (its squared norm sums in another order) and
so its codes to one step where a value sits on a rounding edge. The interpreter's bf16 and
fp8 downcasts are not exact (docs/ARCHITECTURE.md), so there bf16 is checked to one step and
fp8 loosely. On a GPU the same test asks the other five to be bit-exact; it has not yet run
on one (see benchmarks/README.md, gpu_session.sh).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _capture_row_stats_kernel(
    x_ptr,
    stride_x,
    keep_ptr,
    dst_ptr,
    scale_ptr,
    bad_ptr,
    norm_ptr,
    N,
    D,
    SCALED: tl.constexpr,
    QMAX: tl.constexpr,
    RMS_STEP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Pass 1, a row reduction: each program owns BLOCK_M rows and walks d in BLOCK_D tiles,
    keeping three running values per row (squared norm, absmax, non-finite count). Writes the
    kept rows' ``scale`` (SCALED: ``absmax / QMAX``, or ``RMS_STEP * rms`` when RMS_STEP > 0)
    and ``bad`` at their output row, and adds the norms of the good rows to ``norm``."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    keep = (tl.load(keep_ptr + rows, mask=rmask, other=0) != 0) & rmask
    dst = tl.load(dst_ptr + rows, mask=keep, other=0)
    x_row = x_ptr + rows.to(tl.int64)[:, None] * stride_x  # int64: N * stride passes 2^31 at large batches
    cols0 = tl.arange(0, BLOCK_D)
    sq = tl.zeros([BLOCK_M], dtype=tl.float32)
    amax = tl.zeros([BLOCK_M], dtype=tl.float32)
    nbad = tl.zeros([BLOCK_M], dtype=tl.int32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + cols0
        m = keep[:, None] & (cols < D)[None, :]
        x = tl.load(x_row + cols[None, :], mask=m, other=0.0).to(tl.float32)
        fin = tl.abs(x) < float("inf")  # False for NaN too
        nbad += tl.sum(tl.where(fin, 0, 1), axis=1)
        xf = tl.where(fin, x, 0.0)
        sq += tl.sum(xf * xf, axis=1)
        amax = tl.maximum(amax, tl.max(tl.abs(xf), axis=1))
    good = keep & (nbad == 0)
    tl.atomic_add(norm_ptr, tl.sum(tl.where(good, tl.sqrt(sq), 0.0), axis=0))
    if SCALED:
        if RMS_STEP > 0:  # q16: the step is a share of the row's RMS, from the same squared norm
            sc = tl.sqrt_rn(tl.math.div_rn(sq, D * 1.0)) * RMS_STEP
        else:
            sc = tl.math.div_rn(amax, QMAX)
        tl.store(scale_ptr + dst, sc, mask=keep)
    tl.store(bad_ptr + dst, tl.where(nbad > 0, 1, 0).to(tl.int8), mask=keep)


@triton.jit
def _capture_pack_fwd_kernel(
    x_ptr,
    stride_x,
    keep_ptr,
    dst_ptr,
    shift_ptr,
    out_ptr,
    scale_ptr,
    bad_ptr,
    s1_ptr,
    s2_ptr,
    N,
    D,
    ROWS_PER_PROG,
    MODE: tl.constexpr,
    SCALED: tl.constexpr,
    QMAX: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Pass 2, element-wise: program (c, r) owns columns ``[c*BLOCK_D, +BLOCK_D)`` of rows
    ``[r*ROWS_PER_PROG, +ROWS_PER_PROG)`` and walks them in [BLOCK_M, BLOCK_D] tiles: convert
    and store each element, and add the centred moments of the good rows to two column
    accumulators held across the walk, so the program adds to s1/s2 once at the end (the
    atomics do not grow as the tile shrinks). The row's scale and bad flag come from pass 1."""
    pc = tl.program_id(0)
    pr = tl.program_id(1)
    cols = pc * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    sh = tl.load(shift_ptr + cols, mask=cmask, other=0.0)
    s1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_D], dtype=tl.float32)
    r_end = tl.minimum(pr * ROWS_PER_PROG + ROWS_PER_PROG, N)
    for r0 in range(pr * ROWS_PER_PROG, r_end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        rmask = rows < r_end
        keep = (tl.load(keep_ptr + rows, mask=rmask, other=0) != 0) & rmask
        dst = tl.load(dst_ptr + rows, mask=keep, other=0)
        good = keep & (tl.load(bad_ptr + dst, mask=keep, other=1) == 0)
        m = keep[:, None] & cmask[None, :]
        x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
        c = tl.where(good[:, None] & cmask[None, :], x - sh[None, :], 0.0)
        s1 += tl.sum(c, axis=0)
        s2 += tl.sum(c * c, axis=0)
        if MODE == 0:  # fp32
            y = x
        elif MODE == 1:  # fp16
            y = x.to(tl.float16)
        elif MODE == 2:  # bf16
            y = x.to(tl.bfloat16)
        else:
            scale = tl.load(scale_ptr + dst, mask=keep, other=1.0)
            safe = tl.where(scale > 0, scale, 1.0)
            if MODE == 3:  # fp8 e4m3fn bits
                q = tl.minimum(tl.maximum(tl.math.div_rn(x, safe[:, None]), -QMAX), QMAX)
                y = q.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
            else:  # int8, q16
                q = tl.math.div_rn(x, safe[:, None])
                r = tl.floor(q + 0.5)
                # Round half to even, as torch.round: a tie that landed on an odd value steps back.
                odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
                r = tl.where(((r - q) == 0.5) & odd, r - 1.0, r)
                r = tl.minimum(tl.maximum(r, -QMAX), QMAX)
                if MODE == 4:
                    y = r.to(tl.int8)
                else:  # q16: zigzag bits, 0 -1 1 -2 2 ... -> 0 1 2 3 4 ..., in the int16 holder
                    qi = r.to(tl.int32)
                    y = ((qi << 1) ^ (qi >> 31)).to(tl.int16)
        tl.store(out_ptr + dst.to(tl.int64)[:, None] * D + cols[None, :], y, mask=m)
    tl.atomic_add(s1_ptr + cols, s1, mask=cmask)
    tl.atomic_add(s2_ptr + cols, s2, mask=cmask)


# Storage modes whose conversion the GPU must support: fp8 (MODE 3) converts with
# tl.float8e4nv, which needs sm_89+ (Ada, Hopper); an A100 (sm_80) has no such conversion.
FP8_MODE = 3
FP8_MIN_CAPABILITY = (8, 9)


def _capture_pack_unsupported(dtype, capability: tuple[int, int]) -> str | None:
    """Why storage ``dtype`` cannot be captured by these kernels on a GPU of compute
    ``capability``, or None when it can."""
    if dtype.mode == FP8_MODE and tuple(capability) < FP8_MIN_CAPABILITY:
        return (
            f"fp8 capture needs a GPU of compute capability 8.9+ (e4m3 conversion), this one is "
            f"{capability[0]}.{capability[1]}: store bf16 or int8 instead"
        )
    return None


def _capture_pack_config(d: int, dtype, block_m: int = 8, block_d: int | None = None) -> dict:
    """Pass 2's constexprs and ``num_warps`` for rows of ``d`` columns stored as ``dtype``
    (a ``DType``: ``mode``, ``scaled``, ``qmax``); pure, so benchmarks/gpu_compile.py compiles
    exactly what a launch would.

    Why these tiles: an element-wise pass needs only a few live values per element (x, its
    centred value, the converted one) and one pointer per vector, so registers follow the
    elements each thread holds: [8, 128] at 8 warps is 4 per thread (one 16-byte fp32 vector),
    48 registers at sm_90a and sm_80 for every storage dtype at d=768-8192, no spill. The
    earlier single-pass kernel held [32, 64] tiles (16 per thread) because its column-moment
    atomics grew as 1/BLOCK_M, and carried three per-row running values and both row walks in
    one body: 71-96 registers at sm_90a, 4 B spilled at fp32 on sm_80 (whole-row tiles before
    that: 255 and spills). Here the moments accumulate per column across the program's rows
    (ROWS_PER_PROG), so the atomics no longer depend on the tile, and the row reduction is
    pass 1's (30-32 registers), so the tile is free to shrink. [4, 128] at 4 warps gave 48
    too, [4, 256] and [16, 64] 56-80, [4, 512] up to 128 (figures compiled, not run:
    benchmarks/results/gpu_compile.json)."""
    if block_d is None:
        block_d = min(128, triton.next_power_of_2(d))
    return dict(
        MODE=dtype.mode, SCALED=dtype.scaled, QMAX=dtype.qmax or 1.0, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=8
    )


def _capture_row_stats_config(d: int, dtype) -> dict:
    """Pass 1's constexprs and ``num_warps``: [16, 64] tiles, 8 elements per thread at 4 warps;
    16 rows per program keeps the one atomic on ``norm`` per program to N/16."""
    return dict(
        SCALED=dtype.scaled,
        QMAX=dtype.qmax or 1.0,
        RMS_STEP=dtype.rms_step or 0.0,
        BLOCK_M=16,
        BLOCK_D=min(64, triton.next_power_of_2(d)),
        num_warps=4,
    )


def _rows_per_prog(n: int, d: int, block_m: int, block_d: int, programs: int) -> int:
    """Rows each pass-2 program walks: enough column strips x row groups for ``programs``
    programs (a few per SM), in whole tiles; more rows per program means fewer atomics."""
    strips = triton.cdiv(d, block_d)
    groups = max(1, min(triton.cdiv(n, block_m), triton.cdiv(programs, strips)))
    return triton.cdiv(triton.cdiv(n, groups), block_m) * block_m


def capture_pack_fwd(
    x: torch.Tensor,
    keep: torch.Tensor,
    dst: torch.Tensor,
    shift: torch.Tensor,
    dtype,
    n_keep: int,
    *,
    out: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    bad: torch.Tensor | None = None,
    moments: torch.Tensor | None = None,
    block_m: int = 8,
    block_d: int | None = None,
):
    """Launch the kernel. ``x [N, d]`` with unit last stride; ``keep [N]`` int8/bool;
    ``dst [N]`` int64; ``shift [d]`` float32; ``dtype`` an ``actstore.store.format.DType``
    (its ``mode``, ``torch_dtype`` and ``qmax`` select the conversion). Optional
    preallocated outputs (staging buffers, at least ``n_keep`` rows; ``moments``
    ``[2*d + 1]`` float32, zeroed here).

    Returns (data ``[n_keep, d]``, scale ``[n_keep]`` or None, bad ``[n_keep]`` int8,
    s1 ``[d]``, s2 ``[d]``, norm_sum ``[1]``), views into the buffers.
    """
    N, D = x.shape
    dev = x.device
    keep = keep.view(torch.int8) if keep.dtype == torch.bool else keep
    if x.stride(1) != 1:
        x = x.contiguous()
    out = torch.empty((max(n_keep, 1), D), dtype=dtype.torch_dtype, device=dev) if out is None else out
    bad = torch.empty(max(n_keep, 1), dtype=torch.int8, device=dev) if bad is None else bad
    scaled = dtype.scaled
    if scaled and scale is None:
        scale = torch.empty(max(n_keep, 1), dtype=torch.float32, device=dev)
    moments = torch.empty(2 * D + 1, dtype=torch.float32, device=dev) if moments is None else moments
    moments.zero_()
    s1, s2, norm = moments[:D], moments[D : 2 * D], moments[2 * D :]
    if x.is_cuda:
        why = _capture_pack_unsupported(dtype, torch.cuda.get_device_capability(dev))
        if why is not None:
            raise ValueError(why)
    if N:
        st = _capture_row_stats_config(D, dtype)
        w1 = st.pop("num_warps")
        _capture_row_stats_kernel[(triton.cdiv(N, st["BLOCK_M"]),)](
            x, x.stride(0), keep, dst, scale if scaled else moments, bad, norm, N, D, num_warps=w1, **st
        )
        cfg = _capture_pack_config(D, dtype, block_m, block_d)
        # A few programs per SM; on the CPU (the interpreter, tests) 8 "SMs", so several row groups run.
        sms = torch.cuda.get_device_properties(dev).multi_processor_count if x.is_cuda else 8
        rpp = _rows_per_prog(N, D, cfg["BLOCK_M"], cfg["BLOCK_D"], 4 * sms)
        grid = (triton.cdiv(D, cfg["BLOCK_D"]), triton.cdiv(N, rpp))
        _capture_pack_fwd_kernel[grid](
            x, x.stride(0), keep, dst, shift, out, scale if scaled else moments, bad, s1, s2, N, D, rpp, **cfg
        )
    return out[:n_keep], (scale[:n_keep] if scaled else None), bad[:n_keep], s1, s2, norm
