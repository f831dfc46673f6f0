"""batch_topk_encode against its reference, under TRITON_INTERPRET=1 without a GPU: the
reference's n*k kept entries, the CSR form from the kernel (training and the fixed-threshold
inference path, including the exact dense fallback), every gradient, the AuxK top-k from the
same pass, gradcheck in float64, and torch.compile through its data-dependent size."""

from __future__ import annotations

import pytest
import torch

from actstore._numerics import pre_activations, rows_of
from actstore.ops import batch_topk_encode, csr_decode, sparse_decode
from actstore.reference.topk_sae import (
    batch_topk_encode_reference,
    csr_decode_reference,
    sparse_decode_reference,
    topk_encode_reference,
)
from helpers.compile_check import assert_compiled_grads_match
from helpers.sae_inputs import encoder_inputs
from helpers.tolerances import DTYPE_TOL, assert_grads_close, assert_values_close

pytestmark = pytest.mark.gpu  # runs on the GPU when one is present


def test_batch_topk_reference_keeps_n_times_k_and_decodes():
    x, W, b, pb = encoder_inputs(16, 48, 96, seed=9)
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


def _csr_sets(row_ptr, cols):
    return [set(cols[row_ptr[i] : row_ptr[i + 1]].tolist()) for i in range(row_ptr.numel() - 1)]


@pytest.mark.parametrize("threshold", [None, 0.3])
@pytest.mark.parametrize("cand_factor", [1, 4])
def test_batch_topk_matches_the_reference_including_the_dense_fallback(threshold, cand_factor, device):
    x, W, b, pb = encoder_inputs(24, 48, 96, seed=6)
    x[5] *= 6  # one row far above the rest: it holds more than its k, forcing the fallback at cand_factor=1
    rp, c, v, t = batch_topk_encode(
        x.to(device),
        W.to(device),
        b.to(device),
        4,
        pb.to(device),
        threshold=threshold,
        cand_factor=cand_factor,
        backend="triton",
    )
    rrp, rc, rv, rt = batch_topk_encode_reference(x, W, b, 4, pb, threshold=threshold)
    assert torch.equal(rp.cpu(), rrp) and _csr_sets(rp.cpu(), c.cpu()) == _csr_sets(rrp, rc)
    atol, rtol = DTYPE_TOL[torch.float32]
    torch.testing.assert_close(float(t), float(rt), atol=atol, rtol=rtol)
    pre = pre_activations(x, W, b, pb)
    assert_values_close(v, pre[rows_of(rp.cpu()), c.cpu()])
    if threshold is None:
        # Row 5 keeps more than k: at cand_factor=1 only the dense fallback could find them.
        assert c.numel() == 24 * 4 and int(rp[6] - rp[5]) > 4


def test_batch_topk_gradients_match_autograd_through_the_reference(device):
    x, W, b, pb = encoder_inputs(16, 48, 96, seed=7)
    Wd = torch.randn(96, 48) / 7
    target = torch.randn(16, 48)
    leaves = [t.clone().to(device).requires_grad_() for t in (x, W, b, pb)]
    rp, c, v, _ = batch_topk_encode(*leaves[:3], 4, leaves[3], backend="triton")
    ((csr_decode(rp, c, v, Wd.to(device), backend="triton") - target.to(device)) ** 2).sum().backward()
    refs = [t.clone().requires_grad_() for t in (x, W, b, pb)]
    rrp, rc, rv, _ = batch_topk_encode_reference(*refs[:3], 4, refs[3])
    ((csr_decode_reference(rrp, rc, rv, Wd) - target) ** 2).sum().backward()
    assert_grads_close(["x", "W_enc", "b_enc", "pre_bias"], leaves, refs)


def test_batch_topk_reference_backend_and_errors():
    x, W, b, pb = encoder_inputs(8, 48, 96, seed=8)
    rp, c, v, t = batch_topk_encode(x, W, b, 4, pb, backend="reference")
    assert c.numel() == 32 and (v >= t).all()
    with pytest.raises(ValueError, match="larger than the number of latents"):
        batch_topk_encode(x, W, b, 97)
    with pytest.raises(ValueError, match="empty"):
        batch_topk_encode(x[:0], W, b, 4)


def test_reference_gradcheck_of_batch_topk_and_csr_decode_in_float64():
    x, W, b, pb = (t.double().requires_grad_() for t in encoder_inputs(6, 10, 20, seed=9))
    Wd = (torch.randn(20, 10, dtype=torch.float64) / 4).requires_grad_()

    def f(x, W, b, pb, Wd):
        rp, c, v, _ = batch_topk_encode(x, W, b, 3, pb, backend="reference")
        return csr_decode(rp, c, v, Wd, backend="reference")

    assert torch.autograd.gradcheck(f, (x, W, b, pb, Wd))


def test_torch_compile_fullgraph_through_batch_topk_with_its_data_dependent_size(device):
    x, W, b, pb = encoder_inputs(12, 48, 96, seed=11)
    Wd = torch.randn(96, 48) / 7

    def step(x, W, b, pb, Wd):
        rp, c, v, _ = batch_topk_encode(x, W, b, 4, pb, backend="triton")
        return ((csr_decode(rp, c, v, Wd, backend="triton") - x) ** 2).mean()

    assert_compiled_grads_match(step, (x, W, b, pb, Wd), device)


def test_batch_topk_auxk_comes_out_of_the_same_pass_with_gradients(device):
    x, W, b, pb = encoder_inputs(14, 48, 96, seed=12)
    dead = torch.rand(96, generator=torch.Generator().manual_seed(3)) < 0.4
    Wd = torch.randn(96, 48) / 7
    leaves = [t.clone().to(device).requires_grad_() for t in (x, W, b, pb)]
    rp, c, v, t, av, ai = batch_topk_encode(
        *leaves[:3], 4, leaves[3], dead_mask=dead.to(device), k_aux=6, backend="triton"
    )
    loss = (csr_decode(rp, c, v, Wd.to(device)) ** 2).sum() + (sparse_decode(av, ai, Wd.to(device)) ** 2).sum()
    loss.backward()
    refs = [t_.clone().requires_grad_() for t_ in (x, W, b, pb)]
    rrp, rc, rv, _ = batch_topk_encode_reference(*refs[:3], 4, refs[3])
    _, _, rav, rai = topk_encode_reference(*refs[:3], 1, refs[3], dead_mask=dead, k_aux=6)
    rloss = (csr_decode_reference(rrp, rc, rv, Wd) ** 2).sum() + (sparse_decode_reference(rav, rai, Wd) ** 2).sum()
    rloss.backward()
    assert_values_close(av, rav)
    assert dead[ai.cpu()[av.detach().cpu() > 0]].all()
    assert_grads_close(["x", "W_enc", "b_enc", "pre_bias"], leaves, refs)
