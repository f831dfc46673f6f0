"""Triton kernel: CSR sparse @ dense, ``out[i] = sum_{e in row i} vals[e] * W[cols[e]]``.

This is the SAE sparse decode (``W = W_dec``) and, with the gradient of the selected
latents as ``vals`` and ``W = W_enc``, the encoder's input gradient. Each program owns
one output row and one ``BLOCK_D`` slice of it, reads only the rows of W its entries
name (``nnz * d`` elements in all) and keeps the sum in float32 registers, so no
``[nnz, d]`` product is ever formed.

Shapes: row_ptr ``[n+1]`` int64, cols ``[nnz]`` int64, vals ``[nnz]`` (any float dtype),
W ``[m, d]`` (last dim contiguous). Output ``[n, d]`` float32. A TopK result
``[n, k]`` is the CSR matrix with ``row_ptr = arange(n + 1) * k``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _csr_matmul_fwd_kernel(
    row_ptr, col_ptr, val_ptr, w_ptr, out_ptr, D, stride_w, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr
):
    i = tl.program_id(0)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    start = tl.load(row_ptr + i)
    end = tl.load(row_ptr + i + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for e0 in range(start, end, BLOCK_E):
        es = e0 + tl.arange(0, BLOCK_E)
        emask = es < end
        c = tl.load(col_ptr + es, mask=emask, other=0)
        v = tl.load(val_ptr + es, mask=emask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + c[:, None] * stride_w + ds[None, :], mask=emask[:, None] & dmask[None, :], other=0.0).to(
            tl.float32
        )
        acc += tl.sum(v[:, None] * w, axis=0)
    tl.store(out_ptr + i.to(tl.int64) * D + ds, acc, mask=dmask)


def _csr_matmul_config(d: int) -> dict:
    """The launch's constexprs and ``num_warps`` (pure; benchmarks/gpu_compile.py compiles
    what a launch would). BLOCK_D 128 keeps a row's k gathered slices in registers; 16
    entries per step covers k=32 in two steps. Not tuned on a GPU; see benchmarks/README.md."""
    return dict(BLOCK_E=16, BLOCK_D=min(128, triton.next_power_of_2(d)), num_warps=4)


def csr_matmul_fwd(row_ptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Launch: ``[n, d]`` float32 (see the module docstring for shapes)."""
    n = row_ptr.numel() - 1
    d = W.shape[1]
    if W.stride(1) != 1:
        W = W.contiguous()
    out = torch.empty((n, d), dtype=torch.float32, device=W.device)
    if n == 0 or d == 0:
        return out
    cfg = _csr_matmul_config(d)
    grid = (n, triton.cdiv(d, cfg["BLOCK_D"]))
    _csr_matmul_fwd_kernel[grid](
        row_ptr.contiguous(), cols.contiguous(), vals.contiguous(), W, out, d, W.stride(0), **cfg
    )
    return out
