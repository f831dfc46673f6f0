"""``gated_encode``: Gated SAE encode (Rajamanoharan et al. 2024) in CSR form from one
encoder GEMM, with its sparse backward.

The magnitude weights are the gate weights scaled per latent, ``W_mag = exp(r_mag) W_enc``,
so one product ``G = (x - pre_bias) @ W_enc.T`` serves both paths:
``pi_gate = G + b_gate``, ``pi_mag = exp(r_mag) G + b_mag``, ``f = H(pi_gate) relu(pi_mag)``.

Only latents with an open gate (``pi_gate > 0``) matter to the loss: ``f`` is 0 elsewhere,
and so are the L1 term ``relu(pi_gate) ||W_dec||`` and the auxiliary reconstruction from
``relu(pi_gate)``. The output is CSR over those latents with two value arrays: ``f_vals``
(``f``) and ``gate_vals`` (``pi_gate``). Gradients: ``f`` passes through ``pi_mag`` (the
Heaviside has none), ``gate_vals`` through ``pi_gate``; both reach W_enc, x and pre_bias
through ``G`` (``actstore.ops.encoder_grads``), and b_gate, b_mag and r_mag per latent.

Triton path: the fused encoder + top-k kernel ranks ``pi_gate`` (b_gate folded into the
bias), keeps each row's ``cand_k`` largest, and a row whose last candidate is still open
is recomputed densely (exact). Early in training most gates are open and most rows take
the dense path; a trained Gated SAE's gates are sparse. Reference: the dense product.
Registered as the custom op ``actstore::gated_encode`` with its autograd.
Returns ``(row_ptr [n+1], cols [nnz], f_vals [nnz], gate_vals [nnz])``.
"""

from __future__ import annotations

import torch

from .._numerics import acc_dtype, csr_from_coo, pre_activations, rows_of
from ._candidates import threshold_candidates
from ._dispatch import check_accumulate, resolve_backend
from .encoder_grads import encoder_grads


def _open_gates_triton(x, W_enc, b_gate, pre_bias, cand_k):
    from ..kernels.topk_encode import fold_pre_bias

    rows, cols, gates = threshold_candidates(x, W_enc, fold_pre_bias(W_enc, b_gate, pre_bias), cand_k, 0.0)
    return csr_from_coo(x.shape[0], rows, cols, gates)


@torch.library.custom_op("actstore::gated_encode", mutates_args=())
def _gated_encode_op(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_gate: torch.Tensor,
    r_mag: torch.Tensor,
    b_mag: torch.Tensor,
    pre_bias: torch.Tensor | None,
    cand_k: int,
    backend: str,
    accumulate: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton" and x.dtype != torch.float64:
        row_ptr, cols, gates = _open_gates_triton(x, W_enc, b_gate, pre_bias, cand_k)
    else:
        pg = pre_activations(x, W_enc, b_gate, pre_bias)
        r, c = (pg > 0).nonzero(as_tuple=True)
        row_ptr, cols, gates = csr_from_coo(x.shape[0], r, c.clone(), pg[r, c])
    acc = gates.dtype
    G = gates - b_gate.to(acc)[cols]
    f = torch.relu(r_mag.to(acc).exp()[cols] * G + b_mag.to(acc)[cols])
    return row_ptr, cols, f, gates.clone()


@_gated_encode_op.register_fake
def _(x, W_enc, b_gate, r_mag, b_mag, pre_bias, cand_k, backend, accumulate):
    nnz = torch.library.get_ctx().new_dynamic_size()
    vd = acc_dtype(x)
    return (
        x.new_empty((x.shape[0] + 1,), dtype=torch.int64),
        x.new_empty((nnz,), dtype=torch.int64),
        x.new_empty((nnz,), dtype=vd),
        x.new_empty((nnz,), dtype=vd),
    )


def _setup_context(ctx, inputs, output):
    x, W_enc, b_gate, r_mag, b_mag, pre_bias, cand_k, backend, accumulate = inputs
    row_ptr, cols, f, gates = output
    ctx.save_for_backward(x, W_enc, b_gate, r_mag, b_mag, pre_bias, row_ptr, cols, f, gates)
    ctx.backend, ctx.accumulate = backend, accumulate
    ctx.mark_non_differentiable(row_ptr, cols)


def _backward(ctx, _grp, _gc, grad_f, grad_gate):
    x, W_enc, b_gate, r_mag, b_mag, pre_bias, row_ptr, cols, f, gates = ctx.saved_tensors
    acc = gates.dtype
    zero = torch.zeros((), dtype=acc, device=gates.device)
    m = W_enc.shape[0]
    scale = r_mag.to(acc).exp()[cols]
    G = gates - b_gate.to(acc)[cols]
    gf = torch.where(f > 0, grad_f.to(acc), zero) if grad_f is not None else torch.zeros_like(gates)
    gg = grad_gate.to(acc) if grad_gate is not None else torch.zeros_like(gates)
    gG = gf * scale + gg
    needs = ctx.needs_input_grad
    gx, gW, _, gpb = encoder_grads(
        (needs[0], needs[1], False, needs[5]),
        x,
        W_enc,
        pre_bias,
        row_ptr,
        rows_of(row_ptr, cols.shape[0]),
        cols,
        gG,
        ctx.backend,
        ctx.accumulate,
    )

    def per_latent(v, like):
        return torch.zeros(m, dtype=acc, device=gates.device).index_add_(0, cols, v).to(like.dtype)

    return (
        gx,
        gW,
        per_latent(gg, b_gate) if needs[2] else None,
        per_latent(gf * scale * G, r_mag) if needs[3] else None,
        per_latent(gf, b_mag) if needs[4] else None,
        gpb,
        None,
        None,
        None,
    )


_gated_encode_op.register_autograd(_backward, setup_context=_setup_context)


def gated_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_gate: torch.Tensor,
    r_mag: torch.Tensor,
    b_mag: torch.Tensor,
    pre_bias: torch.Tensor | None = None,
    *,
    cand_k: int = 64,
    backend: str | None = None,
    accumulate: str = "sorted",
):
    """x ``[n, d]``, W_enc ``[m, d]``, b_gate, r_mag, b_mag ``[m]`` -> ``(row_ptr, cols,
    f_vals, gate_vals)`` over the open gates (see the module docstring)."""
    if x.dim() != 2 or W_enc.dim() != 2 or x.shape[1] != W_enc.shape[1]:
        raise ValueError(
            f"gated_encode: x must be [n, d] and W_enc [m, d], got {tuple(x.shape)} and {tuple(W_enc.shape)}"
        )
    m = W_enc.shape[0]
    if any(t.shape != (m,) for t in (b_gate, r_mag, b_mag)) or (
        pre_bias is not None and pre_bias.shape != (x.shape[1],)
    ):
        raise ValueError(f"gated_encode: b_gate, r_mag and b_mag must be [m={m}] and pre_bias [d={x.shape[1]}]")
    if isinstance(cand_k, bool) or not isinstance(cand_k, int) or cand_k < 1:
        raise ValueError(f"cand_k must be a positive integer, got {cand_k!r}")
    check_accumulate(accumulate)
    return _gated_encode_op(x, W_enc, b_gate, r_mag, b_mag, pre_bias, cand_k, resolve_backend(x, backend), accumulate)
