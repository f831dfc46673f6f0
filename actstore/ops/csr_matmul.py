"""``csr_matmul``: CSR sparse @ dense, ``out[i] = sum_{e in row i} vals[e] W[cols[e]]``.

The forward of the sparse decode and the input gradient of the encoders. A
``torch.library`` custom op (``actstore::csr_matmul``) so that ``torch.compile`` traces
through it; no autograd of its own (the ops that use it define theirs). Kernel:
``actstore.kernels.csr_matmul``; reference: ``actstore.reference.sparse_matmul``.
Shapes: row_ptr ``[n+1]``, cols ``[nnz]`` int64, vals ``[nnz]``, W ``[m, d]`` -> ``[n, d]``
float32 (float64 for float64 vals).
"""

from __future__ import annotations

import torch

from .._numerics import acc_dtype
from ..reference.sparse_matmul import csr_matmul_reference


@torch.library.custom_op("actstore::csr_matmul", mutates_args=())
def csr_matmul(
    row_ptr: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, W: torch.Tensor, backend: str
) -> torch.Tensor:
    if backend == "triton" and vals.dtype != torch.float64:
        from ..kernels.csr_matmul import csr_matmul_fwd

        return csr_matmul_fwd(row_ptr, cols, vals, W)
    return csr_matmul_reference(row_ptr, cols, vals, W)


@csr_matmul.register_fake
def _(row_ptr, cols, vals, W, backend):
    return W.new_empty((row_ptr.shape[0] - 1, W.shape[1]), dtype=acc_dtype(vals))
