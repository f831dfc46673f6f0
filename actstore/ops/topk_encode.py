"""``topk_encode``: SAE encoder + top-k, with a sparse backward.

Forward: CUDA tensors go to the fused Triton kernel ``actstore.kernels.topk_encode`` (the
``[n, m]`` pre-activations never reach memory); others to
``actstore.reference.topk_sae.topk_encode_reference``. ``backend`` forces ``triton`` (also
on CPU tensors under TRITON_INTERPRET=1) or ``reference``.

Backward, through the k selected latents only (O(n*k*d), no dense ``[n, m]`` tensor):
with ``g [n, k]`` the gradient of the values, masked where ReLU was inactive,

- ``grad_x = sum_j g[:, j] W_enc[idx[:, j]]`` (``[n, d]``), ``grad_pre_bias = -grad_x.sum(0)``;
- ``grad_W_enc[idx[i, j]] += g[i, j] (x[i] - pre_bias)`` (rows of ``[m, d]``, index_add);
- ``grad_b_enc[idx[i, j]] += g[i, j]``.

These are PyTorch index ops for now (``embedding_bag`` and ``index_add_``); fused Triton
backward kernels are owed. Shapes and layout: ``actstore.reference.topk_sae``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..reference.topk_sae import check_k, topk_encode_reference
from .capture_pack import triton_available


def _check(x, W_enc, b_enc, k, pre_bias):
    if x.dim() != 2 or W_enc.dim() != 2 or x.shape[1] != W_enc.shape[1]:
        raise ValueError(f"topk_encode: x must be [n, d] and W_enc [m, d], got {tuple(x.shape)} and {tuple(W_enc.shape)}")
    if b_enc.shape != (W_enc.shape[0],):
        raise ValueError(f"topk_encode: b_enc must be [m={W_enc.shape[0]}], got {tuple(b_enc.shape)}")
    if pre_bias is not None and pre_bias.shape != (x.shape[1],):
        raise ValueError(f"topk_encode: pre_bias must be [d={x.shape[1]}], got {tuple(pre_bias.shape)}")
    check_k(k, W_enc.shape[0])


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, pre_bias, k, backend):
        if backend == "triton":
            from ..kernels.topk_encode import topk_encode_fwd

            values, indices = topk_encode_fwd(x, W_enc, b_enc, k, pre_bias)
        else:
            with torch.no_grad():
                values, indices = topk_encode_reference(x, W_enc, b_enc, k, pre_bias)
        ctx.save_for_backward(x, W_enc, pre_bias, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices):
        x, W_enc, pre_bias, values, indices = ctx.saved_tensors
        acc = values.dtype
        g = torch.where(values > 0, grad_values.to(acc), torch.zeros((), dtype=acc, device=values.device))
        grad_x = grad_W = grad_b = grad_pb = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[3]:
            # sum_j g[:, j] W_enc[idx[:, j]] without an [n, k, d] tensor.
            gx = F.embedding_bag(indices, W_enc.to(acc), per_sample_weights=g, mode="sum")
            grad_x = gx.to(x.dtype) if ctx.needs_input_grad[0] else None
            grad_pb = (-gx.sum(0)).to(pre_bias.dtype) if ctx.needs_input_grad[3] else None
        if ctx.needs_input_grad[1]:
            xc = x.to(acc) if pre_bias is None else x.to(acc) - pre_bias.to(acc)
            flat = indices.reshape(-1)
            rows = (g[:, :, None] * xc[:, None, :]).reshape(-1, x.shape[1])
            grad_W = torch.zeros(W_enc.shape, dtype=acc, device=x.device).index_add_(0, flat, rows).to(W_enc.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(W_enc.shape[0], dtype=acc, device=x.device).index_add_(0, indices.reshape(-1),
                                                                                       g.reshape(-1))
        return grad_x, grad_W, grad_b, grad_pb, None, None


def topk_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int,
                pre_bias: torch.Tensor | None = None, *, backend: str | None = None):
    """x ``[n, d]``, W_enc ``[m, d]``, b_enc ``[m]`` -> ``(values [n, k], indices [n, k])``:
    the k largest of ``(x - pre_bias) @ W_enc.T + b_enc`` per row, ReLU applied, in
    descending order. Differentiable in x, W_enc, b_enc and pre_bias.

    Raises ValueError (one line) for k < 1, k > m, or mismatched shapes."""
    _check(x, W_enc, b_enc, k, pre_bias)
    if backend is None:
        backend = "triton" if x.is_cuda and triton_available() else "reference"
    if backend not in ("triton", "reference"):
        raise ValueError(f"unknown backend {backend!r}: use 'triton' or 'reference'")
    return _TopKEncode.apply(x, W_enc, b_enc, pre_bias, k, backend)
