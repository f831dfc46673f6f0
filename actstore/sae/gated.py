"""``GatedSAE`` (Rajamanoharan et al. 2024, "Improving dictionary learning with gated SAEs").

The gate and magnitude paths share one GEMM: the magnitude weights are the gate weights
scaled per latent, ``W_mag = exp(r_mag) * W_enc``, so with ``G = (x - b_dec) @ W_enc.T``:
``pi_gate = G + b_gate``, ``pi_mag = exp(r_mag) * G + b_mag`` and
``f = H(pi_gate) * relu(pi_mag)`` (``actstore.ops.gated_encode``: CSR over the open gates).

Loss: ``mse + l1_coef * sum_i relu(pi_gate)_i ||W_dec,i|| + aux``, where ``aux`` is the
reconstruction from ``relu(pi_gate)`` through a frozen copy of the decoder (it trains the
gate, which the Heaviside does not pass gradients to). All three terms are sums over the
open gates only, so the sparse decode serves both reconstructions.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import csr_decode, gated_encode
from .base import SparseAutoencoder
from .latents import Latents


class GatedSAE(SparseAutoencoder):
    arch = "gated"

    def _init_arch_params(self, kw) -> None:
        m = self.cfg.m
        self.b_gate = nn.Parameter(torch.zeros(m, **kw))
        self.r_mag = nn.Parameter(torch.zeros(m, **kw))
        self.b_mag = nn.Parameter(torch.zeros(m, **kw))

    def _encode(self, x):
        rp, c, f, gate = gated_encode(x, self.W_enc, self.b_gate, self.r_mag, self.b_mag, self.b_dec)
        return Latents(rp, c, f, self.cfg.m), gate

    def encode(self, x: torch.Tensor, dense: bool = False):
        lat, _ = self._encode(x)
        return lat.dense() if dense else lat

    def loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> dict:
        lat, gate = self._encode(x)
        out = self._recon_terms(x, self.decode(lat))
        norms = self.W_dec.float().norm(dim=1)
        out["l1"] = (gate * norms[lat.cols]).sum() / max(1, lat.n)
        aux_hat = csr_decode(lat.row_ptr, lat.cols, gate, self.W_dec.detach(), self.b_dec.detach())
        out["aux_mse"] = (aux_hat - x.float()).pow(2).sum(1).mean()
        out["loss"] = out["mse"] + self.cfg.l1_coef * out["l1"] + out["aux_mse"]
        out["latents"] = lat
        return out
