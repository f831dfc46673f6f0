"""Pure PyTorch references of the sparse products behind the SAE ops (the test oracle and
the CPU fallback of ``actstore.kernels.csr_*`` and ``actstore.kernels.radix_select``).

Sparse latents are CSR: ``row_ptr [n+1]`` int64, ``cols [nnz]`` int64 (latent ids),
``vals [nnz]``; ``rows [nnz]`` is the row of each entry (``rows_of(row_ptr)``). A TopK
result ``[n, k]`` is the CSR matrix with ``row_ptr = arange(n+1) * k``. Products run in
float32 (float64 for float64 inputs). Work is done in slices of ``_SLICE`` entries so that
the ``[nnz, d]`` intermediates stay bounded (64k x d floats).

CPU speed: with the entries in row order (CSR, what every SAE op hands over) the
gather-dot is ``F.embedding_bag``'s per-sample-weight gradient fed ``G``, and the transposed
product (any order) is an ``F.embedding_bag`` over the rows of ``X`` with one bag a latent,
one fused C++ pass each, with no ``[nnz, d]`` intermediate: at n=2048,
d=576, m=4096, k=32 on this 2-core CPU the transposed product takes 10 ms against 67 ms as
one dense GEMM and 280 ms as sliced gathers. Otherwise, while ``n * m`` is at most
``_DENSE_MAX`` elements, one dense GEMM (the sparse matrix scattered into ``[n, m]``), and
sliced gathers beyond. (The Triton kernels are the sparse path on a GPU.)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .._numerics import acc_dtype

_SLICE = 65536
_DENSE_MAX = 1 << 25  # n*m elements (128 MiB of float32) up to which the dense GEMM form is used


def csr_matmul_reference(
    row_ptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, W: torch.Tensor
) -> torch.Tensor:
    """``out[i] = sum_{e in row i} vals[e] W[cols[e]]`` -> ``[n, d]``."""
    acc = acc_dtype(vals)
    n = row_ptr.numel() - 1
    if cols.numel() == 0:
        return torch.zeros(n, W.shape[1], dtype=acc, device=W.device)
    # embedding_bag with offsets is exactly CSR; include_last_offset takes row_ptr whole.
    return F.embedding_bag(
        cols, W.to(acc), offsets=row_ptr, per_sample_weights=vals.to(acc), mode="sum", include_last_offset=True
    )


def _bag_offsets(rows: torch.Tensor, n: int) -> torch.Tensor | None:
    """``row_ptr [n+1]`` of entries grouped by row in ascending order, or None when ``rows``
    is not sorted (then the entries are not an embedding_bag's bags)."""
    if rows.numel() > 1 and not bool((rows[1:] >= rows[:-1]).all()):
        return None
    return torch.cat([rows.new_zeros(1), torch.bincount(rows, minlength=n).cumsum(0)])


def csr_gather_dot_reference(rows: torch.Tensor, cols: torch.Tensor, G: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``out[e] = G[rows[e]] . W[cols[e]]`` -> ``[nnz]``."""
    acc = acc_dtype(G)
    offsets = _bag_offsets(rows, G.shape[0]) if cols.numel() and not G.is_cuda else None
    if offsets is not None:
        # embedding_bag's gradient of its per_sample_weights, fed G: exactly G[row(e)] . W[cols[e]]
        # (an aten op since torch 1.3; called directly because this runs below autograd).
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(
            G.to(acc).contiguous(), W.to(acc).contiguous(), cols.contiguous(), offsets[:-1], rows.contiguous(), 0, -1
        )
    if G.shape[0] * W.shape[0] <= _DENSE_MAX:
        return (G.to(acc) @ W.to(acc).t())[rows, cols]
    out = torch.empty(cols.numel(), dtype=acc, device=G.device)
    for s in range(0, cols.numel(), _SLICE):
        r, c = rows[s : s + _SLICE], cols[s : s + _SLICE]
        out[s : s + _SLICE] = (G[r].to(acc) * W[c].to(acc)).sum(1)
    return out


def csr_transpose_matmul_reference(
    rows: torch.Tensor,
    cols: torch.Tensor,
    vals: torch.Tensor,
    X: torch.Tensor,
    m: int,
    shift: torch.Tensor | None = None,
):
    """``grad_W[cols[e]] += vals[e] (X[rows[e]] - shift)``, ``grad_b[cols[e]] += vals[e]``
    -> ``(grad_W [m, d], grad_b [m])``."""
    acc = acc_dtype(vals)
    n = X.shape[0]
    if cols.numel() and not X.is_cuda:
        # The transposed matrix in CSR order (entries sorted by latent, stably: the same order,
        # so the same sums, every run) is an embedding_bag over the rows of X, one bag a latent.
        order = torch.from_numpy(np.argsort(cols.numpy(), kind="stable"))  # torch's stable CPU sort: 5-50x slower
        col_ptr = torch.cat([cols.new_zeros(1), torch.bincount(cols, minlength=m).cumsum(0)])
        gw = F.embedding_bag(
            rows[order], X.to(acc), offsets=col_ptr, per_sample_weights=vals.to(acc)[order], mode="sum",
            include_last_offset=True,
        )  # fmt: skip
        gb = torch.zeros(m, dtype=acc, device=X.device).index_add_(0, cols, vals.to(acc))
        if shift is not None:
            gw -= gb[:, None] * shift.to(acc)
        return gw, gb
    if n * m <= _DENSE_MAX:
        S = torch.zeros(n, m, dtype=acc, device=X.device).index_put_((rows, cols), vals.to(acc), accumulate=True)
        gb = S.sum(0)
        gw = S.t() @ X.to(acc)
        if shift is not None:
            gw -= gb[:, None] * shift.to(acc)
        return gw, gb
    gw = torch.zeros(m, X.shape[1], dtype=acc, device=X.device)
    for s in range(0, cols.numel(), _SLICE):
        xs = X[rows[s : s + _SLICE]].to(acc)
        if shift is not None:
            xs = xs - shift.to(acc)
        gw.index_add_(0, cols[s : s + _SLICE], vals[s : s + _SLICE].to(acc)[:, None] * xs)
    gb = torch.zeros(m, dtype=acc, device=X.device).index_add_(0, cols, vals.to(acc))
    return gw, gb


def kth_largest_reference(values: torch.Tensor, r: int) -> torch.Tensor:
    """The r-th largest (1-based) of a flat tensor, as a 0-d tensor."""
    flat = values.reshape(-1)
    return flat.kthvalue(flat.numel() - r + 1).values
