"""``batch_topk_encode``: BatchTopK SAE encode in CSR form, and its fixed-threshold
inference path (the JumpReLU form with one theta), with the sparse encoder backward.

Training (``threshold=None``) keeps the ``n*k`` largest ReLU'd pre-activations of the
whole batch: ``pre >= t`` with ``t`` their ``n*k``-th largest. Inference keeps
``pre > threshold``. Only positive values are kept.

Triton path, one encoder GEMM and no ``[n, m]`` tensor:

1. the fused encoder + top-k kernel (``actstore.kernels.topk_encode``) keeps each row's
   ``c = cand_factor * k`` largest candidates;
2. training: ``t`` = the ``n*k``-th largest candidate, by radix select
   (``actstore.kernels.radix_select``: byte histograms, no sort);
3. a row whose c-th candidate still passes the test may hold more passing latents than
   it kept: such rows (rare at ``cand_factor`` 4) are recomputed densely, in slices of
   rows, and for training ``t`` is re-selected with their full rows in. ``t`` can only
   rise, so the rows that were complete stay complete: the result is exact;
4. the passing candidates become CSR (row order; within a row, descending value, except
   fallback rows, in ascending latent order).

Reference (other devices, float64): ``actstore.reference.topk_sae.batch_topk_encode_reference``
(within a row, ascending latent). Registered as the custom op
``actstore::batch_topk_encode`` (the nnz is data-dependent) with its autograd.
Returns ``(row_ptr [n+1] int64, cols [nnz] int64, vals [nnz] float32, threshold 0-d)``;
vals are differentiable in x, W_enc, b_enc and pre_bias.
"""

from __future__ import annotations

import torch

from .._numerics import acc_dtype, check_k, csr_from_coo, rows_of
from ..reference.topk_sae import batch_topk_encode_reference, topk_encode_reference
from ._candidates import DENSE_ROWS, dense_rows
from ._dispatch import check_accumulate, resolve_backend
from .encoder_grads import encoder_grads
from .kth_largest import kth_largest


def _batch_topk_triton(x, W_enc, b_enc, pre_bias, k, threshold, cand_k, dead_mask=None, k_aux=0):
    from ..kernels.topk_encode import fold_pre_bias, topk_encode_fwd

    n, m = x.shape[0], W_enc.shape[0]
    dev = x.device
    c = min(m, cand_k)
    # [n, c] ReLU'd, descending; the AuxK top-k over dead latents comes out of the same pass.
    v, i, av, ai = topk_encode_fwd(x, W_enc, b_enc, c, pre_bias, dead_mask, k_aux)
    if threshold is None:
        t = kth_largest(v.reshape(-1), n * k, "triton")
        passes = lambda a: (a >= t) & (a > 0)  # noqa: E731
    else:
        t = torch.tensor(float(threshold), dtype=torch.float32, device=dev)
        passes = lambda a: (a > t) & (a > 0)  # noqa: E731
    last = v[:, -1]
    bad = passes(last) if c < m else torch.zeros(n, dtype=torch.bool, device=dev)
    bad_rows = bad.nonzero().reshape(-1)  # the one host sync (CSR sizes need one anyway)
    extra_r, extra_c, extra_v = [], [], []
    if bad_rows.numel():
        b = fold_pre_bias(W_enc, b_enc, pre_bias)
        floor = t  # every passing value of a bad row is >= the current t (t only rises)
        for s in range(0, bad_rows.numel(), DENSE_ROWS):
            rs = bad_rows[s : s + DENSE_ROWS]
            pre = dense_rows(x, W_enc, b, rs)
            keep = (pre >= floor) & (pre > 0) if threshold is None else passes(pre)
            r, col = keep.nonzero(as_tuple=True)
            extra_r.append(rs[r]), extra_c.append(col), extra_v.append(pre[r, col])
        if threshold is None:
            good_v = v[~bad].reshape(-1)
            t = (
                kth_largest(torch.cat([good_v] + extra_v), n * k, "triton")
                if good_v.numel() + sum(e.numel() for e in extra_v) >= n * k
                else t
            )
    keep = passes(v) & ~bad[:, None]
    r, j = keep.nonzero(as_tuple=True)
    rows, cols, vals = r, i[r, j], v[r, j]
    if extra_r:
        er, ec, ev = torch.cat(extra_r), torch.cat(extra_c), torch.cat(extra_v)
        ok = passes(ev)
        rows = torch.cat([rows, er[ok]])
        cols = torch.cat([cols, ec[ok]])
        vals = torch.cat([vals, ev[ok]])
    return csr_from_coo(n, rows, cols, vals) + (t.reshape(()), av, ai)


