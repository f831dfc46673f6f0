"""``csr_gather_dot``: a dense product evaluated only at sparse entries,
``out[e] = G[rows[e]] . W[cols[e]]``.

The gradient of the latent values through the sparse decode. A ``torch.library`` custom
op (``actstore::csr_gather_dot``) without autograd of its own. Kernel:
``actstore.kernels.csr_gather_dot``; reference: ``actstore.reference.sparse_matmul``.
Shapes: rows, cols ``[nnz]`` int64, G ``[n, d]``, W ``[m, d]`` -> ``[nnz]`` float32
(float64 for float64 G).
"""

from __future__ import annotations

import torch

from .._numerics import acc_dtype
from ..reference.sparse_matmul import csr_gather_dot_reference


@torch.library.custom_op("actstore::csr_gather_dot", mutates_args=())
def csr_gather_dot(
    rows: torch.Tensor, cols: torch.Tensor, G: torch.Tensor, W: torch.Tensor, backend: str
) -> torch.Tensor:
    if backend == "triton" and G.dtype != torch.float64:
        from ..kernels.csr_gather_dot import csr_gather_dot_fwd

        return csr_gather_dot_fwd(rows, cols, G, W)
    return csr_gather_dot_reference(rows, cols, G, W)


@csr_gather_dot.register_fake
def _(rows, cols, G, W, backend):
    return G.new_empty(cols.shape, dtype=acc_dtype(G))
