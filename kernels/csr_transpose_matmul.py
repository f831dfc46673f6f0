"""Triton kernels: sparse^T @ dense, ``grad_W[cols[e]] += vals[e] * (X[rows[e]] - shift)``
and ``grad_b[cols[e]] += vals[e]``.

This is the SAE decoder weight gradient (``vals`` = latent values, ``X`` = gradient of the
reconstruction) and the encoder weight/bias gradient (``vals`` = gradient of the selected
pre-activations, ``X = x``, ``shift = pre_bias``). Only the ``nnz`` selected (row, latent)
pairs are touched: ``O(nnz * d)`` work, where the dense form would be an ``[m, n] @ [n, d]``
GEMM.

Two accumulation strategies, selectable because their relative speed is a GPU question
(not yet measured on one; see benchmarks/README.md):

- ``sorted``: entries are sorted by latent (``torch.sort``, stable), then one program per
  (latent, ``BLOCK_D`` slice) sums its run of entries in registers and writes its row of
  ``grad_W`` once. Deterministic (the same bits on every run, which an exactly resumable
  training run needs) and it writes every row, so no zero-fill pass.
- ``atomic``: one program per (``BLOCK_E`` entries, ``BLOCK_D`` slice) adds into a
  zeroed ``grad_W`` with float32 atomics. No sort, but the summation order, and so the
  last bits, vary between runs.

Shapes: rows, cols ``[nnz]`` int64, vals ``[nnz]``, X ``[n, d]`` (last dim contiguous),
shift ``[d]`` or None, m latents. Outputs ``grad_W [m, d]`` and ``grad_b [m]``, float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _csr_transpose_matmul_sorted_kernel(
    col_ptr,
    row_ptr,
    val_ptr,
    x_ptr,
    shift_ptr,
    gw_ptr,
    gb_ptr,
    D,
    stride_x,
    HAS_SHIFT: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    c = tl.program_id(0)
    pid_d = tl.program_id(1)
    ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    start = tl.load(col_ptr + c)
    end = tl.load(col_ptr + c + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    vsum = tl.zeros((BLOCK_E,), dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        es = e0 + tl.arange(0, BLOCK_E)
        emask = es < end
        r = tl.load(row_ptr + es, mask=emask, other=0)
        v = tl.load(val_ptr + es, mask=emask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + r[:, None] * stride_x + ds[None, :], mask=emask[:, None] & dmask[None, :], other=0.0).to(
            tl.float32
        )
        acc += tl.sum(v[:, None] * x, axis=0)
        vsum += v
    if HAS_SHIFT:
        # sum_e v_e (x_e - s) = sum_e v_e x_e - (sum_e v_e) s
        acc -= tl.sum(vsum, axis=0) * tl.load(shift_ptr + ds, mask=dmask, other=0.0).to(tl.float32)
    tl.store(gw_ptr + c.to(tl.int64) * D + ds, acc, mask=dmask)
    if pid_d == 0:
        tl.store(gb_ptr + c, tl.sum(vsum, axis=0))


@triton.jit
def _csr_transpose_matmul_atomic_kernel(
    row_ptr,
    col_ptr,
    val_ptr,
    x_ptr,
    shift_ptr,
    gw_ptr,
    gb_ptr,
    NNZ,
    D,
    stride_x,
    HAS_SHIFT: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    es = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    pid_d = tl.program_id(1)
    ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    emask = es < NNZ
    dmask = ds < D
    m2 = emask[:, None] & dmask[None, :]
    r = tl.load(row_ptr + es, mask=emask, other=0)
    c = tl.load(col_ptr + es, mask=emask, other=0)
    v = tl.load(val_ptr + es, mask=emask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + r[:, None] * stride_x + ds[None, :], mask=m2, other=0.0).to(tl.float32)
    if HAS_SHIFT:
        x -= tl.load(shift_ptr + ds, mask=dmask, other=0.0).to(tl.float32)[None, :]
    tl.atomic_add(gw_ptr + c[:, None] * D + ds[None, :], v[:, None] * x, mask=m2)
    if pid_d == 0:
        tl.atomic_add(gb_ptr + c, v, mask=emask)


def _csr_transpose_matmul_config(d: int, method: str, has_shift: bool) -> dict:
    """The launch's constexprs and ``num_warps`` for ``method`` 'sorted' or 'atomic' (pure;
    benchmarks/gpu_compile.py compiles what a launch would). Tiles of both variants not
    tuned on a GPU; see benchmarks/README.md."""
    block_e = 16 if method == "sorted" else 32
    return dict(HAS_SHIFT=has_shift, BLOCK_E=block_e, BLOCK_D=min(128, max(16, triton.next_power_of_2(d))), num_warps=4)


def csr_transpose_matmul_fwd(
    rows: torch.Tensor,
    cols: torch.Tensor,
    vals: torch.Tensor,
    X: torch.Tensor,
    m: int,
    shift: torch.Tensor | None = None,
    method: str = "sorted",
):
    """Launch: ``(grad_W [m, d], grad_b [m])`` float32 (see the module docstring)."""
    nnz = cols.numel()
    d = X.shape[1]
    X = X if X.stride(1) == 1 else X.contiguous()
    has_shift = shift is not None
    shift_arg = shift.contiguous() if has_shift else X
    if method == "sorted":
        cfg = _csr_transpose_matmul_config(d, method, has_shift)
        gw = torch.empty((m, d), dtype=torch.float32, device=X.device)
        gb = torch.empty(m, dtype=torch.float32, device=X.device)
        if m == 0:
            return gw, gb
        order = torch.sort(cols, stable=True).indices
        col_ptr = torch.zeros(m + 1, dtype=torch.int64, device=X.device)
        col_ptr[1:] = torch.cumsum(torch.bincount(cols, minlength=m), 0)
        _csr_transpose_matmul_sorted_kernel[(m, triton.cdiv(d, cfg["BLOCK_D"]))](
            col_ptr,
            rows[order].contiguous(),
            vals[order].contiguous(),
            X,
            shift_arg,
            gw,
            gb,
            d,
            X.stride(0),
            **cfg,
        )
        return gw, gb
    if method == "atomic":
        gw = torch.zeros((m, d), dtype=torch.float32, device=X.device)
        gb = torch.zeros(m, dtype=torch.float32, device=X.device)
        if nnz == 0:
            return gw, gb
        cfg = _csr_transpose_matmul_config(d, method, has_shift)
        _csr_transpose_matmul_atomic_kernel[(triton.cdiv(nnz, cfg["BLOCK_E"]), triton.cdiv(d, cfg["BLOCK_D"]))](
            rows.contiguous(),
            cols.contiguous(),
            vals.contiguous(),
            X,
            shift_arg,
            gw,
            gb,
            nnz,
            d,
            X.stride(0),
            **cfg,
        )
        return gw, gb
    raise ValueError(f"unknown accumulation method {method!r}: use 'sorted' or 'atomic'")
