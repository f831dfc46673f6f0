"""Triton capture kernel: one pass over a hook's activations that compacts the kept rows,
writes them in the storage dtype and accumulates the store's statistics.

Shapes: x ``[N, d]`` (rows of ``[batch, seq, d]``, last dim contiguous), keep ``[N]``
(int8), dst ``[N]`` int64 (output row of each kept row: ``cumsum(keep) - 1``), shift
``[d]`` float32 (centre for the moments). Outputs: data ``[n, d]`` in the storage dtype,
scale ``[n]`` float32 (fp8/int8), bad ``[n]`` int8, s1/s2 ``[d]`` float32 and norm_sum
``[1]`` float32, the last three accumulated with atomics (zero them first).

Each program owns BLOCK_M rows. It walks d twice in BLOCK_D-column tiles: the first walk
finds each row's squared norm, absmax (for the fp8/int8 scale) and non-finite count; the
second converts and stores the row and adds its centred moments. The second walk is meant
to hit L2, so that HBM is read once (a design intent, not measured).

``MODE`` is the storage dtype's ``DType.mode`` (``actstore/store/format.py``: 0 fp32,
1 fp16, 2 bf16, 3 fp8, 4 int8), passed in by the launcher with ``SCALED`` and ``QMAX``;
this module imports nothing from actstore.

Checked against ``actstore.reference.capture_pack`` by tests/ops/test_capture_pack.py under
TRITON_INTERPRET=1 on a CPU: fp32/fp16/int8 data and the scales bit-exact, statistics to
fp32 rounding. The interpreter's bf16 and fp8 downcasts are not exact (docs/ARCHITECTURE.md), so
there bf16 is checked to one step and fp8 loosely. On a GPU the same test asks all five
to be bit-exact; it has not yet run on one (see benchmarks/README.md, gpu_session.sh).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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
    norm_ptr,
    N,
    D,
    MODE: tl.constexpr,
    SCALED: tl.constexpr,
    QMAX: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    keep = (tl.load(keep_ptr + rows, mask=rmask, other=0) != 0) & rmask
    dst = tl.load(dst_ptr + rows, mask=rmask, other=0)
    x_row = x_ptr + rows.to(tl.int64)[:, None] * stride_x
    cols0 = tl.arange(0, BLOCK_D)

    # Walk 1: per-row squared norm, absmax and count of NaN/inf elements.
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
    scale = tl.math.div_rn(amax, QMAX)
    safe = tl.where(scale > 0, scale, 1.0)

    # Walk 2: convert and store, add the centred moments of the good rows.
    out_row = out_ptr + dst.to(tl.int64)[:, None] * D
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + cols0
        cmask = cols < D
        m = keep[:, None] & cmask[None, :]
        x = tl.load(x_row + cols[None, :], mask=m, other=0.0).to(tl.float32)
        sh = tl.load(shift_ptr + cols, mask=cmask, other=0.0)
        c = tl.where(good[:, None] & cmask[None, :], x - sh[None, :], 0.0)
        tl.atomic_add(s1_ptr + cols, tl.sum(c, axis=0), mask=cmask)
        tl.atomic_add(s2_ptr + cols, tl.sum(c * c, axis=0), mask=cmask)
        if MODE == 0:  # fp32
            y = x
        elif MODE == 1:  # fp16
            y = x.to(tl.float16)
        elif MODE == 2:  # bf16
            y = x.to(tl.bfloat16)
        elif MODE == 3:  # fp8 e4m3fn bits
            q = tl.minimum(tl.maximum(tl.math.div_rn(x, safe[:, None]), -QMAX), QMAX)
            y = q.to(tl.float8e4nv).to(tl.uint8, bitcast=True)
        else:  # int8
            q = tl.math.div_rn(x, safe[:, None])
            r = tl.floor(q + 0.5)
            # Round half to even, as torch.round: a tie that landed on an odd value steps back.
            odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
            r = tl.where(((r - q) == 0.5) & odd, r - 1.0, r)
            y = tl.minimum(tl.maximum(r, -QMAX), QMAX).to(tl.int8)
        tl.store(out_row + cols[None, :], y, mask=m)
    tl.atomic_add(norm_ptr, tl.sum(tl.where(good, tl.sqrt(sq), 0.0), axis=0))
    if SCALED:
        tl.store(scale_ptr + dst, scale, mask=keep)
    tl.store(bad_ptr + dst, tl.where(nbad > 0, 1, 0).to(tl.int8), mask=keep)


def _capture_pack_config(d: int, dtype, block_m: int = 32, block_d: int | None = None) -> dict:
    """The launch's constexprs and ``num_warps`` for rows of ``d`` columns stored as ``dtype``
    (a ``DType``: ``mode``, ``scaled``, ``qmax``); pure, so benchmarks/gpu_compile.py compiles
    exactly what a launch would.

    ``block_d`` None: tiles of at most 64 columns. An element-wise pass keeps only a few
    values live per element (x, its centred value, the converted one), so a [32, 64] tile at
    4 warps is 16 elements per thread per array: 71-90 registers at sm_90a, no spill
    (compiled, not run: benchmarks/results/gpu_compile.json). The earlier whole-row tiles
    ([32, 1024] for d <= 1024, [32, 512] above) held 128-256 fp32 per thread per array: 255
    registers and 0.4-29 KB of spills per thread. Walk 2 re-reads the program's 32 rows, from
    L2 (a design intent, not measured)."""
    if block_d is None:
        block_d = min(64, triton.next_power_of_2(d))
    return dict(
        MODE=dtype.mode,
        SCALED=dtype.scaled,
        QMAX=dtype.qmax or 1.0,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=4,
    )


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
    block_m: int = 32,
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
    cfg = _capture_pack_config(D, dtype, block_m, block_d)
    if N:
        grid = (triton.cdiv(N, cfg["BLOCK_M"]),)
        _capture_pack_fwd_kernel[grid](
            x,
            x.stride(0),
            keep.view(torch.int8) if keep.dtype == torch.bool else keep,
            dst,
            shift,
            out,
            scale if scaled else out,
            bad,
            s1,
            s2,
            norm,
            N,
            D,
            **cfg,
        )
    return out[:n_keep], (scale[:n_keep] if scaled else None), bad[:n_keep], s1, s2, norm
