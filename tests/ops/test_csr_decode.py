"""csr_decode (the decoder of a CSR code) and its backward, sorted and atomic accumulation,
against the reference, under TRITON_INTERPRET=1 without a GPU."""

from __future__ import annotations

import pytest
import torch

from actstore.ops import csr_decode
from actstore.reference.topk_sae import csr_decode_reference
from helpers.tolerances import assert_grads_close, assert_values_close

pytestmark = pytest.mark.gpu  # runs on the GPU when one is present


def _random_csr(n, m, seed, max_row=7):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_row + 1, (n,), generator=g)
    counts[0] = 0  # an empty row
    row_ptr = torch.zeros(n + 1, dtype=torch.int64)
    row_ptr[1:] = counts.cumsum(0)
    nnz = int(row_ptr[-1])
    cols = torch.randint(0, m, (nnz,), generator=g)
    vals = torch.rand(nnz, generator=g) + 0.1
    return row_ptr, cols, vals


@pytest.mark.parametrize("accumulate", ["sorted", "atomic"])
@pytest.mark.parametrize("d,m", [(48, 96), (100, 512), (64, 96)])
def test_csr_decode_and_its_gradients_match_the_reference(accumulate, d, m, device):
    row_ptr, cols, vals = _random_csr(23, m, seed=d + m)
    g = torch.Generator().manual_seed(1)
    Wd, bd = torch.randn(m, d, generator=g), torch.randn(d, generator=g)
    target = torch.randn(23, d, generator=g)
    got = [t.clone().to(device).requires_grad_() for t in (vals, Wd, bd)]
    out = csr_decode(
        row_ptr.to(device), cols.to(device), got[0], got[1], got[2], backend="triton", accumulate=accumulate
    )
    ((out - target.to(device)) ** 2).sum().backward()
    ref = [t.clone().requires_grad_() for t in (vals, Wd, bd)]
    rout = csr_decode_reference(row_ptr, cols, ref[0], ref[1], ref[2])
    ((rout - target) ** 2).sum().backward()
    assert_values_close(out, rout)
    assert_grads_close(["vals", "W_dec", "b_dec"], got, ref)
    assert torch.equal(out[0].detach().cpu(), bd)  # the empty row decodes to b_dec alone
