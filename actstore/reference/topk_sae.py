"""Pure PyTorch references of the TopK / BatchTopK SAE ops: the test oracle and CPU fallback.

Shapes and layout (the fused ops follow the same convention):

- x ``[n, d]``; ``W_enc`` ``[m, d]`` (one row per latent, as ``nn.Linear.weight``: the
  encoder tile loads and the sparse encoder gradients then touch contiguous rows);
  ``b_enc`` ``[m]``; ``pre_bias`` ``[d]`` (subtracted from x before encoding; SAELens and
  sparsify pass ``b_dec`` here);
- ``W_dec`` ``[m, d]`` (one row per latent); ``b_dec`` ``[d]``;
- top-k results: ``values [n, k]`` (after ReLU) and ``indices [n, k]`` int64, each row in
  descending order of the pre-activation; equal pre-activations by lower latent first,
  also at the k-th place (the lower latent is kept): ``actstore._numerics.topk_indices``,
  the order of the kernels' int64 keys, so every backend returns the same indices on ties.

Every product is computed in float32 (or float64 when the inputs are float64, for
gradcheck: ``actstore._numerics.acc_dtype``) and autograd flows through these functions,
so their gradients are the oracle of the sparse backward kernels. The pre-activations and
the check of ``k`` are shared with the ops (``actstore._numerics``).
"""

from __future__ import annotations

import torch

from .._numerics import acc_dtype, check_k, pre_activations, topk_indices


def topk_encode_reference(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    pre_bias: torch.Tensor | None = None,
    dead_mask: torch.Tensor | None = None,
    k_aux: int = 0,
):
    """x ``[n, d]`` -> ``(values [n, k], indices [n, k])``: the k largest pre-activations
    per row, ReLU applied to them; ties go to the lower latent (module docstring).

    With ``dead_mask`` (``[m]`` bool) and ``k_aux > 0`` also returns the AuxK top-k over
    the dead latents only, in the same order: ``(values, indices, aux_values [n, k_aux],
    aux_indices)``; with fewer dead latents than ``k_aux`` the slots past them hold latent
    0 with value 0 (as the kernels return them).
    """
    check_k(k, W_enc.shape[0])
    pre = pre_activations(x, W_enc, b_enc, pre_bias)
    i = topk_indices(pre, k)
    out = (torch.relu(pre.gather(1, i)), i)
    if dead_mask is None or not k_aux:
        return out
    check_k(k_aux, W_enc.shape[0], "k_aux")
    dead_cols = dead_mask.to(torch.bool).nonzero().flatten()
    ka = min(k_aux, dead_cols.numel())
    n = pre.shape[0]
    ai = torch.zeros((n, k_aux), dtype=torch.int64, device=pre.device)
    av = pre.new_zeros((n, k_aux))
    if ka:
        ai[:, :ka] = dead_cols[topk_indices(pre[:, dead_cols], ka)]  # dead_cols ascending: same tie order
        av = torch.cat([pre.gather(1, ai[:, :ka]), av[:, ka:]], 1)
    # A dead latent at -inf (or NaN) contributes nothing.
    return out + (torch.relu(av).nan_to_num(0.0, neginf=0.0), ai)


def sparse_decode_reference(
    values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None = None
) -> torch.Tensor:
    """``values [n, k]``, ``indices [n, k]`` -> ``[n, d] = sum_j values[:, j] W_dec[indices[:, j]] + b_dec``."""
    acc = acc_dtype(values)
    out = torch.einsum("nk,nkd->nd", values.to(acc), W_dec.to(acc)[indices])
    return out if b_dec is None else out + b_dec.to(acc)


def batch_topk_threshold_reference(pre: torch.Tensor, k: int) -> torch.Tensor:
    """The BatchTopK threshold of a batch: the ``n*k``-th largest ReLU'd pre-activation
    (a 0-d tensor)."""
    n, m = pre.shape
    check_k(k, m)
    flat = torch.relu(pre).flatten()
    return flat.kthvalue(flat.numel() - n * k + 1).values


def batch_topk_encode_reference(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    pre_bias: torch.Tensor | None = None,
    threshold: float | None = None,
):
    """BatchTopK encode in CSR form: ``(row_ptr [n+1] int64, cols [nnz] int64, vals [nnz],
    threshold)``, only positive pre-activations kept.

    ``threshold=None`` (training): the ``n*k`` largest of the batch, ``pre >= t`` with ``t``
    the ``n*k``-th largest (ties at ``t`` are all kept). A float (inference, the JumpReLU
    form with one theta): ``pre > threshold``."""
    pre = pre_activations(x, W_enc, b_enc, pre_bias)
    if threshold is None:
        t = batch_topk_threshold_reference(pre, k)
        keep = (pre >= t) & (pre > 0)
    else:
        t = torch.tensor(threshold, dtype=pre.dtype, device=pre.device)
        keep = (pre > t) & (pre > 0)
    rows, cols = keep.nonzero(as_tuple=True)
    row_ptr = torch.zeros(pre.shape[0] + 1, dtype=torch.int64, device=pre.device)
    row_ptr[1:] = torch.cumsum(keep.sum(1), 0)
    return row_ptr, cols.clone(), pre[rows, cols], t  # clone: nonzero's columns are a view of one buffer


def csr_decode_reference(
    row_ptr: torch.Tensor,
    cols: torch.Tensor,
    vals: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor | None = None,
) -> torch.Tensor:
    """CSR latents (as from :func:`batch_topk_encode_reference`) -> ``[n, d]``."""
    n = row_ptr.numel() - 1
    acc = acc_dtype(vals)
    rows = torch.repeat_interleave(torch.arange(n, device=row_ptr.device), row_ptr[1:] - row_ptr[:-1])
    out = torch.zeros(n, W_dec.shape[1], dtype=acc, device=W_dec.device).index_add_(
        0, rows, vals.to(acc)[:, None] * W_dec.to(acc)[cols]
    )
    return out if b_dec is None else out + b_dec.to(acc)
