"""The sparse backward of an SAE encoder, shared by ``topk_encode`` and
``batch_topk_encode``: gradients through the selected latents only.

With the selected entries in CSR form (``row_ptr``, ``rows``, ``cols`` int64) and ``g``
``[nnz]`` the gradient of their pre-activations (zero where ReLU was inactive):

- ``grad_x[i] = sum_{e in row i} g[e] W_enc[cols[e]]`` (``csr_matmul``);
- ``grad_pre_bias = -grad_x.sum(0)``;
- ``grad_W_enc[c] = sum_{e: cols[e]=c} g[e] (x[rows[e]] - pre_bias)`` and
  ``grad_b_enc[c] = sum g[e]`` (one ``csr_transpose_matmul``).

``O(nnz * d)`` work, no ``[n, m]`` tensor.
"""

from __future__ import annotations

import torch

from .csr_matmul import csr_matmul
from .csr_transpose_matmul import csr_transpose_matmul


def encoder_grads(
    needs: tuple[bool, bool, bool, bool],
    x: torch.Tensor,
    W_enc: torch.Tensor,
    pre_bias: torch.Tensor | None,
    row_ptr: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    g: torch.Tensor,
    backend: str,
    accumulate: str,
):
    """``needs`` = which of (x, W_enc, b_enc, pre_bias) want a gradient. Returns their
    gradients (None where not needed), each in its input's dtype."""
    grad_x = grad_W = grad_b = grad_pb = None
    if needs[0] or needs[3]:
        gx = csr_matmul(row_ptr, cols, g, W_enc, backend)
        grad_x = gx.to(x.dtype) if needs[0] else None
        grad_pb = (-gx.sum(0)).to(pre_bias.dtype) if needs[3] and pre_bias is not None else None
    if needs[1] or needs[2]:
        gW, gb = csr_transpose_matmul(rows, cols, g, x, W_enc.shape[0], pre_bias, backend, accumulate)
        grad_W = gW.to(W_enc.dtype) if needs[1] else None
        grad_b = gb if needs[2] else None
    return grad_x, grad_W, grad_b, grad_pb
