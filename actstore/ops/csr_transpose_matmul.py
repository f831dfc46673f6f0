"""``csr_transpose_matmul``: sparse^T @ dense, ``grad_W[cols[e]] += vals[e] (X[rows[e]] - shift)``
and ``grad_b[cols[e]] += vals[e]``.

The weight and bias gradients of the SAE encoder (X = x, shift = pre_bias) and decoder
(X = gradient of the reconstruction). ``accumulate`` picks the kernel strategy:
``sorted`` (deterministic, the default) or ``atomic`` (see
``actstore.kernels.csr_transpose_matmul``). A ``torch.library`` custom op
(``actstore::csr_transpose_matmul``) without autograd of its own.
Shapes: rows, cols ``[nnz]`` int64, vals ``[nnz]``, X ``[n, d]``, shift ``[d]`` or None
-> ``(grad_W [m, d], grad_b [m])`` float32 (float64 for float64 vals).
"""

from __future__ import annotations

import torch

from .._numerics import acc_dtype
from ..reference.sparse_matmul import csr_transpose_matmul_reference


@torch.library.custom_op("actstore::csr_transpose_matmul", mutates_args=())
def csr_transpose_matmul(
    rows: torch.Tensor,
    cols: torch.Tensor,
    vals: torch.Tensor,
    X: torch.Tensor,
    m: int,
    shift: torch.Tensor | None,
    backend: str,
    accumulate: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton" and vals.dtype != torch.float64:
        from ..kernels.csr_transpose_matmul import csr_transpose_matmul_fwd

        return csr_transpose_matmul_fwd(rows, cols, vals, X, m, shift, accumulate)
    return csr_transpose_matmul_reference(rows, cols, vals, X, m, shift)


@csr_transpose_matmul.register_fake
def _(rows, cols, vals, X, m, shift, backend, accumulate):
    acc = acc_dtype(vals)
    return X.new_empty((m, X.shape[1]), dtype=acc), X.new_empty((m,), dtype=acc)
