"""``TopKSAE`` and ``BatchTopKSAE`` (Gao et al. 2024; Bussmann et al. 2024) on the fused
ops: ``topk_encode`` / ``batch_topk_encode`` (one encoder GEMM, no ``[n, m]`` tensor on a
GPU) and the sparse decode.

Loss: ``fvu + aux_coef * aux_fvu`` (sparsify's form). AuxK: with ``dead_mask`` given and
any latent dead, the ``k_aux`` largest dead latents reconstruct the residual
``x - x_hat`` (detached), scaled by ``min(dead / k_aux, 1)``; for TopK they come out of
the same fused pass (for BatchTopK too).
"""

from __future__ import annotations

import torch

from ..errors import SAEError
from ..ops import batch_topk_encode, sparse_decode, topk_encode
from .base import SparseAutoencoder, saelens_field
from .latents import Latents


class _TopKLoss:
    """What TopK and BatchTopK share: AuxK and unit-norm decoder rows (mixed in before
    SparseAutoencoder, so these attributes win over its defaults)."""

    uses_auxk = True
    unit_norm_decoder = True

    def _aux_terms(self, rec: dict, dead_mask, av, ai) -> dict:
        if av is None:
            return {"aux_fvu": torch.zeros((), device=rec["mse"].device)}
        e_hat = sparse_decode(av, ai, self.W_dec)
        aux_sse = (e_hat - rec["err"].detach().neg()).pow(2).sum(1).mean()  # residual = x - x_hat = -err
        n_dead = dead_mask.sum()
        scale = (n_dead.float() / self.cfg.k_aux).clamp(max=1.0)
        return {"aux_fvu": scale * aux_sse / rec["total_variance"].clamp_min(1e-12)}


class TopKSAE(_TopKLoss, SparseAutoencoder):
    arch = act = "topk"
    saelens_arch = saelens_reads = "topk"
    sparsify_reads = (False, False)  # sparsify's (transcode, skip_connection)

    def saelens_config(self) -> dict:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}

    def sparsify_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        c = self.cfg
        if c.d_target != c.d:
            raise SAEError(
                f"sparsify's transcoders write as many values as they read (d_in); this {self.arch} reads "
                f"d={c.d} and writes d_out={c.d_target}, so it has no sparsify form (nor a SAELens one: "
                "SAELens has no TopK transcoder; train with --activation batchtopk or jumprelu for to_saelens)"
            )
        st = {
            "encoder.weight": self.W_enc.detach().contiguous(),
            "encoder.bias": self.b_enc.detach().contiguous(),
            "W_dec": self.W_dec.detach().contiguous(),
            "b_dec": self.b_dec.detach().contiguous(),
        }
        if self.W_skip is not None:
            st["W_skip"] = self.W_skip.detach().contiguous()
        transcode, skip = self.sparsify_reads
        doc = {
            "activation": "topk",
            "expansion_factor": max(1, c.m // c.d),
            "normalize_decoder": c.normalize_decoder,
            "num_latents": c.m,
            "k": c.k,
            "multi_topk": False,
            "skip_connection": skip,
            "transcode": transcode,
            "d_in": c.d,
        }
        return st, doc

    def state_from_sparsify(self, st: dict) -> dict:
        state = {"W_enc": st["encoder.weight"], "b_enc": st["encoder.bias"], "W_dec": st["W_dec"], "b_dec": st["b_dec"]}
        if self.W_skip is not None:
            state["W_skip"] = st["W_skip"]
        return state

    def encode(self, x: torch.Tensor, dense: bool = False):
        v, i = topk_encode(x, self.W_enc, self.b_enc, self.cfg.k, self.pre_bias)
        lat = Latents.from_topk(v, i, self.cfg.m)
        return lat.dense() if dense else lat

    def loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None, target: torch.Tensor | None = None) -> dict:
        y = self.target_of(x, target)
        use_aux = dead_mask is not None and bool(dead_mask.any())
        if use_aux:
            v, i, av, ai = topk_encode(
                x,
                self.W_enc,
                self.b_enc,
                self.cfg.k,
                self.pre_bias,
                dead_mask=dead_mask,
                k_aux=min(self.cfg.k_aux, self.cfg.m),
            )
        else:
            (v, i), av, ai = topk_encode(x, self.W_enc, self.b_enc, self.cfg.k, self.pre_bias), None, None
        y_hat = self.add_skip(sparse_decode(v, i, self.W_dec, self.b_dec), x)
        rec = self._recon_terms(y, y_hat)
        out = {**rec, **self._aux_terms(rec, dead_mask, av, ai)}
        out["loss"] = out["fvu"] + self.cfg.aux_coef * out["aux_fvu"]
        out["latents"] = Latents.from_topk(v, i, self.cfg.m)
        return out


