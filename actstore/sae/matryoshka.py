"""``MatryoshkaBatchTopKSAE`` (Bussmann et al. 2025; Nabeshima 2024): a BatchTopK SAE whose
latent prefixes ``[0, w_1) ⊂ [0, w_2) ⊂ ... ⊂ [0, m)`` must each reconstruct the input on
their own, so the first latents learn the broad features.

One BatchTopK selection for the whole batch is shared by every level (SAELens #571 and
dictionary_learning do the same). The code is split by latent group ``[w_{i-1}, w_i)``
(a mask on the CSR entries, so the decodes together cost one full decode) and the levels
are running sums: ``x_hat_i = b_dec + sum_{g <= i} decode_g``. With
``L_i = ||x - x_hat_i||^2`` (summed over d, mean over rows), the loss is, by
``cfg.matryoshka_loss``:

- ``mean`` (the default): dictionary_learning's ``MatryoshkaBatchTopKTrainer.loss``, the
  mean over the G levels of ``L_i / G`` (its default group weights), i.e.
  ``sum_i L_i / G^2``, plus ``aux_coef`` times its AuxK: the ``min(k_aux, n_dead)``
  largest dead latents reconstruct the (detached) full residual, divided by the
  residual's variance. Equal to the real package's value given the same weights and batch
  (``tests/sae/test_matryoshka.py``).
- ``sum``: SAELens' ``matryoshka_batchtopk``, ``sum_i L_i`` (G^2 times the above) plus its
  TopK AuxK: ``min(n_dead / k_aux, 1)`` times the aux squared error, not normalized.

The default is dictionary_learning's because its aux term keeps the same weight beside the
reconstruction whatever the number of levels (SAELens' sum grows with G^2 while its aux
does not), and because it is the reference SAELens synced its Matryoshka with (#571).
Training moves the BatchTopK inference threshold as :class:`~actstore.sae.topk.BatchTopKSAE`
does; exports are that class's (SAELens stores Matryoshka SAEs as JumpReLU), with SAELens' own
record of what was trained (``metadata.training_architecture`` ``matryoshka_batchtopk``, and
``k``, ``matryoshka_widths`` and ``matryoshka_loss`` in ``training_architecture_details``), so
``from_saelens`` reads the export back as this class with the same widths. SAELens'
``matryoshka_batchtopk`` training saves import too (``matryoshka_loss`` ``sum``: theirs).
"""

from __future__ import annotations

import torch

from ..ops import csr_decode, sparse_decode
from .base import saelens_field
from .latents import Latents
from .topk import BatchTopKSAE


def split_levels(lat: Latents, widths: list[int]) -> list[Latents]:
    """The CSR code ``lat`` cut into the latent groups ``[w_{i-1}, w_i)`` (``w_0 = 0``): one
    :class:`Latents` per group, entries in the same row order (vals stay differentiable)."""
    rows = lat.rows()
    out, lo = [], 0
    for hi in widths:
        keep = (lat.cols >= lo) & (lat.cols < hi)
        counts = torch.zeros(lat.n, dtype=torch.int64, device=lat.cols.device)
        counts.index_add_(0, rows[keep], torch.ones_like(rows[keep]))
        row_ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        out.append(Latents(row_ptr, lat.cols[keep], lat.vals[keep], lat.m))
        lo = hi
    return out


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    arch = act = "matryoshka_batchtopk"
    # SAELens writes them as jumprelu (the inherited export), recording this training architecture.
    saelens_reads = saelens_trained_as = "matryoshka_batchtopk"

    def saelens_metadata(self) -> dict:
        md = super().saelens_metadata()
        details = md["training_architecture_details"]
        details.update(matryoshka_widths=list(self.cfg.widths), matryoshka_loss=self.cfg.matryoshka_loss)
        return md

    @classmethod
    def saelens_holds(cls, doc: dict, st: dict) -> bool:
        return saelens_field(doc, "matryoshka_widths") is not None and super().saelens_holds(doc, st)

    @classmethod
    def saelens_config_keys(cls, doc: dict, st: dict) -> dict:
        # matryoshka_loss is actstore's key: a file SAELens trained gets its sum over levels.
        return {
            **super().saelens_config_keys(doc, st),
            "widths": saelens_field(doc, "matryoshka_widths"),
            "matryoshka_loss": saelens_field(doc, "matryoshka_loss") or "sum",
        }

    def level_outputs(self, lat: Latents, x: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``[x_hat_1, ..., x_hat_G]``: each level's reconstruction ``[n, d]`` float32."""
        outs, acc = [], self.b_dec.float().expand(lat.n, -1)
        for part in split_levels(lat, self.cfg.widths):
            acc = acc + csr_decode(part.row_ptr, part.cols, part.vals, self.W_dec)
            outs.append(acc)
        return outs

    def loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None, target: torch.Tensor | None = None) -> dict:
        y = self.target_of(x, target).float()
        n_dead = int(dead_mask.sum()) if dead_mask is not None else 0
        if n_dead:
            lat, av, ai = self._encode_csr(x, dead_mask)
        else:
            lat, av, ai = self._encode_csr(x), None, None
        levels = self.level_outputs(lat)
        level_sse = torch.stack([(y - h).pow(2).sum(1).mean() for h in levels])
        g = len(levels)
        rec = self._recon_terms(y, levels[-1])
        sum_mode = self.cfg.matryoshka_loss == "sum"
        loss = level_sse.sum() if sum_mode else level_sse.sum() / g**2
        aux = torch.zeros((), device=y.device)
        if n_dead:
            residual = (y - levels[-1]).detach()
            k_aux = min(self.cfg.k_aux, self.cfg.m)
            if not sum_mode:  # dictionary_learning: the top min(k_aux, n_dead), over the residual's variance
                av, ai = av[:, : min(k_aux, n_dead)], ai[:, : min(k_aux, n_dead)]
            aux_sse = (sparse_decode(av, ai, self.W_dec) - residual).pow(2).sum(1).mean()
            if sum_mode:  # SAELens: scaled by the dead share, not normalized
                aux = min(n_dead / k_aux, 1.0) * aux_sse
            else:
                var = (residual - residual.mean(0)).pow(2).sum(1).mean()
                aux = (aux_sse / var).nan_to_num(0.0)
        rec["aux_fvu"] = aux
        rec["level_fvu"] = level_sse.detach() / rec["total_variance"].clamp_min(1e-12)
        rec["loss"] = loss + self.cfg.aux_coef * aux
        rec["latents"] = lat
        return rec
