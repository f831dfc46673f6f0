"""``SparseAutoencoder``: what every SAE in ``actstore.sae`` shares.

Parameters (layout of ``actstore.reference.topk_sae``): ``W_enc [m, d]`` (one row per latent),
``W_dec [m, d]``, ``b_dec [d]``, which is also subtracted from the input before encoding
(SAELens' ``apply_b_dec_to_input``; sparsify does the same), plus the arch's own encoder
biases. Interface:

- ``encode(x [n, d])`` -> :class:`~actstore.sae.latents.Latents` (CSR), or ``[n, m]`` with
  ``dense=True``;
- ``decode(latents)`` -> ``[n, d]``; ``forward(x)`` = ``decode(encode(x))``;
- ``loss(x, dead_mask=None)`` -> a dict with ``loss`` (differentiable), ``mse`` (squared
  error summed over d, mean over rows), ``fvu`` (fraction of variance unexplained),
  ``l0`` and the arch's own terms, plus ``latents``.

What differs per arch lives on the class, so the trainer and the file formats ask the SAE
instead of branching on its name: ``uses_auxk`` (the loss takes ``dead_mask``),
``renorm_decoder`` (unit-norm decoder rows after each step), ``sync_state(dist)`` (state
that training moves outside the gradients, averaged over ranks), and the SAELens /
sparsify conversions (``saelens_arch``, ``saelens_reads``, ``saelens_trained_as``,
``saelens_state()``, ``saelens_config()``, ``saelens_metadata()``, ``saelens_holds()``,
``config_from_saelens()``, ``saelens_config_keys()``, ``state_from_saelens()``;
``sparsify_reads``, ``sparsify_state()``, ``state_from_sparsify()``; ``new_config()``).
``actstore.sae.registry`` maps arch names to the classes.

Reconstruction losses are float32 whatever the parameter dtype.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._numerics import pre_activations
from ..errors import SAEError
from ..ops import csr_decode
from ..ops._candidates import DENSE_CAND_K, adapt_cand_k, dense_fallback_rows
from ..ops.csr_decode import decode_choice
from .config import TRANSCODER_ARCHS, SAEConfig
from .latents import Latents


def saelens_field(doc: dict, name: str):
    """``name`` from SAELens' ``cfg.json`` ``doc``: its own key (a training save), else the
    ``metadata.training_architecture_details`` that SAELens writes beside an inference save
    of another form (a BatchTopK or Matryoshka SAE saved as JumpReLU keeps its ``k`` and
    ``matryoshka_widths`` there); None when neither holds it."""
    if doc.get(name) is not None:
        return doc[name]
    details = (doc.get("metadata") or {}).get("training_architecture_details") or {}
    return details.get(name)


def _shifted(bias: torch.Tensor, shift: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``bias + shift`` in float32, returned in ``dtype`` (``bias`` itself when no shift)."""
    return bias if shift is None else (bias.float() + shift).to(dtype)


