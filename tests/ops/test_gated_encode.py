"""gated_encode against a dense reference, under TRITON_INTERPRET=1 without a GPU: one GEMM
for gate and magnitude, in CSR form from the fused encoder kernel with its exact dense
fallback, every gradient against autograd through the reference; and torch.compile through
both threshold encoders."""

from __future__ import annotations

import pytest
import torch

from actstore.ops import csr_decode, gated_encode, jumprelu_encode
from actstore.reference.gated import gated_encode_reference
from actstore.sae import Latents
from helpers.compile_check import assert_compiled_grads_match
from helpers.sae_inputs import csr_dense, threshold_inputs
from helpers.tolerances import assert_grads_close, assert_values_close

pytestmark = pytest.mark.gpu  # runs on the GPU when one is present


@pytest.mark.parametrize("backend,cand_k", [("triton", 3), ("triton", 96), ("reference", 64)])
def test_gated_encode_values_and_every_gradient(backend, cand_k, device):
    m = 96
    x, W, _, pb, Wd, target, g = threshold_inputs(11, 48, m, seed=21)
    b_gate = torch.randn(m, generator=g) * 0.3 - 0.3
    r_mag = torch.randn(m, generator=g) * 0.2
    b_mag = torch.randn(m, generator=g) * 0.2
    norms = torch.rand(m, generator=g) + 0.5

    def terms(f, gate, Wd):
        return ((f @ Wd - target) ** 2).sum() + (gate * norms).sum() + ((gate @ Wd - target) ** 2).sum()

    got = [t.clone().to(device).requires_grad_() for t in (x, W, b_gate, r_mag, b_mag, pb, Wd)]
    rp, c, f, gate = gated_encode(*got[:5], got[5], cand_k=cand_k, backend=backend)
    lat = Latents(rp, c, f, m)
    lo = (
        ((csr_decode(rp, c, f, got[6], backend=backend) - target.to(device)) ** 2).sum()
        + (gate * norms.to(device)[c]).sum()
        + ((csr_decode(rp, c, gate, got[6], backend=backend) - target.to(device)) ** 2).sum()
    )
    lo.backward()
    ref = [t.clone().requires_grad_() for t in (x, W, b_gate, r_mag, b_mag, pb, Wd)]
    rf, rgate = gated_encode_reference(*ref[:6])
    terms(rf, rgate, ref[6]).backward()
    assert_values_close(lat.dense(), rf)
    assert_values_close(csr_dense(rp, c, gate, m), rgate)
    assert (f.detach().cpu() == 0).sum() > 0 and (f.detach().cpu() > 0).sum() > 0  # open gates, both signs of pi_mag
    assert_grads_close(["x", "W_enc", "b_gate", "r_mag", "b_mag", "pre_bias", "W_dec"], got, ref)


@pytest.mark.slow  # over ~15 s on 2 busy cores (subprocesses or compiles): scheduled first
def test_torch_compile_fullgraph_through_jumprelu_and_gated(device):
    x, W, b, pb, Wd, target, g = threshold_inputs(9, 48, 96, seed=2)
    theta = torch.rand(96, generator=g) * 0.3

    def step(x, W, b, theta, Wd):
        rp, c, v, _, l0 = jumprelu_encode(x, W, b, theta, eps=0.05, backend="triton")
        rp2, c2, f, gate = gated_encode(x, W, b, b, b, backend="triton")
        return (
            ((csr_decode(rp, c, v, Wd) - x) ** 2).mean()
            + l0
            + ((csr_decode(rp2, c2, f, Wd) - x) ** 2).mean()
            + gate.sum()
        )

    assert_compiled_grads_match(step, (x, W, b, theta, Wd), device)
