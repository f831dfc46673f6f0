"""Triton kernel: a dense product evaluated only at the sparse entries,
``out[e] = G[rows[e]] . W[cols[e]]``.

This is the gradient of the selected latent values in the SAE decode
(``G = grad of the reconstruction``, ``W = W_dec``): ``nnz`` dot products of length d
instead of the ``[n, m]`` product ``G @ W_dec.T``. Each program owns ``BLOCK_E`` entries
and walks d in ``BLOCK_D`` tiles, accumulating in float32.

Shapes: rows, cols ``[nnz]`` int64, G ``[n, d]``, W ``[m, d]`` (last dims contiguous).
Output ``[nnz]`` float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _csr_gather_dot_fwd_kernel(
    row_ptr, col_ptr, g_ptr, w_ptr, out_ptr, NNZ, D, stride_g, stride_w, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr
):
    es = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = es < NNZ
    r = tl.load(row_ptr + es, mask=emask, other=0)
    c = tl.load(col_ptr + es, mask=emask, other=0)
    acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        m2 = emask[:, None] & (ds < D)[None, :]
        g = tl.load(g_ptr + r[:, None] * stride_g + ds[None, :], mask=m2, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + c[:, None] * stride_w + ds[None, :], mask=m2, other=0.0).to(tl.float32)
        acc += tl.sum(g * w, axis=1)
    tl.store(out_ptr + es, acc, mask=emask)


def _csr_gather_dot_config(d: int) -> dict:
    """The launch's constexprs and ``num_warps`` (pure; benchmarks/gpu_compile.py compiles
    what a launch would): 32 entries x 128 columns per step. Not tuned on a GPU; see
    benchmarks/README.md."""
    return dict(BLOCK_E=32, BLOCK_D=min(128, max(16, triton.next_power_of_2(d))), num_warps=4)


def csr_gather_dot_fwd(rows: torch.Tensor, cols: torch.Tensor, G: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Launch: ``[nnz]`` float32 (see the module docstring for shapes)."""
    nnz = cols.numel()
    d = W.shape[1]
    G = G if G.stride(1) == 1 else G.contiguous()
    W = W if W.stride(1) == 1 else W.contiguous()
    out = torch.empty(nnz, dtype=torch.float32, device=W.device)
    if nnz == 0:
        return out
    cfg = _csr_gather_dot_config(d)
    _csr_gather_dot_fwd_kernel[(triton.cdiv(nnz, cfg["BLOCK_E"]),)](
        rows.contiguous(), cols.contiguous(), G, W, out, nnz, d, G.stride(0), W.stride(0), **cfg
    )
    return out
