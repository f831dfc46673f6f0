"""The chunked-GEMM candidate of topk_encode against the reference: values and index sets,
several slices (odd sizes), the AuxK pair, and gradients through the op when forced with
ACTSTORE_TOPK_ENCODE=chunked."""

from __future__ import annotations

import pytest
import torch

from actstore.ops import topk_encode
from actstore.ops.topk_encode_chunked import topk_encode_chunked
from actstore.reference.topk_sae import topk_encode_reference
from helpers.sae_inputs import encoder_inputs
from helpers.tolerances import assert_grads_close


@pytest.mark.parametrize("m,k,slice_m", [(96, 8, 40), (512, 32, 100), (97, 1, 97), (50, 50, 7)])
def test_chunked_equals_the_reference(m, k, slice_m):
    x, W, b, pb = encoder_inputs(29, 48, m, seed=m + k)
    dead = torch.zeros(m, dtype=torch.bool)
    dead[::3] = True
    k_aux = min(5, int(dead.sum()))
    got = topk_encode_chunked(x, W, b, k, pb, dead, k_aux, slice_m=slice_m)
    want = topk_encode_reference(x, W, b, k, pb, dead, k_aux)
    for gv, gi, wv, wi in ((got[0], got[1], want[0], want[1]), (got[2], got[3], want[2], want[3])):
        torch.testing.assert_close(gv, wv, atol=1e-6, rtol=1e-6)
        assert [set(r.tolist()) for r in gi] == [set(r.tolist()) for r in wi]  # no near-ties at these seeds
    v, i, av, ai = topk_encode_chunked(x, W, b, k, pb, slice_m=slice_m)
    assert av.shape == (29, 0) and ai.shape == (29, 0) and torch.equal(v, got[0])


def test_forced_chunked_through_the_op_has_the_reference_gradients(monkeypatch):
    x, W, b, pb = encoder_inputs(21, 40, 300, seed=4)
    leaves = [t.clone().requires_grad_() for t in (x, W, b, pb)]
    monkeypatch.setenv("ACTSTORE_TOPK_ENCODE", "chunked")
    v, i = topk_encode(*leaves[:3], 12, leaves[3])
    (v * torch.arange(12.0)).sum().backward()
    ref = [t.clone().requires_grad_() for t in (x, W, b, pb)]
    rv, ri = topk_encode_reference(*ref[:3], 12, ref[3])
    (rv * torch.arange(12.0)).sum().backward()
    assert torch.equal(i, ri)
    assert_grads_close(["x", "W_enc", "b_enc", "pre_bias"], leaves, ref)
    monkeypatch.setenv("ACTSTORE_TOPK_ENCODE", "fastest")
    with pytest.raises(ValueError, match="ACTSTORE_TOPK_ENCODE='fastest' is not a candidate"):
        topk_encode(x, W, b, 12, pb)
