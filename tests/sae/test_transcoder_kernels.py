"""The transcoder and Matryoshka paths on the Triton kernels (the interpreter without a GPU)
against the references: the same loss and the same gradients for every parameter. These
families add no kernel; what is new is how they call the fused ops (no ``pre_bias``, a
decode into a ``d_out`` space, a skip GEMM, prefix decodes over masked CSR entries)."""

import pytest
import torch

from actstore.sae.config import SAEConfig
from actstore.sae.registry import build

D, D_OUT, M = 16, 24, 64


def _grads(sae, x, y, dead):
    sae.zero_grad(set_to_none=True)
    out = sae.loss(x, dead_mask=dead if sae.uses_auxk else None, **({} if y is None else {"target": y}))
    out["loss"].backward()
    return out["loss"].detach(), {n: p.grad.clone() for n, p in sae.named_parameters()}


@pytest.mark.parametrize(
    "arch, act",
    [("transcoder", "topk"), ("skip_transcoder", "batchtopk"), ("transcoder", "jumprelu"),
     ("matryoshka_batchtopk", None)],
)  # fmt: skip
def test_triton_path_gives_the_reference_loss_and_gradients(arch, act, monkeypatch):
    g = torch.Generator().manual_seed(3)
    if arch == "matryoshka_batchtopk":
        cfg, y = SAEConfig(arch, D, M, k=4, widths=[8, 24]), None
    else:
        cfg = SAEConfig(arch, D, M, k=None if act == "jumprelu" else 4, d_out=D_OUT, activation=act)
        y = torch.randn(48, D_OUT, generator=g)
    sae = build(cfg, seed=1).train()
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        if act == "jumprelu":
            sae.log_threshold.fill_(-2.0)
    x = torch.randn(48, D, generator=g)
    dead = torch.zeros(M, dtype=torch.bool)
    dead[::5] = True
    state = {k: v.clone() for k, v in sae.state_dict().items()}
    monkeypatch.setenv("ACTSTORE_BACKEND", "reference")
    want_loss, want = _grads(sae, x, y, dead)
    sae.load_state_dict(state)  # BatchTopK's running threshold moved: start from the same one
    monkeypatch.setenv("ACTSTORE_BACKEND", "triton")
    got_loss, got = _grads(sae, x, y, dead)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-4, atol=1e-5)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-4, msg=name)
    assert any(float(w.abs().sum()) > 0 for w in want.values())
