"""TopK SAE ops against their references: the fused encoder+top-k kernel (under
TRITON_INTERPRET=1 without a GPU), the sparse backward, sparse decode, BatchTopK
references, and gradcheck of the references in float64."""

from __future__ import annotations

import pytest
import torch

from actstore._numerics import pre_activations
from actstore.ops import sparse_decode, topk_encode
from actstore.reference.topk_sae import (batch_topk_encode_reference, csr_decode_reference, sparse_decode_reference,
                                         topk_encode_reference)
from helpers.device import DEVICE as DEV
from helpers.tolerances import assert_grads_close, assert_values_close

pytestmark = pytest.mark.gpu  # runs on the GPU when one is present


def _inputs(n, d, m, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    W = torch.randn(m, d, generator=g) / d ** 0.5
    b = torch.randn(m, generator=g) * 0.1
    pb = torch.randn(d, generator=g) * 0.1
    return x.to(dtype), W.to(dtype), b, pb


def _check_topk(values, indices, x, W, b, pb, k, dtype):
    """values/indices are a correct top-k: they agree with the reference's values, and the
    chosen indices' own pre-activations are those values (robust to near-ties)."""
    ref_v, ref_i = topk_encode_reference(x, W, b, k, pb)
    pre = pre_activations(x, W, b, pb)
    assert values.shape == ref_v.shape and indices.dtype == torch.int64
    assert_values_close(values.float(), ref_v, dtype)
    assert_values_close(torch.relu(pre.gather(1, indices.cpu())), values.cpu().float(), dtype)
    assert all(len(set(r.tolist())) == k for r in indices.cpu())  # distinct latents per row
    same = sum(set(a.tolist()) == set(c.tolist()) for a, c in zip(indices.cpu(), ref_i))
    assert same >= indices.shape[0] - 1  # index sets equal (a near-tie may swap one row's last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d,m,k", [(48, 96, 1), (64, 96, 8), (100, 96, 32), (48, 512, 32), (100, 512, 8),
                                   (64, 512, 1)])
def test_fused_topk_encode_matches_reference(dtype, d, m, k):
    n = 37
    x, W, b, pb = _inputs(n, d, m, dtype, seed=d * m + k)
    v, i = topk_encode(x.to(DEV), W.to(DEV), b.to(DEV), k, pb.to(DEV), backend="triton")
    _check_topk(v, i, x, W, b, pb, k, dtype)


def test_k_equal_to_m_n_1_and_no_pre_bias():
    x, W, b, _ = _inputs(1, 48, 96, torch.float32, seed=1)
    v, i = topk_encode(x.to(DEV), W.to(DEV), b.to(DEV), 96, backend="triton")
    _check_topk(v, i, x, W, b, None, 96, torch.float32)
    assert sorted(i[0].tolist()) == list(range(96))


def test_ties_prefer_the_lower_latent():
    x = torch.ones(2, 16)
    W = torch.zeros(64, 16)
    W[[3, 9, 40, 41], :] = 1.0  # four equal pre-activations of 16
    v, i = topk_encode(x.to(DEV), W.to(DEV), torch.zeros(64, device=DEV), 2, backend="triton")
    assert i.cpu().tolist() == [[3, 9], [3, 9]] and torch.equal(v.cpu(), torch.full((2, 2), 16.0))


def test_non_contiguous_inputs():
    x, W, b, pb = _inputs(20, 96, 96, torch.float32, seed=3)
    xs = x[:, ::2]  # [20, 48], row stride 96, column stride 2
    Wt = W[:, :48].t().contiguous().t()  # [96, 48] column-major
    v, i = topk_encode(xs.to(DEV), Wt.to(DEV), b.to(DEV), 8, pb[:48].to(DEV), backend="triton")
    _check_topk(v, i, xs, Wt, b, pb[:48], 8, torch.float32)


