"""``jumprelu_encode``: JumpReLU SAE encode in CSR form, with the straight-through threshold
gradients of Rajamanoharan et al. 2024 and a differentiable L0, from one encoder GEMM.

``f = pre * H(pre - theta)`` per latent, ``pre = (x - pre_bias) @ W_enc.T + b_enc``,
``theta [m] > 0``. With ``K(u) = 1[|u| < 1/2]`` and bandwidth ``eps``:
``df/dpre = H(pre - theta)``, ``df/dtheta = -(theta/eps) K((pre - theta)/eps)`` and, for
``l0 = mean_rows sum_i H(pre_i - theta_i)``, ``dl0/dtheta = -(1/eps) K(...) / n``.

The threshold gradient needs the entries just *below* theta too (``-eps/2 < pre - theta
<= 0``), where f is 0 but the loss still has a gradient. So the CSR output holds the
kept entries (value ``pre``) and those band entries (value 0): a decode then adds
nothing for them, and its backward (``csr_gather_dot``) gives their gradient, which the
backward here turns into the threshold gradient. ``Latents.l0()`` and ``fired()`` count
nonzero values only.

Triton path: the fused encoder + top-k kernel ranks the margins ``pre - theta`` (theta
folded into the bias) and keeps each row's ``cand_k`` largest; a row whose last
candidate still lies above ``-eps/2`` may hold more, and is recomputed densely (exact, as
in ``batch_topk_encode``). Reference (other devices, float64): the dense pre-activations.
Registered as the custom op ``actstore::jumprelu_encode`` with its autograd.

Returns ``(row_ptr [n+1], cols [nnz], vals [nnz], margins [nnz], l0 0-d)``; vals and l0
are differentiable in x, W_enc, b_enc, pre_bias (vals) and theta (both).
"""

from __future__ import annotations

import torch

from .._numerics import acc_dtype, csr_from_coo, pre_activations, rows_of
from ._candidates import threshold_candidates
from ._dispatch import check_accumulate, resolve_backend
from .encoder_grads import encoder_grads


def _jumprelu_triton(x, W_enc, b_enc, theta, pre_bias, eps, cand_k):
    from ..kernels.topk_encode import fold_pre_bias

    b = fold_pre_bias(W_enc, b_enc, pre_bias) - theta.to(torch.float32)  # scores are the margins pre - theta
    rows, cols, margins = threshold_candidates(x, W_enc, b, cand_k, -eps / 2)
    return csr_from_coo(x.shape[0], rows, cols, margins)


def _jumprelu_reference(x, W_enc, b_enc, theta, pre_bias, eps):
    pre = pre_activations(x, W_enc, b_enc, pre_bias)
    mg = pre - theta.to(pre.dtype)
    r, c = (mg > -eps / 2).nonzero(as_tuple=True)
    return csr_from_coo(x.shape[0], r, c.clone(), mg[r, c])