@torch.library.custom_op("actstore::batch_topk_encode", mutates_args=())
def _batch_topk_encode_op(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    pre_bias: torch.Tensor | None,
    k: int,
    threshold: float | None,
    cand_k: int,
    dead_mask: torch.Tensor | None,
    k_aux: int,
    backend: str,
    accumulate: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton" and x.dtype != torch.float64:
        return _batch_topk_triton(x, W_enc, b_enc, pre_bias, k, threshold, cand_k, dead_mask, k_aux)
    row_ptr, cols, vals, t = batch_topk_encode_reference(x, W_enc, b_enc, k, pre_bias, threshold)
    if dead_mask is not None and k_aux:
        _, _, av, ai = topk_encode_reference(x, W_enc, b_enc, 1, pre_bias, dead_mask, k_aux)
    else:
        av, ai = vals.new_empty((x.shape[0], 0)), cols.new_empty((x.shape[0], 0))
    return (
        row_ptr.to(x.device),
        cols,
        vals.contiguous(),
        t.reshape(()).to(vals.dtype).clone(),
        av.contiguous(),
        ai.contiguous(),
    )


@_batch_topk_encode_op.register_fake
def _(x, W_enc, b_enc, pre_bias, k, threshold, cand_k, dead_mask, k_aux, backend, accumulate):
    nnz = torch.library.get_ctx().new_dynamic_size()
    vd = acc_dtype(x)
    ka = k_aux if dead_mask is not None else 0
    return (
        x.new_empty((x.shape[0] + 1,), dtype=torch.int64),
        x.new_empty((nnz,), dtype=torch.int64),
        x.new_empty((nnz,), dtype=vd),
        x.new_empty((), dtype=vd),
        x.new_empty((x.shape[0], ka), dtype=vd),
        x.new_empty((x.shape[0], ka), dtype=torch.int64),
    )


def _setup_context(ctx, inputs, output):
    x, W_enc, b_enc, pre_bias, k, threshold, cand_k, dead_mask, k_aux, backend, accumulate = inputs
    row_ptr, cols, vals, t, av, ai = output
    ctx.save_for_backward(x, W_enc, pre_bias, row_ptr, cols, av, ai)
    ctx.backend, ctx.accumulate = backend, accumulate
    ctx.mark_non_differentiable(row_ptr, cols, t, ai)


def _backward(ctx, _grp, _gc, grad_vals, _gt, grad_aux, _gai):
    x, W_enc, pre_bias, row_ptr, cols, av, ai = ctx.saved_tensors
    needs = tuple(ctx.needs_input_grad[:4])
    total = [None] * 4
    parts = []
    if grad_vals is not None:
        # Every kept value is positive (ReLU active), so the gradient passes unmasked.
        parts.append((row_ptr, rows_of(row_ptr, cols.shape[0]), cols, grad_vals))
    if grad_aux is not None and av.shape[1]:
        n, ka = av.shape
        g = torch.where(av > 0, grad_aux.to(av.dtype), torch.zeros((), dtype=av.dtype, device=av.device))
        aux_ptr = torch.arange(n + 1, device=x.device) * ka
        parts.append((aux_ptr, rows_of(aux_ptr, n * ka), ai.reshape(-1), g.reshape(-1)))
    for rp, rows, cc, g in parts:
        grads = encoder_grads(needs, x, W_enc, pre_bias, rp, rows, cc, g, ctx.backend, ctx.accumulate)
        total = [a if b is None else (b if a is None else a + b) for a, b in zip(total, grads)]
    return tuple(total) + (None,) * 7


_batch_topk_encode_op.register_autograd(_backward, setup_context=_setup_context)


def batch_topk_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    pre_bias: torch.Tensor | None = None,
    *,
    threshold: float | None = None,
    cand_factor: int = 4,
    cand_k: int | None = None,
    dead_mask: torch.Tensor | None = None,
    k_aux: int = 0,
    backend: str | None = None,
    accumulate: str = "sorted",
):
    """x ``[n, d]``, W_enc ``[m, d]``, b_enc ``[m]`` -> ``(row_ptr [n+1], cols [nnz], vals [nnz],
    threshold)``: BatchTopK latents in CSR form (see the module docstring). ``k`` is the
    mean number of latents per row; ``threshold`` switches to the inference form. With
    ``dead_mask`` (``[m]`` bool) and ``k_aux``, also ``(aux_values [n, k_aux], aux_indices)``,
    the AuxK top-k over dead latents from the same encoder pass (differentiable).
    ``cand_factor`` sets the candidates kept per row on the Triton path (exact for any
    value; larger means fewer dense fallbacks, a costlier kernel); ``cand_k``, when given,
    sets that number directly (``BatchTopKSAE`` sizes it from the previous batch)."""
    if x.dim() != 2 or W_enc.dim() != 2 or x.shape[1] != W_enc.shape[1]:
        raise ValueError(
            f"batch_topk_encode: x must be [n, d] and W_enc [m, d], got {tuple(x.shape)} and {tuple(W_enc.shape)}"
        )
    m = W_enc.shape[0]
    if b_enc.shape != (m,) or (pre_bias is not None and pre_bias.shape != (x.shape[1],)):
        raise ValueError(f"batch_topk_encode: b_enc must be [m={m}] and pre_bias [d={x.shape[1]}]")
    check_k(k, m)
    if isinstance(cand_factor, bool) or not isinstance(cand_factor, int) or cand_factor < 1:
        raise ValueError(f"cand_factor must be a positive integer, got {cand_factor!r}")
    if cand_k is not None and (isinstance(cand_k, bool) or not isinstance(cand_k, int) or cand_k < 1):
        raise ValueError(f"cand_k must be a positive integer, got {cand_k!r}")
    check_accumulate(accumulate)
    if x.shape[0] == 0:
        raise ValueError("batch_topk_encode: the batch is empty (n=0): BatchTopK needs at least one row")
    if dead_mask is not None:
        if dead_mask.shape != (m,) or dead_mask.dtype != torch.bool:
            raise ValueError(f"batch_topk_encode: dead_mask must be a [m={m}] bool tensor")
        check_k(k_aux, m, "k_aux")
    out = _batch_topk_encode_op(
        x,
        W_enc,
        b_enc,
        pre_bias,
        k,
        None if threshold is None else float(threshold),
        min(m, cand_factor * k if cand_k is None else cand_k),
        dead_mask,
        k_aux if dead_mask is not None else 0,
        resolve_backend(x, backend),
        accumulate,
    )
    return out if dead_mask is not None else out[:4]
