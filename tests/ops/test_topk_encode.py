"""topk_encode against its reference: the fused encoder+top-k kernel (under TRITON_INTERPRET=1
without a GPU) for values, ties, strides and NaN rows, every gradient (sorted and atomic
accumulation) against autograd through the reference, the AuxK top-k from the same pass,
gradcheck of the reference in float64, and torch.compile through the custom ops."""

from __future__ import annotations

import pytest
import torch

from actstore._numerics import pre_activations, topk_indices
from actstore.ops import sparse_decode, topk_encode
from actstore.reference.topk_sae import sparse_decode_reference, topk_encode_reference
from helpers.compile_check import assert_compiled_grads_match
from helpers.sae_inputs import encoder_inputs
from helpers.tolerances import GRAD_TOL, assert_grads_close, assert_values_close

pytestmark = pytest.mark.gpu  # runs on the GPU when one is present


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
@pytest.mark.parametrize("d,m,k", [(48, 96, 1), (64, 96, 8), (100, 96, 32), (48, 512, 32), (100, 512, 8), (64, 512, 1)])
def test_fused_topk_encode_matches_reference(dtype, d, m, k, device):
    n = 37
    x, W, b, pb = encoder_inputs(n, d, m, seed=d * m + k, dtype=dtype)
    v, i = topk_encode(x.to(device), W.to(device), b.to(device), k, pb.to(device), backend="triton")
    _check_topk(v, i, x, W, b, pb, k, dtype)


def test_k_equal_to_m_n_1_and_no_pre_bias(device):
    x, W, b, _ = encoder_inputs(1, 48, 96, seed=1)
    v, i = topk_encode(x.to(device), W.to(device), b.to(device), 96, backend="triton")
    _check_topk(v, i, x, W, b, None, 96, torch.float32)
    assert sorted(i[0].tolist()) == list(range(96))


def test_ties_prefer_the_lower_latent(device):
    x = torch.ones(2, 16)
    W = torch.zeros(64, 16)
    W[[3, 9, 40, 41], :] = 1.0  # four equal pre-activations of 16
    v, i = topk_encode(x.to(device), W.to(device), torch.zeros(64, device=device), 2, backend="triton")
    assert i.cpu().tolist() == [[3, 9], [3, 9]] and torch.equal(v.cpu(), torch.full((2, 2), 16.0))


def test_non_contiguous_inputs(device):
    x, W, b, pb = encoder_inputs(20, 96, 96, seed=3)
    xs = x[:, ::2]  # [20, 48], row stride 96, column stride 2
    Wt = W[:, :48].t().contiguous().t()  # [96, 48] column-major
    v, i = topk_encode(xs.to(device), Wt.to(device), b.to(device), 8, pb[:48].to(device), backend="triton")
    _check_topk(v, i, xs, Wt, b, pb[:48], 8, torch.float32)


def test_nan_rows_come_out_nan_like_the_reference(device):
    x, W, b, pb = encoder_inputs(4, 48, 96, seed=4)
    x[1, 5] = float("nan")
    v, i = topk_encode(x.to(device), W.to(device), b.to(device), 8, pb.to(device), backend="triton")
    rv, _ = topk_encode_reference(x, W, b, 8, pb)
    assert torch.isnan(v[1].cpu()).all() and torch.isnan(rv[1]).all()
    assert_values_close(v[[0, 2, 3]], rv[[0, 2, 3]])