class SparseAutoencoder(nn.Module):
    arch = ""
    # The activation function (the arch itself for SAEs; a transcoder class names the SAE
    # class whose encoder it shares).
    act = ""
    # The loss takes ``dead_mask`` and trains the dead latents with AuxK (the trainer then
    # tracks and passes it; other archs get None).
    uses_auxk = False
    # Decoder rows are kept at unit norm (when ``cfg.normalize_decoder``): right for archs
    # whose penalty ignores decoder norms; relu and gated weight their L1 by them instead.
    unit_norm_decoder = False
    # SAELens' ``architecture`` this arch is written as, and the one it is read from ("": none).
    saelens_arch = ""
    saelens_reads = ""
    # For an arch SAELens stores in another's form (BatchTopK and Matryoshka as JumpReLU): the
    # ``metadata.training_architecture`` its export records, by which a file of that form
    # (``saelens_arch``) imports as this class again when :meth:`saelens_holds` it.
    saelens_trained_as = ""
    # sparsify's ``(transcode, skip_connection)`` of the checkpoints this class reads and writes
    # (None: sparsify cannot hold it).
    sparsify_reads: tuple[bool, bool] | None = None

    def __init__(self, cfg: SAEConfig, *, device=None, dtype=None, seed: int = 0):
        super().__init__()
        if cfg.arch != self.arch or cfg.act != self.act:
            raise SAEError(f"{type(self).__name__} needs arch {self.arch!r} ({self.act}), got {cfg.arch!r} ({cfg.act})")
        self.cfg = cfg
        dtype = dtype or getattr(torch, cfg.dtype)
        kw = {"device": device, "dtype": dtype}
        self.W_enc = nn.Parameter(torch.empty(cfg.m, cfg.d, **kw))
        self.W_dec = nn.Parameter(torch.empty(cfg.m, cfg.d_target, **kw))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_target, **kw))
        # Skip transcoders: y_hat += x @ W_skip.T, zero at init (SAELens' SkipTranscoder, sparsify).
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_target, cfg.d, **kw)) if cfg.arch == "skip_transcoder" else None
        self._init_arch_params(kw)
        self.reset_parameters(seed)
        # Threshold encoders (batchtopk, jumprelu, gated): candidates per row on the Triton
        # path, sized from each batch (_note_candidates), and rows encoded / recomputed densely
        # since the trainer last read them.
        self.cand_k = 64
        self.encode_rows = 0
        self.dense_rows = 0

    # -- arch hooks ----------------------------------------------------------------------

    def _init_arch_params(self, kw) -> None:
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.m, **kw))

    def encode(self, x: torch.Tensor, dense: bool = False):
        raise NotImplementedError

    def loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None) -> dict:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """SAE: decoder rows random unit vectors, encoder the decoder's transpose (the tied
        initialization of Gao et al. 2024 and sparsify); biases 0.

        Transcoder (sparsify's init): input and output are different spaces, so the encoder is
        drawn on its own, ``U(-1/sqrt(d), 1/sqrt(d))`` (``nn.Linear``'s), the decoder (and
        ``W_skip``) start at zero, and the decoder rows are not renormalized
        (``normalize_decoder`` defaults off); the trainer then centres ``b_enc``
        (:meth:`center_encoder`). On SmolLM2 layer 15 (m=4096, k=32, 300 steps of 2048 rows)
        this left 0.4% of the latents dead and a held-out FVU of 0.317, against 58% and 0.36
        with unit-norm random rows on both sides (``benchmarks/bench_dictionaries.py``)."""
        g = torch.Generator().manual_seed(seed)
        if self.cfg.is_transcoder:
            bound = 1 / math.sqrt(self.cfg.d)
            self.W_enc.copy_((torch.rand(self.cfg.m, self.cfg.d, generator=g) * 2 - 1) * bound)
            self.W_dec.zero_()
        else:
            w = torch.randn(self.cfg.m, self.cfg.d, generator=g)
            w /= w.norm(dim=1, keepdim=True)
            self.W_dec.copy_(w)
            self.W_enc.copy_(w)
        self.b_dec.zero_()
        if self.W_skip is not None:
            self.W_skip.zero_()

    @property
    def pre_bias(self) -> torch.Tensor | None:
        """What the encoder subtracts from its input: ``b_dec`` for an SAE (SAELens'
        ``apply_b_dec_to_input``), nothing for a transcoder, whose ``b_dec`` lives in the
        target space (SAELens forbids it there; sparsify dropped it, PR #49)."""
        return None if self.cfg.is_transcoder else self.b_dec

    def target_of(self, x: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """The rows the loss reconstructs: ``target`` ``[n, d_out]``, or ``x`` for an SAE."""
        if target is None:
            if self.cfg.is_transcoder:
                raise SAEError(
                    f"a {self.arch} reconstructs its target hook: pass target= rows [n, {self.cfg.d_target}]"
                )
            return x
        if target.dim() != 2 or target.shape != (x.shape[0], self.cfg.d_target):
            raise SAEError(f"target must be [n={x.shape[0]}, d_out={self.cfg.d_target}], got {tuple(target.shape)}")
        return target

    def add_skip(self, y_hat: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """``y_hat + x @ W_skip.T`` for a skip transcoder (float32), ``y_hat`` otherwise."""
        if self.W_skip is None:
            return y_hat
        if x is None:
            raise SAEError("a skip transcoder's output needs its source rows (W_skip x): pass source=")
        return y_hat + x.float() @ self.W_skip.float().t()

    @property
    def renorm_decoder(self) -> bool:
        """Whether training rescales the decoder rows to unit norm after every step."""
        return self.unit_norm_decoder and self.cfg.normalize_decoder

    def sync_state(self, dist) -> None:
        """Make state that training moves outside the gradients agree across ranks; called
        after the gradient all-reduce, before the optimizer step. None by default."""

    def export_config(self) -> SAEConfig:
        """The config to save next to the weights (arch state kept in buffers is synced in)."""
        return self.cfg

    # -- SAELens and sparsify layouts (called by actstore.sae.io on a folded CPU copy) -------

    @classmethod
    def new_config(cls, d: int, m: int, d_out: int | None = None, **kw) -> SAEConfig:
        """A config of this class (its arch, and a transcoder's activation) for ``d`` inputs,
        ``m`` latents and ``d_out`` outputs (an SAE's ``d_out`` is its ``d``); ``kw``: the
        other :class:`SAEConfig` fields. The importers build their configs with it."""
        if cls.arch in TRANSCODER_ARCHS:
            return SAEConfig(cls.arch, d, m, activation=cls.act, d_out=d_out or d, **kw)
        return SAEConfig(cls.arch, d, m, d_out=None if d_out == d else d_out, **kw)

    def saelens_state(self) -> dict[str, torch.Tensor]:
        """The weights in SAELens' layout: ``W_enc [d, m]`` (transposed), ``W_dec [m, d_out]``,
        ``b_dec [d_out]``, ``b_enc [m]``, a skip transcoder's ``W_skip [d_out, d]`` and the
        arch's own."""
        st = {
            "W_enc": self.W_enc.detach().t().contiguous(),
            "W_dec": self.W_dec.detach().contiguous(),
            "b_dec": self.b_dec.detach().contiguous(),
            "b_enc": self.b_enc.detach().contiguous(),
        }
        if self.W_skip is not None:
            st["W_skip"] = self.W_skip.detach().contiguous()
        return st

    def saelens_config(self) -> dict:
        """The arch's own keys of SAELens' ``cfg.json`` (beyond sizes, dtype and architecture)."""
        return {}

    def saelens_metadata(self) -> dict:
        """The arch's own keys of SAELens' ``cfg.json`` ``metadata`` (beyond the hook names)."""
        return {}

    @classmethod
    def saelens_holds(cls, doc: dict, st: dict) -> bool:
        """Whether SAELens' ``doc`` and tensors ``st`` hold an SAE of this class exactly (asked
        of the class a ``saelens_trained_as`` record names; when not, the file's own
        architecture reads it)."""
        return True

    @classmethod
    def saelens_config_keys(cls, doc: dict, st: dict) -> dict:
        """The :class:`SAEConfig` fields (beyond ``d``, ``m`` and dtype) read from SAELens'
        ``cfg.json`` ``doc`` and tensors ``st``: a transcoder's ``d_out``, ``k``, and the arch's own."""
        k, d_out = doc.get("k"), doc.get("d_out")
        return {"k": int(k) if k else None, "d_out": int(d_out) if d_out else None}

    @classmethod
    def config_from_saelens(cls, doc: dict, st: dict, d: int, m: int, dtype: str) -> SAEConfig:
        """The config of an SAE read from SAELens' ``cfg.json`` ``doc`` and tensors ``st``."""
        return cls.new_config(d, m, dtype=dtype, **cls.saelens_config_keys(doc, st))

    def state_from_saelens(self, st: dict, source, shift: torch.Tensor | None = None) -> dict:
        """This module's state dict from SAELens' tensors ``st``. ``shift`` (``[m]`` float32,
        ``W_enc @ b_dec``) is given when SAELens did not subtract ``b_dec`` from the input:
        the encoder biases take it, so our pre-activation ``(x - b_dec) W + b`` matches theirs."""
        dtype = st["W_dec"].dtype
        state = {
            "W_enc": st["W_enc"].t(),
            "W_dec": st["W_dec"],
            "b_dec": st["b_dec"],
            "b_enc": _shifted(st["b_enc"], shift, dtype),
        }
        if self.W_skip is not None:
            if "W_skip" not in st:
                raise SAEError(f"{source}: a {self.arch} needs W_skip [d_out, d], which the file lacks")
            state["W_skip"] = st["W_skip"]
        return state

    def sparsify_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, cfg.json)`` of a sparsify checkpoint; sparsify holds TopK SAEs and TopK
        (skip) transcoders only."""
        raise SAEError(
            f"sparsify holds TopK SAEs and TopK transcoders only, not {self.arch!r} ({self.act}): "
            "export it with to_saelens instead"
        )

    def state_from_sparsify(self, st: dict) -> dict:
        """This module's state dict from a sparsify checkpoint's tensors ``st``."""
        raise SAEError(f"sparsify checkpoints hold TopK SAEs and transcoders only, not {self.arch!r}")

    def decode(self, latents: Latents) -> torch.Tensor:
        """``[n, d]`` float32. The candidate (sparse kernel, embedding bag, or one dense GEMM
        when a threshold SAE early in training holds up to half of the ``[n, m]`` entries) is
        ``actstore.ops.csr_decode``'s: measured on CUDA, the density cut
        ``DENSE_DECODE_ABOVE`` elsewhere. Same values and gradients either way."""
        return csr_decode(latents.row_ptr, latents.cols, latents.vals, self.W_dec, self.b_dec)

    def output(self, x: torch.Tensor, latents: Latents | None = None) -> torch.Tensor:
        """The reconstruction of the target ``[n, d_out]`` float32 from source rows ``x``:
        the decode of ``latents`` (encoded from ``x`` when not given), plus ``W_skip x`` for
        a skip transcoder. For an SAE, ``forward(x)``."""
        lat = self.encode(x) if latents is None else latents
        return self.add_skip(self.decode(lat), x)

    def _decode_dense_or_sparse(self, f: torch.Tensor) -> tuple[torch.Tensor, Latents]:
        """Decode dense activations ``[n, m]``: where the decode's dispatch picks ``dense``,
        the GEMM runs on ``f`` itself (no scatter); otherwise the chosen sparse candidate."""
        lat = Latents.from_dense(f)
        choice = decode_choice(lat.row_ptr, lat.cols, lat.vals, self.W_dec, self.b_dec)
        if choice == "dense":
            return f.float() @ self.W_dec.float() + self.b_dec.float(), lat
        return csr_decode(lat.row_ptr, lat.cols, lat.vals, self.W_dec, self.b_dec, backend=choice), lat

    def level_outputs(self, latents: Latents, x: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each nested level's reconstruction ``[n, d_out]``, the whole one last: one level for
        every arch but Matryoshka (which overrides it)."""
        return [self.add_skip(self.decode(latents), x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(x)

    def _recon_terms(self, x: torch.Tensor, x_hat: torch.Tensor) -> dict:
        xf = x.float()
        err = x_hat - xf
        mse = err.pow(2).sum(1).mean()
        total = (xf - xf.mean(0)).pow(2).sum(1).mean()
        return {"mse": mse, "fvu": mse / total.clamp_min(1e-12), "err": err, "total_variance": total}

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (latents then carry the scale)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Drop the part of the decoder gradient along each (unit) row, so a step does not
        fight the renormalization that follows it."""
        if self.W_dec.grad is None:
            return
        g, w = self.W_dec.grad, self.W_dec
        g -= (g * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def fold_scale(self) -> None:
        """Fold the training normalization ``x' = scale * x`` (and ``y' = scale_out * y``
        for a transcoder's target) into the weights so that the SAE takes and gives raw
        activations: ``W_enc *= s``, ``W_dec /= s_out``, ``b_dec /= s_out``,
        ``W_skip *= s / s_out``; the latents are unchanged (so thresholds stay as they are)."""
        s = float(self.cfg.scale)
        s_out = float(self.cfg.scale_out) if self.cfg.is_transcoder else s
        if s == 1.0 and s_out == 1.0:
            return
        for v in (s, s_out):
            if not math.isfinite(v) or v <= 0:
                raise SAEError(f"cannot fold scale {v}: it must be a positive finite number")
        self.W_enc.mul_(s)
        self.W_dec.div_(s_out)
        self.b_dec.div_(s_out)
        if self.W_skip is not None:
            self.W_skip.mul_(s / s_out)
        self.cfg.scale = 1.0
        self.cfg.scale_out = 1.0

    def _note_candidates(self, row_ptr: torch.Tensor, may_go_dense: bool = True) -> None:
        """After a threshold encode whose CSR rows hold exactly the candidates above its floor:
        count the rows the ``cand_k`` just used sent to the dense fallback, and size
        ``cand_k`` for the next batch (``ops._candidates.adapt_cand_k``)."""
        counts = row_ptr[1:] - row_ptr[:-1]
        m = self.cfg.m
        self.encode_rows += counts.numel()
        self.dense_rows += dense_fallback_rows(counts, self.cand_k, m)
        c = adapt_cand_k(counts, m)
        self.cand_k = c if may_go_dense else min(c, DENSE_CAND_K, m)

    def encoder_state(self) -> dict:
        """What the threshold encoders carry from batch to batch outside the weights
        (``cand_k`` and the counts since the metrics last read them), for checkpoints: a
        resumed run then logs what an uninterrupted one does. The code itself does not
        depend on it (every candidate count gives the same latents)."""
        return {"cand_k": self.cand_k, "encode_rows": self.encode_rows, "dense_rows": self.dense_rows}

    def load_encoder_state(self, state: dict) -> None:
        self.cand_k, self.encode_rows, self.dense_rows = (
            int(state[k]) for k in ("cand_k", "encode_rows", "dense_rows")
        )

    def take_encode_counts(self) -> dict:
        """``{"encode_rows", "dense_rows"}`` since the last call (then reset): how many rows the
        threshold encoders recomputed densely, for the trainer's metrics."""
        out = {"encode_rows": self.encode_rows, "dense_rows": self.dense_rows}
        self.encode_rows = self.dense_rows = 0
        return out

    @torch.no_grad()
    def init_from_batch(self, x: torch.Tensor, l0: float) -> None:
        """Set the encoder thresholds from a batch ``x [n, d]`` (in the training scale, after
        ``init_b_dec``) so that each latent fires on about ``l0 / m`` of its rows: the
        initial L0 is then near ``l0``. Threshold archs override :meth:`_set_quantile`; the
        others have no threshold and ignore this."""
        m = self.cfg.m
        if not 0 < l0 <= m:
            raise SAEError(f"init l0 must be in (0, m={m}], got {l0}")
        n = x.shape[0]
        # The (1 - l0/m) quantile of each latent's pre-activation: the ceil(n (1 - l0/m))-th
        # smallest of its n values, over slices of latents so no [n, m] float32 is held whole.
        kth = min(n, max(1, math.ceil(n * (1 - l0 / m))))
        qs = []
        for s in range(0, m, 4096):
            sl = slice(s, s + 4096)
            pre = pre_activations(x.to(self.W_enc.device), self.W_enc[sl], self._quantile_bias()[sl], self.pre_bias)
            qs.append(pre.kthvalue(kth, dim=0).values)
        self._set_quantile(torch.cat(qs))

    def _quantile_bias(self) -> torch.Tensor:
        return torch.zeros(self.cfg.m, device=self.W_enc.device)

    def _set_quantile(self, q: torch.Tensor) -> None:
        """``q [m]``: each latent's pre-activation (with :meth:`_quantile_bias`) that about
        ``l0/m`` of the rows exceed."""

    @torch.no_grad()
    def center_encoder(self, mean: torch.Tensor) -> None:
        """A transcoder's encoder starts centred on its source's mean ``[d]`` (training
        scale): ``b_enc = -W_enc mean``, sparsify's transcoder init. An SAE centres by
        subtracting ``b_dec`` (the mean at init) instead; a transcoder has no such bias, and
        without this the mean direction picks the same latents for every row."""
        self.b_enc.copy_((-(self.W_enc.float() @ mean.float().to(self.W_enc.device))).to(self.b_enc.dtype))

    def init_b_dec(self, mean: torch.Tensor) -> None:
        """Start the decoder bias at the target's mean ``[d_out]`` (in the training scale)."""
        with torch.no_grad():
            self.b_dec.copy_(mean.to(self.b_dec))
