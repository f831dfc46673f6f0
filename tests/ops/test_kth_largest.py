"""kth_largest, the radix-select threshold of BatchTopK, against a sort."""

from __future__ import annotations

import pytest
import torch

from actstore.ops import kth_largest

pytestmark = pytest.mark.gpu  # runs on the GPU when one is present


@pytest.mark.parametrize("n", [1, 100, 3001])
def test_radix_select_finds_the_rth_largest(n, device):
    g = torch.Generator().manual_seed(n)
    v = torch.randn(n, generator=g)
    v[: n // 3] = v[0]  # a run of equal values
    for vals in (v, torch.relu(v)):
        for r in sorted({1, 2, n // 2 + 1, n // 3, n}):
            if 1 <= r <= n:
                want = vals.sort(descending=True).values[r - 1]
                assert torch.equal(kth_largest(vals.to(device), r, "triton").cpu(), want), r
    with pytest.raises(ValueError, match="outside"):
        kth_largest(v.to(device), n + 1, "triton")
