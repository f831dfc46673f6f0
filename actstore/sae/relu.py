"""``ReLUSAE``: the standard SAE, ``f = relu((x - b_dec) @ W_enc.T + b_enc)``, trained with
``mse + l1_coef * sum_i f_i ||W_dec,i||`` (the L1 weighted by decoder norms, Anthropic's
April 2024 update, so the decoder is not renormalized).

The encode is dense; the decode is the sparse kernel or one GEMM on ``f``, as
``actstore.ops.csr_decode.decode_choice`` picks (measured on CUDA, by density elsewhere).
"""

from __future__ import annotations

import torch

from .._numerics import pre_activations
from .base import SparseAutoencoder
from .latents import Latents


class ReLUSAE(SparseAutoencoder):
    arch = act = "relu"
    saelens_arch, saelens_reads = "standard", "standard"

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        super().reset_parameters(seed)
        self.W_dec.mul_(0.1)  # decoder rows start at norm 0.1 (SAELens' decoder_init_norm)
        self.W_enc.mul_(0.1)

    def encode(self, x: torch.Tensor, dense: bool = False):
        f = torch.relu(pre_activations(x, self.W_enc, self.b_enc, self.b_dec))
        return f if dense else Latents.from_dense(f)

    def loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> dict:
        f = torch.relu(pre_activations(x, self.W_enc, self.b_enc, self.b_dec))
        x_hat, lat = self._decode_dense_or_sparse(f)
        out = self._recon_terms(x, x_hat)
        out["l1"] = (f * self.W_dec.float().norm(dim=1)).sum(1).mean()
        out["loss"] = out["mse"] + self.cfg.l1_coef * out["l1"]
        out["latents"] = lat
        return out
