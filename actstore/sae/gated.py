"""``GatedSAE`` (Rajamanoharan et al. 2024, "Improving dictionary learning with gated SAEs").

The gate and magnitude paths share one GEMM: the magnitude weights are the gate weights
scaled per latent, ``W_mag = exp(r_mag) * W_enc``, so with ``G = (x - b_dec) @ W_enc.T``:
``pi_gate = G + b_gate``, ``pi_mag = exp(r_mag) * G + b_mag`` and
``f = H(pi_gate) * relu(pi_mag)``.

Loss: ``mse + l1_coef * sum_i relu(pi_gate)_i ||W_dec,i|| + aux``, where ``aux`` is the
reconstruction from ``relu(pi_gate)`` through a frozen copy of the decoder (it trains the
gate, which the Heaviside does not pass gradients to). The encode is dense (a fused
kernel is owed); the decode is sparse below ``DENSE_DECODE_ABOVE`` density.
"""

from __future__ import annotations

import torch
from torch import nn

from ..reference.topk_sae import pre_activations
from .base import SparseAutoencoder
from .latents import Latents


class GatedSAE(SparseAutoencoder):
    arch = "gated"

    def _init_arch_params(self, kw) -> None:
        m = self.cfg.m
        self.b_gate = nn.Parameter(torch.zeros(m, **kw))
        self.r_mag = nn.Parameter(torch.zeros(m, **kw))
        self.b_mag = nn.Parameter(torch.zeros(m, **kw))

    def _paths(self, x):
        G = pre_activations(x, self.W_enc, torch.zeros_like(self.b_gate), self.b_dec)  # the one GEMM
        pi_gate = G + self.b_gate.float()
        pi_mag = self.r_mag.float().exp() * G + self.b_mag.float()
        return pi_gate, pi_mag

    def encode(self, x: torch.Tensor, dense: bool = False):
        pi_gate, pi_mag = self._paths(x)
        f = (pi_gate > 0).to(pi_mag.dtype) * torch.relu(pi_mag)
        return f if dense else Latents.from_dense(f)

    def loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> dict:
        pi_gate, pi_mag = self._paths(x)
        f = (pi_gate > 0).to(pi_mag.dtype) * torch.relu(pi_mag)
        x_hat, lat = self._decode_dense_or_sparse(f)
        out = self._recon_terms(x, x_hat)
        gate = torch.relu(pi_gate)
        norms = self.W_dec.float().norm(dim=1)
        out["l1"] = (gate * norms).sum(1).mean()
        aux_hat = gate @ self.W_dec.detach().float() + self.b_dec.detach().float()
        out["aux_mse"] = (aux_hat - x.float()).pow(2).sum(1).mean()
        out["loss"] = out["mse"] + self.cfg.l1_coef * out["l1"] + out["aux_mse"]
        out["latents"] = lat
        return out
