"""jumprelu_encode against a dense reference, under TRITON_INTERPRET=1 without a GPU:
straight-through threshold and L0 gradients, in CSR form from the fused encoder kernel with
its exact dense fallback, every gradient against autograd through the reference; and the
one-line errors of the threshold encoders."""

from __future__ import annotations

import pytest
import torch

from actstore._numerics import pre_activations
from actstore.ops import csr_decode, gated_encode, jumprelu_encode
from actstore.reference.jumprelu import jumprelu_reference, step_reference
from helpers.sae_inputs import csr_dense, threshold_inputs
from helpers.tolerances import assert_grads_close, assert_values_close

pytestmark = pytest.mark.gpu  # runs on the GPU when one is present


@pytest.mark.parametrize("backend,cand_k", [("triton", 2), ("triton", 64), ("reference", 64)])
@pytest.mark.parametrize("d,m", [(48, 96), pytest.param(100, 512, marks=pytest.mark.slow)])  # 100x512: ~9 s
def test_jumprelu_encode_values_and_every_gradient(backend, cand_k, d, m, device):
    x, W, b, pb, Wd, target, g = threshold_inputs(13, d, m, seed=d + m)
    theta = torch.rand(m, generator=g) * 0.4 + 0.05
    eps = 0.05  # wide enough that the band holds entries on both sides of theta

    def loss_ops(x, W, b, pb, theta, Wd):
        rp, c, v, mg, l0 = jumprelu_encode(x, W, b, theta, pb, eps=eps, cand_k=cand_k, backend=backend)
        return ((csr_decode(rp, c, v, Wd, backend=backend) - target.to(x.device)) ** 2).sum() + 3 * l0, (rp, c, v, mg)

    def loss_ref(x, W, b, pb, theta, Wd):
        pre = pre_activations(x, W, b, pb)
        f = jumprelu_reference(pre, theta, eps)
        return ((f @ Wd - target) ** 2).sum() + 3 * step_reference(pre, theta, eps).sum(1).mean(), f

    got = [t.clone().to(device).requires_grad_() for t in (x, W, b, pb, theta, Wd)]
    lo, (rp, c, v, mg) = loss_ops(*got)
    lo.backward()
    ref = [t.clone().requires_grad_() for t in (x, W, b, pb, theta, Wd)]
    lr, f = loss_ref(*ref)
    lr.backward()
    assert_values_close(csr_dense(rp, c, v, m), f)
    band = (mg.cpu().abs() < eps / 2).sum()
    assert band > 0 and (v.cpu() == 0).sum() > 0  # the test exercises the band below theta
    assert_grads_close(["x", "W_enc", "b_enc", "pre_bias", "theta", "W_dec"], got, ref)


def test_threshold_ops_reject_bad_input_in_one_line():
    x, W, b, pb, *_ = threshold_inputs(4, 48, 96, seed=1)
    with pytest.raises(ValueError, match="theta must be") as e:
        jumprelu_encode(x, W, b, torch.ones(95), pb)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="eps must be positive"):
        jumprelu_encode(x, W, b, torch.ones(96), pb, eps=0.0)
    with pytest.raises(ValueError, match="must be \\[m=96\\]"):
        gated_encode(x, W, b, b[:5], b, pb)
