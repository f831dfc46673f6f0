"""``JumpReLUSAE`` (Rajamanoharan et al. 2024): ``f = pre * H(pre - theta)`` with a learned
per-latent threshold ``theta = exp(log_threshold)``.

Loss: ``mse + l0_coef * L0``, where the threshold learns through the straight-through
pseudo-gradients of ``actstore.reference.jumprelu`` (rectangle kernel of width
``bandwidth``). The encode is dense (``[n, m]`` pre-activations: a fused kernel is owed);
the decode is sparse below ``DENSE_DECODE_ABOVE`` density.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..reference.jumprelu import jumprelu_reference, step_reference
from ..reference.topk_sae import pre_activations
from .base import SparseAutoencoder
from .latents import Latents


class JumpReLUSAE(SparseAutoencoder):
    arch = "jumprelu"

    def _init_arch_params(self, kw) -> None:
        super()._init_arch_params(kw)
        self.log_threshold = nn.Parameter(torch.full((self.cfg.m,), math.log(self.cfg.init_threshold),
                                                     device=kw["device"], dtype=torch.float32))

    def _pre(self, x):
        return pre_activations(x, self.W_enc, self.b_enc, self.b_dec)

    def encode(self, x: torch.Tensor, dense: bool = False):
        f = jumprelu_reference(self._pre(x), self.log_threshold.exp(), self.cfg.bandwidth)
        return f if dense else Latents.from_dense(f)

    def loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> dict:
        pre = self._pre(x)
        theta = self.log_threshold.exp()
        f = jumprelu_reference(pre, theta, self.cfg.bandwidth)
        x_hat, lat = self._decode_dense_or_sparse(f)
        out = self._recon_terms(x, x_hat)
        out["l0_penalty"] = step_reference(pre, theta, self.cfg.bandwidth).sum(1).mean()
        out["loss"] = out["mse"] + self.cfg.l0_coef * out["l0_penalty"]
        out["latents"] = lat
        return out
