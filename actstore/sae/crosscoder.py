"""Crosscoders: one dictionary over K hooks of the same token (K layers of one model, or
one hook of two models run on identical tokens, for base-vs-chat diffing).

A row is ``[B, K, d_h]``; the crosscoder reads it flattened, ``x [B, K * d_h]`` (block
``k`` = columns ``k*d_h : (k+1)*d_h``), so every latent has one encoder and one decoder
slice per block (Llamascopium's ``W_E[h]`` / ``W_D[h]``, ckkissane's ``W_enc[n_models]``)
and the existing fused ops run unchanged on the concatenation: ``cfg.d = K * d_h``,
``cfg.sources`` names the K blocks and ``cfg.source_scales`` their training normalization
(each block normalized on its own, as ckkissane's ``buffer.py`` does per model).

Activations (``cfg.activation``):

- ``relu``: Anthropic's recipe (ckkissane ``crosscoder.py:get_losses``), ``mse +
  l1_coef * sum_i f_i * sum_k ||W_dec,i^k||``: the L1 of each latent weighted by the *sum*
  of its per-block decoder norms (not the norm of the concatenation), so a latent that
  writes to one block only is cheaper than one spread over all; decoder rows are free.
- ``topk`` / ``batchtopk``: TopK / BatchTopK over the latents, decoder rows kept at unit
  norm over the concatenation (dictionary_learning's ``BatchTopKCrossCoder`` with
  ``code_normalization=SAE``); AuxK as for the SAEs.

``block_norms()`` ``[m, K]`` gives each latent's decoder norm per block: their relative
sizes are the model-diffing view (a latent whose decoder lives in one model's block only
is specific to that model). The held-out evaluation reports the FVU of each block.
"""

from __future__ import annotations

import math

import torch

from ..errors import SAEError
from .base import SparseAutoencoder
from .relu import ReLUSAE
from .topk import BatchTopKSAE, TopKSAE


class _Crosscoder:
    """What a crosscoder changes in its SAE class (mixed in before it): blocks, per-block
    scales, and no SAELens or sparsify form (neither holds crosscoders)."""

    arch = "crosscoder"
    saelens_arch = saelens_reads = saelens_trained_as = ""
    sparsify_reads = None

    @property
    def block_width(self) -> int:
        return self.cfg.d // self.cfg.blocks

    def blocks_of(self, t: torch.Tensor) -> torch.Tensor:
        """``t [..., K * d_h]`` seen as ``[..., K, d_h]``."""
        return t.unflatten(-1, (self.cfg.blocks, self.block_width))

    def block_norms(self) -> torch.Tensor:
        """``[m, K]`` float32: each latent's decoder norm in each block."""
        return self.blocks_of(self.W_dec.detach().float()).norm(dim=-1)

    def saelens_state(self):
        raise SAEError("SAELens holds no crosscoders: keep the actstore format (actstore.sae.save)")

    def sparsify_state(self):
        raise SAEError("sparsify holds no crosscoders: keep the actstore format (actstore.sae.save)")

    @torch.no_grad()
    def fold_scale(self) -> None:
        """Fold each block's normalization ``x_k' = s_k x_k`` into the weights (the block's
        encoder columns times ``s_k``, its decoder columns and ``b_dec`` slice over ``s_k``)
        so the saved crosscoder takes and gives raw activations."""
        s = torch.tensor(self.cfg.source_scales, dtype=torch.float32)
        if bool((s == 1).all()):
            return
        if not bool(torch.isfinite(s).all() and (s > 0).all()):
            raise SAEError(f"cannot fold scales {self.cfg.source_scales}: each must be a positive finite number")
        cols = s.repeat_interleave(self.block_width).to(self.W_enc.device)
        self.W_enc.mul_(cols.to(self.W_enc.dtype))
        self.W_dec.div_(cols.to(self.W_dec.dtype))
        self.b_dec.div_(cols.to(self.b_dec.dtype))
        self.cfg.source_scales = [1.0] * self.cfg.blocks
        self.cfg.scale = self.cfg.scale_out = 1.0


class TopKCrosscoder(_Crosscoder, TopKSAE):
    pass


class BatchTopKCrosscoder(_Crosscoder, BatchTopKSAE):
    pass


class ReLUCrosscoder(_Crosscoder, ReLUSAE):
    """Anthropic's crosscoder: L1 weighted by the sum of the per-block decoder norms."""

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        # Each block's decoder slice starts at norm 0.1 (SAELens' decoder_init_norm per
        # block), so every latent starts with the same weight sum_k ||W_dec^k|| = 0.1 K.
        SparseAutoencoder.reset_parameters(self, seed)
        per_block = self.blocks_of(self.W_dec)
        per_block.div_(per_block.norm(dim=-1, keepdim=True).clamp_min(1e-12)).mul_(0.1)
        self.W_enc.copy_(self.W_dec * (1.0 / math.sqrt(self.cfg.blocks)))

    def loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> dict:
        out = super().loss(x)
        f = out["latents"]
        weight = self.blocks_of(self.W_dec.float()).norm(dim=-1).sum(1)  # [m]: sum_k ||W_dec,i^k||
        out["l1"] = (f.vals.float() * weight[f.cols]).sum() / max(1, f.n)
        out["loss"] = out["mse"] + self.cfg.l1_coef * out["l1"]
        return out


CLASSES: dict[tuple[str, str], type[SparseAutoencoder]] = {
    ("crosscoder", c.act): c for c in (TopKCrosscoder, BatchTopKCrosscoder, ReLUCrosscoder)
}
