"""The threshold-style encoders against dense references, under TRITON_INTERPRET=1 without
a GPU: JumpReLU (straight-through threshold and L0 gradients) and Gated (one GEMM for gate
and magnitude), each in CSR form from the fused encoder kernel with its exact dense
fallback, every gradient against autograd through the reference, and torch.compile."""

from __future__ import annotations

import pytest
import torch

from actstore._numerics import pre_activations
from actstore.ops import csr_decode, gated_encode, jumprelu_encode
from actstore.reference.gated import gated_encode_reference
from actstore.reference.jumprelu import jumprelu_reference, step_reference
from actstore.sae import Latents
from helpers.compile_check import assert_compiled_grads_match
from helpers.device import DEVICE as DEV
from helpers.tolerances import assert_grads_close, assert_values_close

pytestmark = pytest.mark.gpu  # runs on the GPU when one is present


def _inputs(n, d, m, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(dtype)
    W = (torch.randn(m, d, generator=g) / d ** 0.5).to(dtype)
    return (x, W, torch.randn(m, generator=g) * 0.1, torch.randn(d, generator=g) * 0.1,
            torch.randn(m, d, generator=g) / 7, torch.randn(n, d, generator=g), g)


def _dense(rp, c, v, m):
    return Latents(rp.cpu(), c.cpu(), v.detach().cpu(), m).dense()


@pytest.mark.parametrize("backend,cand_k", [("triton", 2), ("triton", 64), ("reference", 64)])
@pytest.mark.parametrize("d,m", [(48, 96), (100, 512)])
def test_jumprelu_encode_values_and_every_gradient(backend, cand_k, d, m):
    x, W, b, pb, Wd, target, g = _inputs(13, d, m, seed=d + m)
    theta = torch.rand(m, generator=g) * 0.4 + 0.05
    eps = 0.05  # wide enough that the band holds entries on both sides of theta

    def loss_ops(x, W, b, pb, theta, Wd):
        rp, c, v, mg, l0 = jumprelu_encode(x, W, b, theta, pb, eps=eps, cand_k=cand_k, backend=backend)
        return ((csr_decode(rp, c, v, Wd, backend=backend) - target.to(x.device)) ** 2).sum() + 3 * l0, (rp, c, v, mg)

    def loss_ref(x, W, b, pb, theta, Wd):
        pre = pre_activations(x, W, b, pb)
        f = jumprelu_reference(pre, theta, eps)
        return ((f @ Wd - target) ** 2).sum() + 3 * step_reference(pre, theta, eps).sum(1).mean(), f

    got = [t.clone().to(DEV).requires_grad_() for t in (x, W, b, pb, theta, Wd)]
    lo, (rp, c, v, mg) = loss_ops(*got)
    lo.backward()
    ref = [t.clone().requires_grad_() for t in (x, W, b, pb, theta, Wd)]
    lr, f = loss_ref(*ref)
    lr.backward()
    assert_values_close(_dense(rp, c, v, m), f)
    band = (mg.cpu().abs() < eps / 2).sum()
    assert band > 0 and (v.cpu() == 0).sum() > 0  # the test exercises the band below theta
    assert_grads_close(["x", "W_enc", "b_enc", "pre_bias", "theta", "W_dec"], got, ref)


@pytest.mark.parametrize("backend,cand_k", [("triton", 3), ("triton", 96), ("reference", 64)])
def test_gated_encode_values_and_every_gradient(backend, cand_k):
    m = 96
    x, W, _, pb, Wd, target, g = _inputs(11, 48, m, seed=21)
    b_gate = torch.randn(m, generator=g) * 0.3 - 0.3
    r_mag = torch.randn(m, generator=g) * 0.2
    b_mag = torch.randn(m, generator=g) * 0.2
    norms = torch.rand(m, generator=g) + 0.5

    def terms(f, gate, Wd):
        return ((f @ Wd - target) ** 2).sum() + (gate * norms).sum() + ((gate @ Wd - target) ** 2).sum()

    got = [t.clone().to(DEV).requires_grad_() for t in (x, W, b_gate, r_mag, b_mag, pb, Wd)]
    rp, c, f, gate = gated_encode(*got[:5], got[5], cand_k=cand_k, backend=backend)
    lat = Latents(rp, c, f, m)
    lo = (((csr_decode(rp, c, f, got[6], backend=backend) - target.to(DEV)) ** 2).sum()
          + (gate * norms.to(DEV)[c]).sum()
          + ((csr_decode(rp, c, gate, got[6], backend=backend) - target.to(DEV)) ** 2).sum())
    lo.backward()
    ref = [t.clone().requires_grad_() for t in (x, W, b_gate, r_mag, b_mag, pb, Wd)]
    rf, rgate = gated_encode_reference(*ref[:6])
    terms(rf, rgate, ref[6]).backward()
    assert_values_close(lat.dense(), rf)
    assert_values_close(_dense(rp, c, gate, m), rgate)
    assert (f.detach().cpu() == 0).sum() > 0 and (f.detach().cpu() > 0).sum() > 0  # open gates, both signs of pi_mag
    assert_grads_close(["x", "W_enc", "b_gate", "r_mag", "b_mag", "pre_bias", "W_dec"], got, ref)


def test_threshold_ops_reject_bad_input_in_one_line():
    x, W, b, pb, *_ = _inputs(4, 48, 96, seed=1)
    with pytest.raises(ValueError, match="theta must be") as e:
        jumprelu_encode(x, W, b, torch.ones(95), pb)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="eps must be positive"):
        jumprelu_encode(x, W, b, torch.ones(96), pb, eps=0.0)
    with pytest.raises(ValueError, match="must be \\[m=96\\]"):
        gated_encode(x, W, b, b[:5], b, pb)


def test_torch_compile_fullgraph_through_jumprelu_and_gated():
    x, W, b, pb, Wd, target, g = _inputs(9, 48, 96, seed=2)
    theta = torch.rand(96, generator=g) * 0.3

    def step(x, W, b, theta, Wd):
        rp, c, v, _, l0 = jumprelu_encode(x, W, b, theta, eps=0.05, backend="triton")
        rp2, c2, f, gate = gated_encode(x, W, b, b, b, backend="triton")
        return (((csr_decode(rp, c, v, Wd) - x) ** 2).mean() + l0
                + ((csr_decode(rp2, c2, f, Wd) - x) ** 2).mean() + gate.sum())

    assert_compiled_grads_match(step, (x, W, b, theta, Wd), DEV)
