"""``kth_largest``: the r-th largest (1-based) of a flat float tensor, as a 0-d tensor.

The BatchTopK threshold. On the Triton backend a 4-pass radix select over the float bits
(``actstore.kernels.radix_select``: histograms, no sort, no host sync); otherwise
``torch.kthvalue``. A ``torch.library`` custom op (``actstore::kth_largest``); no gradient
(the threshold is a selection, not a value to learn).
"""

from __future__ import annotations

import torch

from ..reference.sparse_matmul import kth_largest_reference


@torch.library.custom_op("actstore::kth_largest", mutates_args=())
def kth_largest(values: torch.Tensor, r: int, backend: str) -> torch.Tensor:
    if not 1 <= r <= values.numel():
        raise ValueError(f"kth_largest: rank {r} is outside 1..{values.numel()}")
    if backend == "triton" and values.dtype == torch.float32:
        from ..kernels.radix_select import radix_select_fwd

        return radix_select_fwd(values, r)
    return kth_largest_reference(values, r).clone()


@kth_largest.register_fake
def _(values, r, backend):
    return values.new_empty(())
