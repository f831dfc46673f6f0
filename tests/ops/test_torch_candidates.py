"""The measuring dispatch's PyTorch candidates (actstore.ops.torch_candidates) against the
references: the decode as an embedding bag and as one dense GEMM (values and the gradients
of vals, W_dec and b_dec, by torch's own backward; float64 gradcheck), and the encoder's
gradients from dense products against the sparse reference backward. CPU tensors, no kernel."""

from __future__ import annotations

import pytest
import torch

from actstore.ops.encoder_grads import _grads_with
from actstore.ops.torch_candidates import decode_dense, decode_embedding_bag, encoder_grads_dense
from actstore.reference.topk_sae import csr_decode_reference
from helpers.tolerances import assert_grads_close, assert_values_close


def _random_csr(n, m, seed, max_row=7):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_row + 1, (n,), generator=g)
    counts[0] = 0  # an empty row
    row_ptr = torch.zeros(n + 1, dtype=torch.int64)
    row_ptr[1:] = counts.cumsum(0)
    nnz = int(row_ptr[-1])
    cols = torch.randint(0, m, (nnz,), generator=g)
    cols[1:3] = cols[0]  # repeated latents: the dense scatter must sum them
    vals = torch.randn(nnz, generator=g)
    return row_ptr, cols, vals


@pytest.mark.parametrize("candidate", [decode_embedding_bag, decode_dense])
@pytest.mark.parametrize("d,m", [(48, 96), (33, 130)])
def test_decode_candidates_match_the_reference_with_gradients(candidate, d, m):
    row_ptr, cols, vals = _random_csr(21, m, seed=d + m)
    g = torch.Generator().manual_seed(5)
    Wd, bd = torch.randn(m, d, generator=g), torch.randn(d, generator=g)
    target = torch.randn(21, d, generator=g)
    got = [t.clone().requires_grad_() for t in (vals, Wd, bd)]
    ref = [t.clone().requires_grad_() for t in (vals, Wd, bd)]
    out = candidate(row_ptr, cols, *got)
    exp = csr_decode_reference(row_ptr, cols, *ref)
    assert out.dtype == torch.float32 and out.shape == (21, d)
    assert_values_close(out, exp)
    ((out - target) ** 2).sum().backward()
    ((exp - target) ** 2).sum().backward()
    assert_grads_close(["vals", "W_dec", "b_dec"], got, ref)


@pytest.mark.parametrize("candidate", [decode_embedding_bag, decode_dense])
def test_decode_candidates_gradcheck_and_fp16_and_no_bias(candidate):
    row_ptr, cols, vals = _random_csr(6, 12, seed=3, max_row=4)
    g = torch.Generator().manual_seed(2)
    W = torch.randn(12, 5, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (vals.double(), W, b)]
    assert torch.autograd.gradcheck(lambda v, w, bb: candidate(row_ptr, cols, v, w, bb), args)
    Wh = W.half()
    out = candidate(row_ptr, cols, vals, Wh, None)
    assert out.dtype == torch.float32
    assert_values_close(out, csr_decode_reference(row_ptr, cols, vals, Wh), torch.float16)


def test_decode_candidates_with_no_entries():
    row_ptr = torch.zeros(4, dtype=torch.int64)
    cols, vals = torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    W, b = torch.randn(7, 3).requires_grad_(), torch.randn(3)
    for candidate in (decode_embedding_bag, decode_dense):
        out = candidate(row_ptr, cols, vals, W, b)
        torch.testing.assert_close(out, b.expand(3, 3))
        out.sum().backward()
        assert torch.count_nonzero(W.grad) == 0
        W.grad = None


@pytest.mark.parametrize("with_pre_bias", [True, False])
def test_encoder_grads_dense_matches_the_sparse_reference(with_pre_bias):
    n, d, m = 19, 24, 70
    row_ptr, cols, g_vals = _random_csr(n, m, seed=11)
    rows = torch.repeat_interleave(torch.arange(n), row_ptr[1:] - row_ptr[:-1])
    gen = torch.Generator().manual_seed(4)
    x, W = torch.randn(n, d, generator=gen), torch.randn(m, d, generator=gen)
    pb = torch.randn(d, generator=gen) if with_pre_bias else None
    needs = (True, True, True, with_pre_bias)
    got = encoder_grads_dense(needs, x, W, pb, rows, cols, g_vals)
    ref = _grads_with("reference", needs, x, W, pb, row_ptr, rows, cols, g_vals, "sorted")
    for name, a, r in zip(("x", "W_enc", "b_enc", "pre_bias"), got, ref, strict=True):
        if r is None:
            assert a is None, name
        else:
            assert a.dtype == r.dtype, name
            torch.testing.assert_close(a, r, atol=2e-4, rtol=1e-4, msg=name)
    only_x = encoder_grads_dense((True, False, False, False), x, W, pb, rows, cols, g_vals)
    assert only_x[1:] == (None, None, None)
    torch.testing.assert_close(only_x[0], ref[0], atol=2e-4, rtol=1e-4)
