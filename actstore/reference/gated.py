"""Pure PyTorch reference of the Gated SAE encode (the oracle of ``actstore.ops.gated_encode``).

``G = (x - pre_bias) @ W_enc.T``; ``pi_gate = G + b_gate``; ``pi_mag = exp(r_mag) G + b_mag``.
Returns dense ``[n, m]`` ``(f, relu(pi_gate))`` with ``f = H(pi_gate) relu(pi_mag)``;
autograd through it is the gradient oracle.
"""

from __future__ import annotations

import torch

from .._numerics import pre_activations


def gated_encode_reference(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_gate: torch.Tensor,
    r_mag: torch.Tensor,
    b_mag: torch.Tensor,
    pre_bias: torch.Tensor | None = None,
):
    G = pre_activations(x, W_enc, torch.zeros_like(b_gate), pre_bias)
    pi_gate = G + b_gate.to(G.dtype)
    pi_mag = r_mag.to(G.dtype).exp() * G + b_mag.to(G.dtype)
    return (pi_gate > 0).to(G.dtype) * torch.relu(pi_mag), torch.relu(pi_gate)
