"""``sparse_decode``: ``[n, d] = sum_j values[:, j] W_dec[indices[:, j]] + b_dec``, the
decode of a TopK result ``[n, k]``.

A TopK result is the CSR matrix with ``row_ptr = arange(n+1) * k``, so this is
``csr_decode`` on that view (forward, sparse backward, and the measuring dispatch between the
Triton kernel, ``embedding_bag`` and a dense GEMM, ``ACTSTORE_SPARSE_DECODE``:
``actstore.ops.csr_decode``).
Reference: ``actstore.reference.topk_sae.sparse_decode_reference``.
"""

from __future__ import annotations

import torch

from .csr_decode import csr_decode


def sparse_decode(
    values: torch.Tensor,
    indices: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor | None = None,
    *,
    backend: str | None = None,
    accumulate: str = "sorted",
) -> torch.Tensor:
    """values ``[n, k]``, indices ``[n, k]`` int64, W_dec ``[m, d]``, b_dec ``[d]`` -> ``[n, d]``
    float32 (float64 for float64 values). Differentiable in values, W_dec and b_dec."""
    if values.shape != indices.shape or values.dim() != 2:
        raise ValueError(
            f"sparse_decode: values and indices must both be [n, k], got {tuple(values.shape)} "
            f"and {tuple(indices.shape)}"
        )
    n, k = values.shape
    row_ptr = torch.arange(n + 1, device=values.device) * k
    return csr_decode(
        row_ptr, indices.reshape(-1), values.reshape(-1), W_dec, b_dec, backend=backend, accumulate=accumulate
    )
