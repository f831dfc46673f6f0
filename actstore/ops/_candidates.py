"""Candidate search of the threshold-style encoders (BatchTopK, JumpReLU, Gated) on the Triton path.

``threshold_candidates`` finds every ``(row, latent, score)`` above a floor from one
encoder GEMM: the fused encoder + top-k kernel (``actstore.kernels.topk_encode``) keeps
each row's highest scores, and rows that may hold more are recomputed densely by
``dense_rows`` in slices of ``DENSE_ROWS`` rows. Shapes: x ``[n, d]``, W_enc ``[m, d]``,
b ``[m]`` float32.
"""

from __future__ import annotations

import torch

DENSE_ROWS = 1024  # rows per slice of the dense fallback: 1024 x m float32


def dense_rows(x, W_enc, b, rows):
    """Pre-activations ``[len(rows), m]`` float32 of some rows (b has pre_bias folded in)."""
    # x rounded to W's dtype as the kernel sees it, products summed in float32: the same
    # values as the kernel's candidates up to summation order.
    xr = x[rows].to(W_enc.dtype).to(torch.float32)
    out = torch.empty(len(rows), W_enc.shape[0], dtype=torch.float32, device=x.device)
    for s in range(0, W_enc.shape[0], 8192):
        out[:, s : s + 8192] = xr @ W_enc[s : s + 8192].to(torch.float32).t()
    return out + b


def threshold_candidates(x, W_enc, b, cand_k, lo):
    """Every ``(row, latent, score)`` with ``score > lo``, where ``score = x @ W_enc.T + b``
    (``b`` float32, any pre-bias and threshold already folded in): the fused encoder + top-k
    kernel keeps each row's ``cand_k`` highest scores, and a row whose last candidate still
    passes (it may hold more) is recomputed densely in slices of rows. Exact; one encoder
    GEMM when few rows overflow. Returns ``(rows, cols, scores)``, unsorted by row."""
    from ..kernels.topk_encode import topk_encode_fwd  # kernels need Triton, an optional dependency

    n, m = x.shape[0], W_enc.shape[0]
    c = min(m, cand_k)
    v, i, _, _ = topk_encode_fwd(x, W_enc, b, c, None, relu=False)  # [n, c] descending
    bad = (v[:, -1] > lo) if c < m else torch.zeros(n, dtype=torch.bool, device=x.device)
    keep = (v > lo) & ~bad[:, None]
    r, j = keep.nonzero(as_tuple=True)
    rows, cols, scores = [r], [i[r, j]], [v[r, j]]
    bad_rows = bad.nonzero().reshape(-1)
    for s in range(0, bad_rows.numel(), DENSE_ROWS):
        rs = bad_rows[s : s + DENSE_ROWS]
        sc = dense_rows(x, W_enc, b, rs)
        rr, cc = (sc > lo).nonzero(as_tuple=True)
        rows.append(rs[rr]), cols.append(cc), scores.append(sc[rr, cc])
    return torch.cat(rows), torch.cat(cols), torch.cat(scores)
