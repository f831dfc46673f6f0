"""Candidate search of the threshold-style encoders (BatchTopK, JumpReLU, Gated) on the Triton path.

``threshold_candidates`` finds every ``(row, latent, score)`` above a floor from one
encoder GEMM: the fused encoder + top-k kernel (``actstore.kernels.topk_encode``; its
launcher hands ``cand_k`` above 256 to the split kernel, whose running sets would
otherwise spill out of registers) keeps each row's highest scores, and rows that may hold more are recomputed densely by
``dense_rows`` in slices of ``DENSE_ROWS`` rows. Shapes: x ``[n, d]``, W_enc ``[m, d]``,
b ``[m]`` float32.

``cand_k`` decides the cost: a row holding more entries above the floor than ``cand_k``
is computed twice (kernel, then dense). At initialization a JumpReLU SAE with theta 0.001
has about m/2 entries per row and a Gated SAE most of its gates open, so every row took
the dense path. :func:`adapt_cand_k` sizes ``cand_k`` from the entries per row of the last
batch (its 99th percentile, so one outlier row such as BOS does not set it), and when that
is above ``DENSE_CAND_K`` it returns ``m``: then :func:`threshold_candidates` skips the
kernel and computes every row densely, once. :func:`dense_fallback_rows` counts the rows a
call recomputed, for the trainer's metrics.
"""

from __future__ import annotations

import torch

DENSE_ROWS = 1024  # rows per slice of the dense fallback: 1024 x m float32
# Above this many candidates per row, go dense. Not measured on a GPU (none has been lent):
# the fused kernel keeps cand_k running candidates per row in registers (up to 256; above,
# its launcher runs the split kernel, which buffers ~2 sqrt(cand_k m) survivors per row in
# memory), and past ~1k a row's candidates cost about what the dense GEMM does, whose cost
# does not depend on the density.
DENSE_CAND_K = 1024
MIN_CAND_K = 16


def adapt_cand_k(row_counts: torch.Tensor, m: int) -> int:
    """The ``cand_k`` for the next batch from the entries per row of this one (``[n]``
    int): the next power of two at or above 1.25x their 99th percentile (at least
    ``MIN_CAND_K``), or ``m`` (dense) when that exceeds ``DENSE_CAND_K``."""
    n = row_counts.numel()
    if n == 0:
        return min(m, 64)
    q = int(row_counts.kthvalue(max(1, -(-99 * n // 100))).values)  # ceil(0.99 n)-th smallest
    c = max(MIN_CAND_K, 1 << max(0, int(-(-q * 5 // 4)) - 1).bit_length())
    return m if c > DENSE_CAND_K or c >= m else c


def dense_fallback_rows(row_counts: torch.Tensor, cand_k: int, m: int) -> int:
    """How many rows a call with this ``cand_k`` computed densely: those with at least
    ``cand_k`` entries above the floor (their last candidate passes), or all when dense."""
    if cand_k >= m:
        return row_counts.numel()
    return int((row_counts >= cand_k).sum())


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
    if cand_k >= m:  # dense by choice (adapt_cand_k): one GEMM per slice of rows, no kernel pass
        every = torch.arange(n, device=x.device)
        rows, cols, scores = [], [], []
        for s in range(0, n, DENSE_ROWS):
            rs = every[s : s + DENSE_ROWS]
            sc = dense_rows(x, W_enc, b, rs)
            rr, cc = (sc > lo).nonzero(as_tuple=True)
            rows.append(rs[rr]), cols.append(cc), scores.append(sc[rr, cc])
        return torch.cat(rows), torch.cat(cols), torch.cat(scores)
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
