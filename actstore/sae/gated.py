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
from .base import SparseAutoencoder, _shifted
from .latents import Latents


class GatedSAE(SparseAutoencoder):
    arch = act = "gated"
    saelens_arch = saelens_reads = "gated"

    def _init_arch_params(self, kw) -> None:
        m = self.cfg.m
        self.b_gate = nn.Parameter(torch.zeros(m, **kw))
        self.r_mag = nn.Parameter(torch.zeros(m, **kw))
        self.b_mag = nn.Parameter(torch.zeros(m, **kw))

    def saelens_state(self) -> dict[str, torch.Tensor]:
        return {
            "W_enc": self.W_enc.detach().t().contiguous(),
            "W_dec": self.W_dec.detach().contiguous(),
            "b_dec": self.b_dec.detach().contiguous(),
            "b_gate": self.b_gate.detach(),
            "r_mag": self.r_mag.detach(),
            "b_mag": self.b_mag.detach(),
        }

    def state_from_saelens(self, st: dict, source, shift: torch.Tensor | None = None) -> dict:
        # pi_mag = exp(r_mag) G + b_mag: its bias takes the shift scaled like G.
        dtype = st["W_dec"].dtype
        mag_shift = None if shift is None else st["r_mag"].float().exp() * shift
        return {
            "W_enc": st["W_enc"].t(),
            "W_dec": st["W_dec"],
            "b_dec": st["b_dec"],
            "b_gate": _shifted(st["b_gate"], shift, dtype),
            "r_mag": st["r_mag"],
            "b_mag": _shifted(st["b_mag"], mag_shift, dtype),
        }

    def _quantile_bias(self) -> torch.Tensor:
        return self.b_gate

    def _set_quantile(self, q: torch.Tensor) -> None:
        # A gate opens where pi_gate > 0: shift b_gate so the quantile sits at 0.
        self.b_gate.sub_(q.to(self.b_gate.dtype))

    def _encode(self, x):
        rp, c, f, gate = gated_encode(
            x, self.W_enc, self.b_gate, self.r_mag, self.b_mag, self.b_dec, cand_k=self.cand_k
        )
        self._note_candidates(rp)
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