class BatchTopKSAE(_TopKLoss, SparseAutoencoder):
    """k active latents per row on average over a batch. In training mode the threshold is
    the batch's ``n*k``-th activation; each training batch moves the ``threshold`` buffer
    (an exponential mean, rate 0.01) towards it, and eval mode encodes with that fixed
    threshold (the JumpReLU form), so a row's code no longer depends on its batch."""

    arch = act = "batchtopk"
    # SAELens runs its BatchTopK SAEs at inference as JumpReLU with one theta on every
    # latent: that is the export (recording training_architecture "batchtopk", as SAELens'
    # own inference saves do, so it reads back as this class); its BatchTopK training saves import.
    saelens_arch, saelens_reads, saelens_trained_as = "jumprelu", "batchtopk", "batchtopk"

    def _init_arch_params(self, kw) -> None:
        super()._init_arch_params(kw)
        t = self.cfg.threshold
        self.register_buffer(
            "threshold", torch.tensor(-1.0 if t is None else float(t), dtype=torch.float32, device=kw["device"])
        )

    def export_config(self):
        self.cfg.threshold = float(self.threshold) if float(self.threshold) >= 0 else None
        return self.cfg

    def sync_state(self, dist) -> None:
        """Every rank moved the running threshold by its own batch: average them."""
        dist.all_reduce(self.threshold)
        self.threshold /= dist.get_world_size()

    def saelens_state(self) -> dict[str, torch.Tensor]:
        t = float(self.threshold)
        if t < 0:
            raise SAEError(
                "this BatchTopK SAE has no inference threshold yet (train it first): "
                "SAELens stores BatchTopK SAEs in their JumpReLU form"
            )
        return {**super().saelens_state(), "threshold": torch.full((self.cfg.m,), t, dtype=self.W_enc.dtype)}

    def saelens_metadata(self) -> dict:
        # SAELens' own record for a BatchTopK SAE it saves as JumpReLU: from_saelens reads the
        # file back as this class (k and the threshold), not as a JumpReLU SAE.
        return {"training_architecture": self.saelens_trained_as, "training_architecture_details": {"k": self.cfg.k}}

    @classmethod
    def saelens_holds(cls, doc: dict, st: dict) -> bool:
        """A whole ``k``, and either SAELens' training threshold or one JumpReLU threshold
        (at least 0) on every latent."""
        k = saelens_field(doc, "k")
        if k is None or not float(k).is_integer() or float(k) < 1:
            return False
        if "topk_threshold" in st:
            return True
        t = st.get("threshold")
        return t is not None and t.numel() > 0 and bool((t == t.flatten()[0]).all()) and float(t.flatten()[0]) >= 0

    @classmethod
    def saelens_config_keys(cls, doc: dict, st: dict) -> dict:
        # A training save holds topk_threshold (a scalar); the JumpReLU form, one threshold per latent.
        thr = st.get("topk_threshold")
        if thr is None and st.get("threshold") is not None:
            thr = st["threshold"].flatten()[0]
        k = saelens_field(doc, "k")
        return {
            **super().saelens_config_keys(doc, st),
            "k": int(k) if k is not None else None,
            "threshold": None if thr is None else float(thr),
        }

    def state_from_saelens(self, st: dict, source, shift: torch.Tensor | None = None) -> dict:
        t = self.cfg.threshold
        return {**super().state_from_saelens(st, source, shift), "threshold": torch.tensor(-1.0 if t is None else t)}

    def _encode_csr(self, x: torch.Tensor, dead_mask=None):
        # Eval reads the threshold (one host sync); training keeps it on the device.
        fixed = not self.training and float(self.threshold) >= 0
        aux = {} if dead_mask is None else {"dead_mask": dead_mask, "k_aux": min(self.cfg.k_aux, self.cfg.m)}
        out = batch_topk_encode(
            x,
            self.W_enc,
            self.b_enc,
            self.cfg.k,
            self.pre_bias,
            threshold=float(self.threshold) if fixed else None,
            cand_k=self.cand_k,
            **aux,
        )
        rp, c, v, t = out[:4]
        # Its kernel keeps cand_k per row whatever the density: it never goes dense by choice.
        self._note_candidates(rp, may_go_dense=False)
        if self.training:
            with torch.no_grad():  # the first batch sets it, later ones move it by 1%
                t = t.float()
                self.threshold.copy_(torch.where(self.threshold < 0, t, 0.99 * self.threshold + 0.01 * t))
        lat = Latents(rp, c, v, self.cfg.m)
        return (lat, out[4], out[5]) if dead_mask is not None else lat

    def encode(self, x: torch.Tensor, dense: bool = False):
        lat = self._encode_csr(x)
        return lat.dense() if dense else lat

    def loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None, target: torch.Tensor | None = None) -> dict:
        y = self.target_of(x, target)
        use_aux = dead_mask is not None and bool(dead_mask.any())
        if use_aux:  # the dead latents' top-k comes out of the same encoder pass
            lat, av, ai = self._encode_csr(x, dead_mask)
        else:
            lat, av, ai = self._encode_csr(x), None, None
        rec = self._recon_terms(y, self.output(x, lat))
        out = {**rec, **self._aux_terms(rec, dead_mask, av, ai)}
        out["loss"] = out["fvu"] + self.cfg.aux_coef * out["aux_fvu"]
        out["latents"] = lat
        return out
