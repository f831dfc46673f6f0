"""``JumpReLUSAE`` (Rajamanoharan et al. 2024): ``f = pre * H(pre - theta)`` with a learned
per-latent threshold ``theta = exp(log_threshold)``.

Encode: ``actstore.ops.jumprelu_encode`` (one encoder GEMM, CSR output holding the kept
latents and, with value 0, the ones just below their threshold, whose gradients train
theta). Loss: ``mse + l0_coef * L0``, where the threshold learns through the
straight-through pseudo-gradients (rectangle kernel of width ``bandwidth``); the dense
oracle is ``actstore.reference.jumprelu``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import SAEError
from ..ops import jumprelu_encode
from .base import SparseAutoencoder
from .latents import Latents


class JumpReLUSAE(SparseAutoencoder):
    arch = act = "jumprelu"
    unit_norm_decoder = True
    saelens_arch = saelens_reads = "jumprelu"

    def _init_arch_params(self, kw) -> None:
        super()._init_arch_params(kw)
        self.log_threshold = nn.Parameter(
            torch.full((self.cfg.m,), math.log(self.cfg.init_threshold), device=kw["device"], dtype=torch.float32)
        )

    def saelens_state(self) -> dict[str, torch.Tensor]:
        theta = self.log_threshold.detach().exp().to(self.W_enc.dtype).contiguous()
        return {**super().saelens_state(), "threshold": theta}

    def state_from_saelens(self, st: dict, source, shift: torch.Tensor | None = None) -> dict:
        theta = st["threshold"].float()
        if (theta <= 0).any():
            raise SAEError(f"{source}: JumpReLU thresholds must be positive to import (log-parameterized here)")
        return {**super().state_from_saelens(st, source, shift), "log_threshold": theta.log()}

    def _quantile_bias(self) -> torch.Tensor:
        return self.b_enc

    def _set_quantile(self, q: torch.Tensor) -> None:
        # theta must stay positive (log-parameterized): a latent whose quantile is <= 0 starts
        # at the configured init_threshold instead, and fires on fewer rows.
        theta = torch.where(q > 0, q, torch.full_like(q, self.cfg.init_threshold))
        self.log_threshold.copy_(theta.float().log())

    def _encode(self, x):
        rp, c, v, _, l0 = jumprelu_encode(
            x,
            self.W_enc,
            self.b_enc,
            self.log_threshold.exp(),
            self.pre_bias,
            eps=self.cfg.bandwidth,
            cand_k=self.cand_k,
        )
        self._note_candidates(rp)
        return Latents(rp, c, v, self.cfg.m), l0

    def encode(self, x: torch.Tensor, dense: bool = False):
        lat, _ = self._encode(x)
        return lat.dense() if dense else lat

    def loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None, target: torch.Tensor | None = None) -> dict:
        y = self.target_of(x, target)
        lat, l0 = self._encode(x)
        out = self._recon_terms(y, self.output(x, lat))
        out["l0_penalty"] = l0
        out["loss"] = out["mse"] + self.cfg.l0_coef * l0
        out["latents"] = lat
        return out