@pytest.mark.parametrize("k,m", [(0, 96), (97, 96), (-1, 96)])
def test_bad_k_is_one_line(k, m):
    x, W, b, _ = encoder_inputs(2, 48, m, seed=5)
    with pytest.raises(ValueError) as e:
        topk_encode(x, W, b, k)
    assert "\n" not in str(e.value) and (
        "larger than the number of latents" in str(e.value) or "positive" in str(e.value)
    )


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_every_gradient_matches_autograd_through_the_reference(backend, device):
    x, W, b, pb = encoder_inputs(19, 48, 96, seed=6)
    Wd = torch.randn(96, 48) / 7
    bd = torch.randn(48)
    target = torch.randn(19, 48)

    def loss(enc, dec):
        v, i = enc
        return ((dec(v, i) - target) ** 2).sum()

    leaves = [t.clone().to(device).requires_grad_() for t in (x, W, b, pb, Wd, bd)]
    lx, lW, lb, lpb, lWd, lbd = leaves
    loss(topk_encode(lx, lW, lb, 8, lpb, backend=backend), lambda v, i: sparse_decode(v, i, lWd, lbd)).backward()
    refs = [t.clone().requires_grad_() for t in (x, W, b, pb, Wd, bd)]
    rx, rW, rb, rpb, rWd, rbd = refs
    loss(topk_encode_reference(rx, rW, rb, 8, rpb), lambda v, i: sparse_decode_reference(v, i, rWd, rbd)).backward()
    assert_grads_close(["x", "W_enc", "b_enc", "pre_bias", "W_dec", "b_dec"], leaves, refs)


def test_reference_gradcheck_in_float64():
    x, W, b, pb = (t.double().requires_grad_() for t in encoder_inputs(5, 12, 24, seed=7))
    Wd = (torch.randn(24, 12, dtype=torch.float64) / 4).requires_grad_()

    def f(x, W, b, pb, Wd):
        v, i = topk_encode_reference(x, W, b, 4, pb)
        return sparse_decode_reference(v, i, Wd)

    assert torch.autograd.gradcheck(f, (x, W, b, pb, Wd))


