"""The sparse SAE kernels against their references, under TRITON_INTERPRET=1 without a
GPU: CSR decode and its backward (sorted and atomic accumulation), the AuxK top-k from the
fused encoder pass, the radix-select threshold, BatchTopK in CSR form (training and the
fixed-threshold inference path, including the exact dense fallback), and torch.compile
through the custom ops."""

from __future__ import annotations

import pytest
import torch

from actstore._numerics import pre_activations
from actstore.ops import batch_topk_encode, csr_decode, kth_largest, sparse_decode, topk_encode
from actstore.reference.sparse_matmul import rows_of
from actstore.reference.topk_sae import (batch_topk_encode_reference, csr_decode_reference, sparse_decode_reference,
                                         topk_encode_reference)
from helpers.compile_check import assert_compiled_grads_match
from helpers.device import DEVICE as DEV
from helpers.tolerances import DTYPE_TOL, GRAD_TOL, assert_grads_close, assert_values_close

pytestmark = pytest.mark.gpu  # runs on the GPU when one is present


def _inputs(n, d, m, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    W = torch.randn(m, d, generator=g) / d ** 0.5
    b = torch.randn(m, generator=g) * 0.1
    pb = torch.randn(d, generator=g) * 0.1
    return x.to(dtype), W.to(dtype), b, pb


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
def test_csr_decode_and_its_gradients_match_the_reference(accumulate, d, m):
    row_ptr, cols, vals = _random_csr(23, m, seed=d + m)
    g = torch.Generator().manual_seed(1)
    Wd, bd = torch.randn(m, d, generator=g), torch.randn(d, generator=g)
    target = torch.randn(23, d, generator=g)
    got = [t.clone().to(DEV).requires_grad_() for t in (vals, Wd, bd)]
    out = csr_decode(row_ptr.to(DEV), cols.to(DEV), got[0], got[1], got[2], backend="triton", accumulate=accumulate)
    ((out - target.to(DEV)) ** 2).sum().backward()
    ref = [t.clone().requires_grad_() for t in (vals, Wd, bd)]
    rout = csr_decode_reference(row_ptr, cols, ref[0], ref[1], ref[2])
    ((rout - target) ** 2).sum().backward()
    assert_values_close(out, rout)
    assert_grads_close(["vals", "W_dec", "b_dec"], got, ref)
    assert torch.equal(out[0].detach().cpu(), bd)  # the empty row decodes to b_dec alone


def test_sparse_decode_fp16_decoder_on_the_kernel():
    g = torch.Generator().manual_seed(2)
    v = torch.rand(17, 8, generator=g)
    i = torch.randint(0, 96, (17, 8), generator=g)
    Wd = (torch.randn(96, 100, generator=g) / 10).half()
    out = sparse_decode(v.to(DEV), i.to(DEV), Wd.to(DEV), backend="triton")
    assert out.dtype == torch.float32
    assert_values_close(out, sparse_decode_reference(v, i, Wd))


@pytest.mark.parametrize("accumulate", ["sorted", "atomic"])
def test_sorted_accumulation_is_bitwise_repeatable_and_agrees_with_atomic(accumulate):
    x, W, b, pb = _inputs(31, 48, 96, seed=3)
    grads = []
    for _ in range(2):
        lW = W.clone().to(DEV).requires_grad_()
        v, i = topk_encode(x.to(DEV), lW, b.to(DEV), 8, pb.to(DEV), backend="triton", accumulate=accumulate)
        (v * torch.arange(8, device=DEV)).sum().backward()
        grads.append(lW.grad.cpu())
    if accumulate == "sorted":
        assert torch.equal(grads[0], grads[1])
    lW = W.clone().requires_grad_()
    rv, _ = topk_encode_reference(x, lW, b, 8, pb)
    (rv * torch.arange(8)).sum().backward()
    atol, rtol = GRAD_TOL[torch.float32]
    torch.testing.assert_close(grads[0], lW.grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize("m,k_aux", [(96, 8), (512, 32)])
def test_auxk_comes_out_of_the_same_pass(m, k_aux):
    x, W, b, pb = _inputs(21, 64, m, seed=m + k_aux)
    g = torch.Generator().manual_seed(4)
    dead = torch.rand(m, generator=g) < 0.3
    v, i, av, ai = topk_encode(x.to(DEV), W.to(DEV), b.to(DEV), 8, pb.to(DEV), dead_mask=dead.to(DEV), k_aux=k_aux,
                               backend="triton")
    rv, ri, rav, rai = topk_encode_reference(x, W, b, 8, pb, dead_mask=dead, k_aux=k_aux)
    assert_values_close(v, rv)
    assert_values_close(av, rav)
    assert dead[ai.cpu()[av.cpu() > 0]].all()  # aux latents are dead ones
    pre = pre_activations(x, W, b, pb)
    assert_values_close(torch.relu(pre.gather(1, ai.cpu())), av.cpu())
    same = sum(set(a[p > 0].tolist()) == set(c[q > 0].tolist()) for a, p, c, q in zip(ai.cpu(), av.cpu(), rai, rav))
    assert same >= 20


def test_auxk_rows_with_fewer_dead_latents_than_k_aux_and_gradients():
    x, W, b, pb = _inputs(9, 48, 96, seed=5)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[[4, 50, 77]] = True  # three dead latents, k_aux = 6
    Wd = torch.randn(96, 48) / 7
    leaves = [t.clone().to(DEV).requires_grad_() for t in (x, W, b, pb)]
    v, i, av, ai = topk_encode(*leaves[:3], 8, leaves[3], dead_mask=dead.to(DEV), k_aux=6, backend="triton")
    assert (ai.cpu() < 96).all() and (av[:, 3:] == 0).all()
    loss = (sparse_decode(v, i, Wd.to(DEV)) ** 2).sum() + (sparse_decode(av, ai, Wd.to(DEV)) ** 2).sum()
    loss.backward()
    refs = [t.clone().requires_grad_() for t in (x, W, b, pb)]
    rv, ri, rav, rai = topk_encode_reference(*refs[:3], 8, refs[3], dead_mask=dead, k_aux=6)
    rloss = (sparse_decode_reference(rv, ri, Wd) ** 2).sum() + (sparse_decode_reference(rav, rai, Wd) ** 2).sum()
    rloss.backward()
    assert_grads_close(["x", "W_enc", "b_enc", "pre_bias"], leaves, refs)


@pytest.mark.parametrize("n", [1, 100, 3001])
def test_radix_select_finds_the_rth_largest(n):
    g = torch.Generator().manual_seed(n)
    v = torch.randn(n, generator=g)
    v[: n // 3] = v[0]  # a run of equal values
    for vals in (v, torch.relu(v)):
        for r in sorted({1, 2, n // 2 + 1, n // 3, n}):
            if 1 <= r <= n:
                want = vals.sort(descending=True).values[r - 1]
                assert torch.equal(kth_largest(vals.to(DEV), r, "triton").cpu(), want), r
    with pytest.raises(ValueError, match="outside"):
        kth_largest(v.to(DEV), n + 1, "triton")


def _csr_sets(row_ptr, cols):
    return [set(cols[row_ptr[i]:row_ptr[i + 1]].tolist()) for i in range(row_ptr.numel() - 1)]


@pytest.mark.parametrize("threshold", [None, 0.3])
@pytest.mark.parametrize("cand_factor", [1, 4])
def test_batch_topk_matches_the_reference_including_the_dense_fallback(threshold, cand_factor):
    x, W, b, pb = _inputs(24, 48, 96, seed=6)
    x[5] *= 6  # one row far above the rest: it holds more than its k, forcing the fallback at cand_factor=1
    rp, c, v, t = batch_topk_encode(x.to(DEV), W.to(DEV), b.to(DEV), 4, pb.to(DEV), threshold=threshold,
                                    cand_factor=cand_factor, backend="triton")
    rrp, rc, rv, rt = batch_topk_encode_reference(x, W, b, 4, pb, threshold=threshold)
    assert torch.equal(rp.cpu(), rrp) and _csr_sets(rp.cpu(), c.cpu()) == _csr_sets(rrp, rc)
    atol, rtol = DTYPE_TOL[torch.float32]
    torch.testing.assert_close(float(t), float(rt), atol=atol, rtol=rtol)
    pre = pre_activations(x, W, b, pb)
    assert_values_close(v, pre[rows_of(rp.cpu()), c.cpu()])
    if threshold is None:
        # Row 5 keeps more than k: at cand_factor=1 only the dense fallback could find them.
        assert c.numel() == 24 * 4 and int(rp[6] - rp[5]) > 4


def test_batch_topk_gradients_match_autograd_through_the_reference():
    x, W, b, pb = _inputs(16, 48, 96, seed=7)
    Wd = torch.randn(96, 48) / 7
    target = torch.randn(16, 48)
    leaves = [t.clone().to(DEV).requires_grad_() for t in (x, W, b, pb)]
    rp, c, v, _ = batch_topk_encode(*leaves[:3], 4, leaves[3], backend="triton")
    ((csr_decode(rp, c, v, Wd.to(DEV), backend="triton") - target.to(DEV)) ** 2).sum().backward()
    refs = [t.clone().requires_grad_() for t in (x, W, b, pb)]
    rrp, rc, rv, _ = batch_topk_encode_reference(*refs[:3], 4, refs[3])
    ((csr_decode_reference(rrp, rc, rv, Wd) - target) ** 2).sum().backward()
    assert_grads_close(["x", "W_enc", "b_enc", "pre_bias"], leaves, refs)


def test_batch_topk_reference_backend_and_errors():
    x, W, b, pb = _inputs(8, 48, 96, seed=8)
    rp, c, v, t = batch_topk_encode(x, W, b, 4, pb, backend="reference")
    assert c.numel() == 32 and (v >= t).all()
    with pytest.raises(ValueError, match="larger than the number of latents"):
        batch_topk_encode(x, W, b, 97)
    with pytest.raises(ValueError, match="empty"):
        batch_topk_encode(x[:0], W, b, 4)


def test_reference_gradcheck_of_batch_topk_and_csr_decode_in_float64():
    x, W, b, pb = (t.double().requires_grad_() for t in _inputs(6, 10, 20, seed=9))
    Wd = (torch.randn(20, 10, dtype=torch.float64) / 4).requires_grad_()

    def f(x, W, b, pb, Wd):
        rp, c, v, _ = batch_topk_encode(x, W, b, 3, pb, backend="reference")
        return csr_decode(rp, c, v, Wd, backend="reference")

    assert torch.autograd.gradcheck(f, (x, W, b, pb, Wd))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_torch_compile_fullgraph_traces_through_the_custom_ops(backend):
    x, W, b, pb = _inputs(12, 48, 96, seed=10)
    Wd, bd = torch.randn(96, 48) / 7, torch.randn(48) * 0.1

    def step(x, W, b, pb, Wd, bd):
        v, i = topk_encode(x, W, b, 8, pb, backend=backend)
        return ((sparse_decode(v, i, Wd, bd, backend=backend) - x) ** 2).mean()

    assert_compiled_grads_match(step, (x, W, b, pb, Wd, bd), DEV)


def test_torch_compile_fullgraph_through_batch_topk_with_its_data_dependent_size():
    x, W, b, pb = _inputs(12, 48, 96, seed=11)
    Wd = torch.randn(96, 48) / 7

    def step(x, W, b, pb, Wd):
        rp, c, v, _ = batch_topk_encode(x, W, b, 4, pb, backend="triton")
        return ((csr_decode(rp, c, v, Wd, backend="triton") - x) ** 2).mean()

    assert_compiled_grads_match(step, (x, W, b, pb, Wd), DEV)


def test_batch_topk_auxk_comes_out_of_the_same_pass_with_gradients():
    x, W, b, pb = _inputs(14, 48, 96, seed=12)
    dead = torch.rand(96, generator=torch.Generator().manual_seed(3)) < 0.4
    Wd = torch.randn(96, 48) / 7
    leaves = [t.clone().to(DEV).requires_grad_() for t in (x, W, b, pb)]
    rp, c, v, t, av, ai = batch_topk_encode(*leaves[:3], 4, leaves[3], dead_mask=dead.to(DEV), k_aux=6,
                                            backend="triton")
    loss = (csr_decode(rp, c, v, Wd.to(DEV)) ** 2).sum() + (sparse_decode(av, ai, Wd.to(DEV)) ** 2).sum()
    loss.backward()
    refs = [t_.clone().requires_grad_() for t_ in (x, W, b, pb)]
    rrp, rc, rv, _ = batch_topk_encode_reference(*refs[:3], 4, refs[3])
    _, _, rav, rai = topk_encode_reference(*refs[:3], 1, refs[3], dead_mask=dead, k_aux=6)
    rloss = (csr_decode_reference(rrp, rc, rv, Wd) ** 2).sum() + (sparse_decode_reference(rav, rai, Wd) ** 2).sum()
    rloss.backward()
    assert_values_close(av, rav)
    assert dead[ai.cpu()[av.detach().cpu() > 0]].all()
    assert_grads_close(["x", "W_enc", "b_enc", "pre_bias"], leaves, refs)
