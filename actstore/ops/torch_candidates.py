"""The measuring dispatch's candidates built from stock PyTorch ops, beside the Triton kernels:
the sparse decode as an embedding bag or as one dense product, and the encoder's sparse
backward as dense products. Plain autograd-able PyTorch: ``torch.compile`` traces them.

- :func:`decode_embedding_bag`: ``F.embedding_bag(cols, W_dec, offsets=row_ptr,
  per_sample_weights=vals, mode="sum")``, W_dec's rows the embedding table; torch's own
  backward gives the gradients of vals and W_dec. Exact up to float summation order.
- :func:`decode_dense`: the CSR scattered into ``[n, m]``, then one GEMM with W_dec (and
  autograd through both): ``n * m`` memory, but GEMM speed when the code is dense (a threshold
  SAE early in training holds up to half of the ``[n, m]`` entries).
- :func:`encoder_grads_dense`: the encoder's gradients of ``actstore.ops.encoder_grads`` from
  one scattered ``[n, m]`` matrix ``S`` of the pre-activation gradients: ``grad_x = S W_enc``,
  ``grad_W_enc = S^T (x - pre_bias)``, ``grad_b_enc = S.sum(0)``.

Shapes: row_ptr ``[n+1]`` int64, rows/cols ``[nnz]`` int64, vals/g ``[nnz]``, W ``[m, d]``,
x ``[n, d]``; products in float32 (float64 for float64 vals), as the kernels accumulate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._numerics import acc_dtype, rows_of


def scatter_dense(n: int, m: int, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """``[n, m]`` in the accumulation dtype with ``vals`` at ``(rows, cols)`` (repeats summed);
    differentiable in ``vals``."""
    acc = acc_dtype(vals)
    S = torch.zeros(n, m, dtype=acc, device=vals.device)
    return S.index_put((rows, cols), vals.to(acc), accumulate=True)


def _with_bias(out: torch.Tensor, b_dec: torch.Tensor | None) -> torch.Tensor:
    return out if b_dec is None else out + b_dec.to(out.dtype)


def decode_embedding_bag(
    row_ptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None
) -> torch.Tensor:
    """``out[i] = sum_{e in row i} vals[e] W_dec[cols[e]] + b_dec`` -> ``[n, d]`` float32."""
    acc = acc_dtype(vals)
    n = row_ptr.numel() - 1
    if cols.numel() == 0:  # embedding_bag wants at least one index; keep the graph to W_dec
        return _with_bias(W_dec.to(acc)[:0].sum(0).expand(n, -1).clone(), b_dec)
    out = F.embedding_bag(
        cols, W_dec.to(acc), offsets=row_ptr, per_sample_weights=vals.to(acc), mode="sum", include_last_offset=True
    )
    return _with_bias(out, b_dec)


def decode_dense(
    row_ptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None
) -> torch.Tensor:
    """The same decode as one ``[n, m] @ [m, d]`` GEMM on the scattered code."""
    n, nnz = row_ptr.numel() - 1, cols.numel()
    S = scatter_dense(n, W_dec.shape[0], rows_of(row_ptr, nnz), cols, vals)
    return _with_bias(S @ W_dec.to(S.dtype), b_dec)


def encoder_grads_dense(
    needs: tuple[bool, bool, bool, bool],
    x: torch.Tensor,
    W_enc: torch.Tensor,
    pre_bias: torch.Tensor | None,
    rows: torch.Tensor,
    cols: torch.Tensor,
    g: torch.Tensor,
):
    """The gradients of (x, W_enc, b_enc, pre_bias) (None where ``needs`` is False), each in
    its input's dtype, from the dense ``[n, m]`` gradient of the pre-activations."""
    S = scatter_dense(x.shape[0], W_enc.shape[0], rows, cols, g)
    acc = S.dtype
    grad_x = grad_W = grad_b = grad_pb = None
    if needs[0] or needs[3]:
        gx = S @ W_enc.to(acc)
        grad_x = gx.to(x.dtype) if needs[0] else None
        grad_pb = (-gx.sum(0)).to(pre_bias.dtype) if needs[3] and pre_bias is not None else None
    if needs[1] or needs[2]:
        gb = S.sum(0)
        if needs[1]:
            xc = x.to(acc) if pre_bias is None else x.to(acc) - pre_bias.to(acc)
            grad_W = (S.t() @ xc).to(W_enc.dtype)
        grad_b = gb if needs[2] else None
    return grad_x, grad_W, grad_b, grad_pb