def test_nan_rows_come_out_nan_like_the_reference():
    x, W, b, pb = _inputs(4, 48, 96, torch.float32, seed=4)
    x[1, 5] = float("nan")
    v, i = topk_encode(x.to(DEV), W.to(DEV), b.to(DEV), 8, pb.to(DEV), backend="triton")
    rv, _ = topk_encode_reference(x, W, b, 8, pb)
    assert torch.isnan(v[1].cpu()).all() and torch.isnan(rv[1]).all()
    assert_values_close(v[[0, 2, 3]], rv[[0, 2, 3]])


@pytest.mark.parametrize("k,m", [(0, 96), (97, 96), (-1, 96)])
def test_bad_k_is_one_line(k, m):
    x, W, b, _ = _inputs(2, 48, m, torch.float32, seed=5)
    with pytest.raises(ValueError) as e:
        topk_encode(x, W, b, k)
    assert "\n" not in str(e.value) and ("larger than the number of latents" in str(e.value) or "positive" in str(e.value))


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_every_gradient_matches_autograd_through_the_reference(backend):
    x, W, b, pb = _inputs(19, 48, 96, torch.float32, seed=6)
    Wd = torch.randn(96, 48) / 7
    bd = torch.randn(48)
    target = torch.randn(19, 48)

    def loss(enc, dec):
        v, i = enc
        return ((dec(v, i) - target) ** 2).sum()

    leaves = [t.clone().to(DEV).requires_grad_() for t in (x, W, b, pb, Wd, bd)]
    lx, lW, lb, lpb, lWd, lbd = leaves
    loss(topk_encode(lx, lW, lb, 8, lpb, backend=backend), lambda v, i: sparse_decode(v, i, lWd, lbd)).backward()
    refs = [t.clone().requires_grad_() for t in (x, W, b, pb, Wd, bd)]
    rx, rW, rb, rpb, rWd, rbd = refs
    loss(topk_encode_reference(rx, rW, rb, 8, rpb), lambda v, i: sparse_decode_reference(v, i, rWd, rbd)).backward()
    assert_grads_close(["x", "W_enc", "b_enc", "pre_bias", "W_dec", "b_dec"], leaves, refs)


def test_reference_gradcheck_in_float64():
    x, W, b, pb = (t.double().requires_grad_() for t in _inputs(5, 12, 24, torch.float32, seed=7))
    Wd = (torch.randn(24, 12, dtype=torch.float64) / 4).requires_grad_()

    def f(x, W, b, pb, Wd):
        v, i = topk_encode_reference(x, W, b, 4, pb)
        return sparse_decode_reference(v, i, Wd)

    assert torch.autograd.gradcheck(f, (x, W, b, pb, Wd))


def test_sparse_decode_matches_reference():
    g = torch.Generator().manual_seed(8)
    v = torch.randn(33, 8, generator=g)
    i = torch.randint(0, 96, (33, 8), generator=g)
    Wd, bd = torch.randn(96, 100, generator=g), torch.randn(100, generator=g)
    assert_values_close(sparse_decode(v, i, Wd, bd), sparse_decode_reference(v, i, Wd, bd))
    with pytest.raises(ValueError, match="both be"):
        sparse_decode(v, i[:, :4], Wd, bd)


def test_batch_topk_reference_keeps_n_times_k_and_decodes():
    x, W, b, pb = _inputs(16, 48, 96, torch.float32, seed=9)
    row_ptr, cols, vals, t = batch_topk_encode_reference(x, W, b, 4, pb)
    assert cols.numel() == 16 * 4 and (vals >= t).all()  # continuous values: no ties at the threshold
    pre = pre_activations(x, W, b, pb)
    dense = torch.zeros_like(pre)
    rows = torch.repeat_interleave(torch.arange(16), row_ptr[1:] - row_ptr[:-1])
    dense[rows, cols] = vals
    assert torch.equal(dense, torch.where(pre >= t, pre, 0.0))
    Wd = torch.randn(96, 48)
    assert_values_close(csr_decode_reference(row_ptr, cols, vals, Wd), dense @ Wd)
    # The inference form: a fixed threshold (JumpReLU with one theta), strict.
    rp2, c2, v2, _ = batch_topk_encode_reference(x, W, b, 4, pb, threshold=float(t))
    assert c2.numel() == 16 * 4 - 1 and (v2 > t).all()
