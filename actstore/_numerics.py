"""Numerics shared by the SAE ops (``actstore.ops``), their references (``actstore.reference``)
and the SAE classes: the accumulation dtype, the check of ``k``, the encoder
pre-activations, the top-k order and its tie rule (``topk_indices``), and the CSR layout of
sparse latents (``rows_of``, ``csr_from_coo``).

A leaf module (it imports torch only): ``reference/`` uses it without importing ``ops/``,
whose package imports the references, so the oracles share no more code with the ops
they judge than these definitions.
"""

from __future__ import annotations

import torch


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype products accumulate in, and of sparse latent values: float64 for float64
    inputs (gradcheck), float32 for every other float dtype."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def check_k(k: int, m: int, name: str = "k") -> None:
    """``k`` latents per row out of ``m``: a positive integer no larger than ``m``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    if k > m:
        raise ValueError(f"{name}={k} is larger than the number of latents m={m}: use {name} <= {m}")


def pre_activations(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, pre_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``(x - pre_bias) @ W_enc.T + b_enc`` -> ``[n, m]`` in the accumulation dtype, for x
    ``[n, d]``, W_enc ``[m, d]``, b_enc ``[m]``, pre_bias ``[d]``."""
    acc = acc_dtype(x)
    xc = x.to(acc)
    if pre_bias is not None:
        xc = xc - pre_bias.to(acc)
    return torch.addmm(b_enc.to(acc), xc, W_enc.to(acc).t())  # the bias inside the GEMM: no second [n, m] pass


def topk_indices(pre: torch.Tensor, k: int) -> torch.Tensor:
    """The ``[n, k]`` int64 indices of the ``k`` largest entries of each row of ``pre``
    ``[n, m]`` (``1 <= k <= m``), in the order every top-k of actstore returns: values
    descending, and equal values by lower index first, also for the last place (of two
    latents tied at the k-th value, the lower one is kept). NaN is the largest value (as in
    ``torch.topk``) and -0.0 equals 0.0. This is the order of the Triton kernels' int64 keys
    (``kernels/topk_encode.py``), so the reference and every backend agree exactly on ties.

    ``torch.topk`` alone leaves ties in any order (on the CPU, torch 2.13, the top 4 of an
    all-zero row of 16 came out as latents ``[10, 11, 12, 9]``). Here: ``topk(k + 1)``; a row
    whose ``(k+1)``-th value equals its k-th (or is NaN) has a tie at the boundary and is
    redone by a stable sort; then the k are ordered by (value, index). Measured on the CPU
    at n=2048, m=16384, k=32: 1.08x the time of ``torch.topk`` on random rows. No gradient:
    gather the values with the indices (``pre.gather(1, i)``) to keep autograd."""
    with torch.no_grad():
        p = pre.detach()
        m = p.shape[1]
        v, i = p.topk(min(k + 1, m), dim=1)
        if k < m:
            rows = ((v[:, k] == v[:, k - 1]) | v[:, k].isnan()).nonzero().flatten()
            i = i[:, :k]
            if rows.numel():
                i[rows] = p[rows].sort(dim=1, descending=True, stable=True).indices[:, :k]
        i = i.sort(dim=1).values
        order = p.gather(1, i).sort(dim=1, descending=True, stable=True).indices
        return i.gather(1, order)


def rows_of(row_ptr: torch.Tensor, nnz: int | None = None) -> torch.Tensor:
    """``[nnz]`` int64: the row of each CSR entry."""
    n = row_ptr.numel() - 1
    counts = row_ptr[1:] - row_ptr[:-1]
    return torch.repeat_interleave(torch.arange(n, device=row_ptr.device), counts, output_size=nnz)


def csr_from_coo(n: int, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor):
    """COO entries (any order) -> CSR ``(row_ptr [n+1], cols, vals)``, rows ascending, the
    entries of a row in their given order (stable sort). The inverse of :func:`rows_of`."""
    order = torch.sort(rows, stable=True).indices
    rows, cols, vals = rows[order], cols[order], vals[order]
    row_ptr = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    row_ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    return row_ptr, cols.contiguous(), vals.contiguous()