@torch.library.custom_op("actstore::jumprelu_encode", mutates_args=())
def _jumprelu_encode_op(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    theta: torch.Tensor,
    pre_bias: torch.Tensor | None,
    eps: float,
    cand_k: int,
    backend: str,
    accumulate: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton" and x.dtype != torch.float64:
        row_ptr, cols, margins = _jumprelu_triton(x, W_enc, b_enc, theta, pre_bias, eps, cand_k)
    else:
        row_ptr, cols, margins = _jumprelu_reference(x, W_enc, b_enc, theta, pre_bias, eps)
    kept = margins > 0
    vals = torch.where(
        kept, margins + theta.to(margins.dtype)[cols], torch.zeros((), dtype=margins.dtype, device=margins.device)
    )
    l0 = kept.sum().to(margins.dtype) / max(1, x.shape[0])
    return row_ptr, cols, vals, margins.clone(), l0


@_jumprelu_encode_op.register_fake
def _(x, W_enc, b_enc, theta, pre_bias, eps, cand_k, backend, accumulate):
    nnz = torch.library.get_ctx().new_dynamic_size()
    vd = acc_dtype(x)
    return (
        x.new_empty((x.shape[0] + 1,), dtype=torch.int64),
        x.new_empty((nnz,), dtype=torch.int64),
        x.new_empty((nnz,), dtype=vd),
        x.new_empty((nnz,), dtype=vd),
        x.new_empty((), dtype=vd),
    )


def _setup_context(ctx, inputs, output):
    x, W_enc, b_enc, theta, pre_bias, eps, cand_k, backend, accumulate = inputs
    row_ptr, cols, vals, margins, l0 = output
    ctx.save_for_backward(x, W_enc, theta, pre_bias, row_ptr, cols, margins)
    ctx.eps, ctx.backend, ctx.accumulate = eps, backend, accumulate
    ctx.mark_non_differentiable(row_ptr, cols, margins)


def _backward(ctx, _grp, _gc, grad_vals, _gm, grad_l0):
    x, W_enc, theta, pre_bias, row_ptr, cols, margins = ctx.saved_tensors
    eps = ctx.eps
    acc = margins.dtype
    n = x.shape[0]
    band = (margins.abs() < eps / 2).to(acc)
    th = theta.to(acc)[cols]
    grad_theta = torch.zeros(theta.shape[0], dtype=acc, device=theta.device)
    grads = (None,) * 4
    if grad_vals is not None:
        gv = grad_vals.to(acc)
        g_pre = torch.where(margins > 0, gv, torch.zeros((), dtype=acc, device=gv.device))
        grads = encoder_grads(
            tuple(ctx.needs_input_grad[:3]) + (ctx.needs_input_grad[4],),
            x,
            W_enc,
            pre_bias,
            row_ptr,
            rows_of(row_ptr, cols.shape[0]),
            cols,
            g_pre,
            ctx.backend,
            ctx.accumulate,
        )
        grad_theta.index_add_(0, cols, -(th / eps) * band * gv)
    if grad_l0 is not None:
        grad_theta.index_add_(0, cols, -(1.0 / eps) * band * grad_l0.to(acc) / max(1, n))
    gx, gW, gb, gpb = grads
    return gx, gW, gb, grad_theta.to(theta.dtype), gpb, None, None, None, None


_jumprelu_encode_op.register_autograd(_backward, setup_context=_setup_context)


def jumprelu_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    theta: torch.Tensor,
    pre_bias: torch.Tensor | None = None,
    *,
    eps: float = 0.001,
    cand_k: int = 64,
    backend: str | None = None,
    accumulate: str = "sorted",
):
    """x ``[n, d]``, W_enc ``[m, d]``, b_enc ``[m]``, theta ``[m]`` (positive) ->
    ``(row_ptr, cols, vals, margins, l0)`` (see the module docstring). ``cand_k``: the
    candidates per row on the Triton path (exact for any value; a row with more entries
    above ``theta - eps/2`` is recomputed densely)."""
    if x.dim() != 2 or W_enc.dim() != 2 or x.shape[1] != W_enc.shape[1]:
        raise ValueError(
            f"jumprelu_encode: x must be [n, d] and W_enc [m, d], got {tuple(x.shape)} and {tuple(W_enc.shape)}"
        )
    m = W_enc.shape[0]
    if b_enc.shape != (m,) or theta.shape != (m,) or (pre_bias is not None and pre_bias.shape != (x.shape[1],)):
        raise ValueError(f"jumprelu_encode: b_enc and theta must be [m={m}] and pre_bias [d={x.shape[1]}]")
    if not eps > 0:
        raise ValueError(f"jumprelu_encode: the bandwidth eps must be positive, got {eps}")
    if isinstance(cand_k, bool) or not isinstance(cand_k, int) or cand_k < 1:
        raise ValueError(f"cand_k must be a positive integer, got {cand_k!r}")
    check_accumulate(accumulate)
    return _jumprelu_encode_op(
        x, W_enc, b_enc, theta, pre_bias, float(eps), cand_k, resolve_backend(x, backend), accumulate
    )
