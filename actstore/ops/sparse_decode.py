"""``sparse_decode``: ``[n, d] = sum_j values[:, j] W_dec[indices[:, j]] + b_dec``.

One ``embedding_bag`` (sum mode, per-sample weights) on every device: it reads k rows of
``W_dec`` per output row and never forms the ``[n, k, d]`` product, and its backward is
the sparse one the SAE needs (``grad_values = (grad_out . W_dec[idx])``: a dense product
evaluated only at the selected indices; ``grad_W_dec``: sparse^T @ dense, accumulated
per selected row). A Triton decode kernel, and a measured choice between sorted and atomic
accumulation for ``grad_W_dec``, are owed (they need a GPU to measure).
Reference: ``actstore.reference.topk_sae.sparse_decode_reference``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor,
                  b_dec: torch.Tensor | None = None) -> torch.Tensor:
    """values ``[n, k]``, indices ``[n, k]`` int64, W_dec ``[m, d]``, b_dec ``[d]`` -> ``[n, d]``."""
    if values.shape != indices.shape or values.dim() != 2:
        raise ValueError(f"sparse_decode: values and indices must both be [n, k], got {tuple(values.shape)} "
                         f"and {tuple(indices.shape)}")
    if W_dec.dim() != 2 or (b_dec is not None and b_dec.shape != (W_dec.shape[1],)):
        raise ValueError(f"sparse_decode: W_dec must be [m, d] and b_dec [d], got {tuple(W_dec.shape)}"
                         f"{'' if b_dec is None else ' and ' + str(tuple(b_dec.shape))}")
    out = F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
    return out if b_dec is None else out + b_dec