@pytest.mark.parametrize("accumulate", ["sorted", "atomic"])
def test_sorted_accumulation_is_bitwise_repeatable_and_agrees_with_atomic(accumulate, device):
    x, W, b, pb = encoder_inputs(31, 48, 96, seed=3)
    grads = []
    for _ in range(2):
        lW = W.clone().to(device).requires_grad_()
        v, i = topk_encode(x.to(device), lW, b.to(device), 8, pb.to(device), backend="triton", accumulate=accumulate)
        (v * torch.arange(8, device=device)).sum().backward()
        grads.append(lW.grad.cpu())
    if accumulate == "sorted":
        assert torch.equal(grads[0], grads[1])
    lW = W.clone().requires_grad_()
    rv, _ = topk_encode_reference(x, lW, b, 8, pb)
    (rv * torch.arange(8)).sum().backward()
    atol, rtol = GRAD_TOL[torch.float32]
    torch.testing.assert_close(grads[0], lW.grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize("m,k_aux", [(96, 8), (512, 32)])
def test_auxk_comes_out_of_the_same_pass(m, k_aux, device):
    x, W, b, pb = encoder_inputs(21, 64, m, seed=m + k_aux)
    g = torch.Generator().manual_seed(4)
    dead = torch.rand(m, generator=g) < 0.3
    v, i, av, ai = topk_encode(
        x.to(device),
        W.to(device),
        b.to(device),
        8,
        pb.to(device),
        dead_mask=dead.to(device),
        k_aux=k_aux,
        backend="triton",
    )
    rv, ri, rav, rai = topk_encode_reference(x, W, b, 8, pb, dead_mask=dead, k_aux=k_aux)
    assert_values_close(v, rv)
    assert_values_close(av, rav)
    assert dead[ai.cpu()[av.cpu() > 0]].all()  # aux latents are dead ones
    pre = pre_activations(x, W, b, pb)
    assert_values_close(torch.relu(pre.gather(1, ai.cpu())), av.cpu())
    same = sum(set(a[p > 0].tolist()) == set(c[q > 0].tolist()) for a, p, c, q in zip(ai.cpu(), av.cpu(), rai, rav))
    assert same >= 20


def test_auxk_rows_with_fewer_dead_latents_than_k_aux_and_gradients(device):
    x, W, b, pb = encoder_inputs(9, 48, 96, seed=5)
    dead = torch.zeros(96, dtype=torch.bool)
    dead[[4, 50, 77]] = True  # three dead latents, k_aux = 6
    Wd = torch.randn(96, 48) / 7
    leaves = [t.clone().to(device).requires_grad_() for t in (x, W, b, pb)]
    v, i, av, ai = topk_encode(*leaves[:3], 8, leaves[3], dead_mask=dead.to(device), k_aux=6, backend="triton")
    assert (ai.cpu() < 96).all() and (av[:, 3:] == 0).all()
    loss = (sparse_decode(v, i, Wd.to(device)) ** 2).sum() + (sparse_decode(av, ai, Wd.to(device)) ** 2).sum()
    loss.backward()
    refs = [t.clone().requires_grad_() for t in (x, W, b, pb)]
    rv, ri, rav, rai = topk_encode_reference(*refs[:3], 8, refs[3], dead_mask=dead, k_aux=6)
    rloss = (sparse_decode_reference(rv, ri, Wd) ** 2).sum() + (sparse_decode_reference(rav, rai, Wd) ** 2).sum()
    rloss.backward()
    assert_grads_close(["x", "W_enc", "b_enc", "pre_bias"], leaves, refs)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_torch_compile_fullgraph_traces_through_the_custom_ops(backend, device):
    x, W, b, pb = encoder_inputs(12, 48, 96, seed=10)
    Wd, bd = torch.randn(96, 48) / 7, torch.randn(48) * 0.1

    def step(x, W, b, pb, Wd, bd):
        v, i = topk_encode(x, W, b, 8, pb, backend=backend)
        return ((sparse_decode(v, i, Wd, bd, backend=backend) - x) ** 2).mean()

    assert_compiled_grads_match(step, (x, W, b, pb, Wd, bd), device)


@pytest.mark.parametrize(
    "k,k_aux,relu,d", [(300, 0, True, 64), (300, 0, False, 64), (8, 260, True, 64), (8, 6, True, 40), (8, 0, False, 40)]
)
def test_sets_past_fused_max_k_go_to_the_split_kernel(k, k_aux, relu, d, device, monkeypatch):
    """k or k_aux above FUSED_MAX_K (256: the fused kernel's running sets would spill out of
    registers), or a width d that is no multiple of 16 (unvectorised loads spill), never
    launches the fused kernel: the launcher hands the call to the split kernel, with the
    same results (ties by lower latent, the AuxK set, relu=False)."""
    from actstore.kernels import topk_encode as fused
    from actstore.kernels import topk_encode_split as split

    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("the fused kernel was launched with a set past FUSED_MAX_K")

    calls = []
    real = split.topk_encode_split_fwd
    monkeypatch.setattr(fused, "_topk_encode_fwd_kernel", NoLaunch())
    monkeypatch.setattr(split, "topk_encode_split_fwd", lambda *a, **kw: calls.append(a[3]) or real(*a, **kw))
    m = 600
    assert fused._topk_encode_config(d, k, k_aux, torch.float32) is None
    g = torch.Generator().manual_seed(k + k_aux)
    # Small integers: every sum is exact in float32 on both paths, and ties abound.
    x, W, b, pb = (torch.randint(-3, 4, s, generator=g).float() for s in ((6, d), (m, d), (m,), (d,)))
    dead = torch.rand(m, generator=torch.Generator().manual_seed(7)) < 0.6 if k_aux else None
    args = [t.to(device) for t in (x, W, b)]
    v, i, av, ai = fused.topk_encode_fwd(
        *args, k, pb.to(device), None if dead is None else dead.to(device), k_aux, relu=relu
    )
    assert calls == [k]
    # Exactly the reference's order: values descending, equal values by lower latent.
    pre = pre_activations(x, W, b, pb)
    ref_i = topk_indices(pre, k)
    ref_v = pre.gather(1, ref_i)
    assert torch.equal(i.cpu(), ref_i)
    assert torch.equal(v.cpu(), torch.relu(ref_v) if relu else ref_v)
    if k_aux:
        rv, ri, rav, rai = topk_encode_reference(x, W, b, k, pb, dead_mask=dead, k_aux=k_aux)
        assert torch.equal(av.cpu(), rav) and av.shape == (6, k_aux)
        assert torch.equal(ai.cpu()[av.cpu() > 0], rai[rav > 0])
