"""``CrossLayerTranscoder`` (CLT): an encoder per layer and decoders from each layer to every
later one (Anthropic's "Circuit tracing" replacement model; clt-training, curt-tigges,
CLT-Forge, Llamascopium).

Layer ``s`` reads its source ``x_s [n, d]`` (the MLP input), ``a_s = act(x_s W_enc[s]^T +
b_enc[s])`` (``m`` latents per layer; no ``b_dec`` subtracted: the input and output spaces
differ), and target ``l`` (the MLP output, ``[n, d_out]``) is reconstructed from every layer
at or before it::

    y_l = sum_{s <= l} a_s W_dec^{s->l} + b_dec[l]  (+ x_l W_skip[l]^T for skip_clt)

Parameters (shapes; ``m`` here is this rank's latents per layer, ``cfg.m`` the whole):
``W_enc [L, m, d]``, ``b_enc [L, m]``, ``W_dec[l] [(l+1) m, d_out]`` (one per *target*,
rows ``s*m:(s+1)*m`` the decoder ``s -> l``, so decoding target ``l`` is one sparse decode
over the active latents of layers ``<= l``: the code's column ``s*m + i`` is row
``s*m + i`` of ``W_dec[l]``), ``b_dec [L, d_out]``, ``W_skip [L, d_out, d]``; JumpReLU
``log_threshold [L, m]``; BatchTopK an inference ``threshold [L]`` buffer.

The code of a batch is one CSR :class:`~actstore.sae.latents.Latents` over ``L * m`` latents
(column ``s*m + i``), each row's entries in layer order, so target ``l``'s inputs are a
prefix of each row. TopK keeps the top-form ``[n, L k]`` (the prefix is the first
``(l+1) k`` columns, no copy of indices). No dense ``[n, L m]`` code and no pre-activation
buffer: each layer's encoder is the fused op of its activation.

Loss (clt-training's: each target layer weighs the same whatever its variance): TopK and
BatchTopK ``mean_l FVU_l + aux_coef * mean_s AuxK_s`` (AuxK: layer ``s``'s ``k_aux``
largest dead latents reconstruct the residual of target ``s`` through the diagonal decoder
``s -> s``); JumpReLU ``mean_l mse_l + l0_coef * mean_s L0_s`` (the JumpReLU SAE's terms per
layer, averaged). Init (sparsify's transcoder init per layer): encoders
``U(-1/sqrt(d), 1/sqrt(d))`` centred on the source mean by the trainer, decoders and
``W_skip`` zero, ``b_dec`` the target means.

**Sharded across ranks** (``shard=(rank, world)``): each rank holds ``cfg.m / world`` latents
of every layer (its encoder rows, its decoder rows of every ``s -> l``), reads the same batch,
and decodes a partial output that one all-reduce per step sums (forward sum, backward
identity: every rank computes the same loss, so the gradient of the sum is that of each
part). TopK picks each row's global top-k from the ranks' local top-k values (one
all-gather of ``[n, L, k]`` values per step); JumpReLU needs nothing more. The weights after
N steps equal a 1-rank run's up to float rounding (``tests/sae/test_clt_sharded.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._numerics import csr_from_coo, pre_activations, rows_of
from ..errors import SAEError
from ..ops import batch_topk_encode, csr_decode, jumprelu_encode, sparse_decode, topk_encode
from ..ops._candidates import DENSE_CAND_K, adapt_cand_k, dense_fallback_rows
from .config import SAEConfig
from .latents import Latents

SHARDED_ACTIVATIONS = ("topk", "jumprelu")


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) in the forward, identity in the backward: the partial outputs of the
    ranks' latent shards add up to the output, and every rank computes the same loss on it."""

    @staticmethod
    def forward(ctx, t, dist):
        out = t.contiguous().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class CrossLayerTranscoder(nn.Module):
    arch = "clt"
    saelens_arch = saelens_reads = saelens_trained_as = ""
    sparsify_reads = None
    unit_norm_decoder = False

    def __init__(self, cfg: SAEConfig, *, device=None, dtype=None, seed: int = 0, shard=None, dist=None):
        super().__init__()
        if not cfg.is_clt:
            raise SAEError(f"CrossLayerTranscoder needs arch clt or skip_clt, got {cfg.arch!r}")
        self.cfg = cfg
        self.act = cfg.act
        self.rank, self.world = shard or (0, 1)
        if cfg.m % self.world:
            raise SAEError(f"--latents {cfg.m} must split evenly over {self.world} ranks (latents per layer)")
        if self.world > 1 and self.act not in SHARDED_ACTIVATIONS:
            raise SAEError(
                f"sharded CLTs take activation {' or '.join(SHARDED_ACTIVATIONS)}, not {self.act}: "
                "BatchTopK's batch threshold would need every rank's candidates"
            )
        self.dist = dist
        self.n_layers = L = cfg.blocks
        self.m_local = m = cfg.m // self.world
        dtype = dtype or getattr(torch, cfg.dtype)
        kw = {"device": device, "dtype": dtype}
        d, d_out = cfg.d, cfg.d_target
        self.W_enc = nn.Parameter(torch.empty(L, m, d, **kw))
        self.b_enc = nn.Parameter(torch.zeros(L, m, **kw))
        self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros((t + 1) * m, d_out, **kw)) for t in range(L)])
        self.b_dec = nn.Parameter(torch.zeros(L, d_out, **kw))
        self.W_skip = nn.Parameter(torch.zeros(L, d_out, d, **kw)) if cfg.arch == "skip_clt" else None
        if self.act == "jumprelu":
            self.log_threshold = nn.Parameter(
                torch.full((L, m), math.log(cfg.init_threshold), device=device, dtype=torch.float32)
            )
        if self.act == "batchtopk":
            t = -1.0 if cfg.threshold is None else float(cfg.threshold)
            self.register_buffer("threshold", torch.full((L,), t, dtype=torch.float32, device=device))
        self.reset_parameters(seed)
        self.cand_k = [64] * L
        self.encode_rows = 0
        self.dense_rows = 0

    # -- what the trainer asks of every dictionary ----------------------------------------------

    @property
    def uses_auxk(self) -> bool:
        return self.act in ("topk", "batchtopk")

    renorm_decoder = False

    @property
    def total_latents(self) -> int:
        """Latents this rank holds, all layers: the length of the trainer's fired counters."""
        return self.n_layers * self.m_local

    @property
    def sharded(self) -> bool:
        return self.world > 1

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Each layer's encoder ``U(-1/sqrt(d), 1/sqrt(d))`` (the whole ``[L, cfg.m, d]`` drawn
        from ``seed``, this rank's rows kept, so a sharded run starts where a 1-rank one
        does); decoders, ``W_skip`` and biases zero."""
        g = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(self.cfg.d)
        full = (torch.rand(self.n_layers, self.cfg.m, self.cfg.d, generator=g) * 2 - 1) * bound
        lo = self.rank * self.m_local
        self.W_enc.copy_(full[:, lo : lo + self.m_local])
        for p in (self.b_enc, self.b_dec, *self.W_dec):
            p.zero_()
        if self.W_skip is not None:
            self.W_skip.zero_()

    def sync_state(self, dist) -> None:
        """Data-parallel BatchTopK: every rank moved its thresholds by its own batch; average."""
        if self.act == "batchtopk" and not self.sharded:
            dist.all_reduce(self.threshold)
            self.threshold /= dist.get_world_size()

    def export_config(self) -> SAEConfig:
        return self.cfg

    def saelens_state(self):
        raise SAEError(
            "SAELens holds no cross-layer transcoders: export with actstore.sae.circuit_tracer.to_circuit_tracer"
        )

    def sparsify_state(self):
        raise SAEError("sparsify holds no cross-layer transcoders: export with to_circuit_tracer")

    def encoder_state(self) -> dict:
        return {"cand_k": list(self.cand_k), "encode_rows": self.encode_rows, "dense_rows": self.dense_rows}

    def load_encoder_state(self, state: dict) -> None:
        ck = state["cand_k"]
        self.cand_k = [int(v) for v in ck] if isinstance(ck, list) else [int(ck)] * self.n_layers
        self.encode_rows, self.dense_rows = int(state["encode_rows"]), int(state["dense_rows"])

    def take_encode_counts(self) -> dict:
        out = {"encode_rows": self.encode_rows, "dense_rows": self.dense_rows}
        self.encode_rows = self.dense_rows = 0
        return out

    # -- initialization from the data ---------------------------------------------------------

    @torch.no_grad()
    def init_b_dec(self, mean: torch.Tensor) -> None:
        """``mean [L, d_out]``: each target's mean (training scale)."""
        self.b_dec.copy_(mean.reshape(self.b_dec.shape).to(self.b_dec))

    @torch.no_grad()
    def center_encoder(self, mean: torch.Tensor) -> None:
        """``mean [L, d]``: each layer's encoder centred on its source's mean (sparsify's
        transcoder init: ``b_enc[s] = -W_enc[s] mean_s``)."""
        mean = mean.reshape(self.n_layers, self.cfg.d).float().to(self.W_enc.device)
        self.b_enc.copy_(-torch.einsum("lmd,ld->lm", self.W_enc.float(), mean).to(self.b_enc.dtype))

    @torch.no_grad()
    def init_from_batch(self, x: torch.Tensor, l0: float) -> None:
        """JumpReLU: each layer's thresholds at the pre-activation quantile where about
        ``l0`` of its latents fire per row, from a batch ``x [n, L, d]`` (training scale)."""
        if self.act != "jumprelu":
            return
        m = self.cfg.m
        if not 0 < l0 <= m:
            raise SAEError(f"init l0 must be in (0, m={m}], got {l0}")
        n = x.shape[0]
        kth = min(n, max(1, math.ceil(n * (1 - l0 / m))))
        for s in range(self.n_layers):
            for lo in range(0, self.m_local, 4096):
                sl = slice(lo, lo + 4096)
                q = pre_activations(x[:, s].to(self.W_enc.device), self.W_enc[s, sl], self.b_enc[s, sl], None)
                q = q.kthvalue(kth, dim=0).values
                theta = torch.where(q > 0, q, torch.full_like(q, self.cfg.init_threshold))
                self.log_threshold[s, sl] = theta.float().log()

    # -- encode and decode ----------------------------------------------------------------------

    def _check(self, x: torch.Tensor, name: str = "x", width: int | None = None) -> None:
        width = width or self.cfg.d
        if x.dim() != 3 or x.shape[1:] != (self.n_layers, width):
            raise SAEError(
                f"a CLT's {name} must be [n, L={self.n_layers}, {width}] (one row per layer), got {tuple(x.shape)}"
            )

    def _note_candidates(self, s: int, row_ptr: torch.Tensor, may_go_dense: bool = True) -> None:
        counts = row_ptr[1:] - row_ptr[:-1]
        m = self.m_local
        self.encode_rows += counts.numel()
        self.dense_rows += dense_fallback_rows(counts, self.cand_k[s], m)
        c = adapt_cand_k(counts, m)
        self.cand_k[s] = c if may_go_dense else min(c, DENSE_CAND_K, m)

    def _global_topk_keep(self, v: torch.Tensor, k: int) -> torch.Tensor:
        """Sharded TopK: ``[n, k']`` bool, which of this rank's local top values ``v`` are in
        each row's top ``k`` over every rank (one all-gather of the values)."""
        parts = [torch.empty_like(v) for _ in range(self.world)]
        self.dist.all_gather(parts, v.detach().contiguous())
        every = torch.cat(parts, dim=1)
        kth = every.topk(min(k, every.shape[1]), dim=1).values[:, -1:]
        return v.detach() >= kth

    def encode_layer(self, s: int, x_s: torch.Tensor, dead_mask: torch.Tensor | None = None, weights=None):
        """Layer ``s``'s code of ``x_s [n, d]``: ``(row_ptr, cols, vals)`` over this rank's
        ``m`` latents (cols in ``[0, m)``), or TopK's ``(values [n, k], indices [n, k])`` on
        one rank; plus, with ``dead_mask [m]``, the AuxK ``(values, indices)`` of the dead
        latents (else None), and JumpReLU's L0 term (else None). ``weights``: layer ``s``'s
        ``(W_enc, b_enc, theta)`` views, when the caller took every layer's at once."""
        c = self.cfg
        W, b, theta = weights or self._layer_weights(s)
        k_aux = min(c.k_aux or 1, self.m_local)
        aux = l0 = None
        if self.act == "topk":
            k = min(c.k, self.m_local)
            if dead_mask is not None:
                v, i, av, ai = topk_encode(x_s, W, b, k, None, dead_mask=dead_mask, k_aux=k_aux)
                aux = (av, ai)
            else:
                v, i = topk_encode(x_s, W, b, k, None)
            if not self.sharded:
                return (v, i), aux, None
            keep = self._global_topk_keep(v, c.k)
            if aux is not None:
                akeep = self._global_topk_keep(aux[0], c.k_aux)
                aux = (aux[0] * akeep, aux[1])
            code = _csr_of_masked(v, i, keep)
        elif self.act == "batchtopk":
            fixed = not self.training and float(self.threshold[s]) >= 0
            extra = {} if dead_mask is None else {"dead_mask": dead_mask, "k_aux": k_aux}
            out = batch_topk_encode(
                x_s, W, b, c.k, None, threshold=float(self.threshold[s]) if fixed else None,
                cand_k=self.cand_k[s], **extra,
            )  # fmt: skip
            rp, cols, vals, t = out[:4]
            self._note_candidates(s, rp, may_go_dense=False)
            if self.training:
                with torch.no_grad():
                    t = t.float()
                    cur = self.threshold[s]
                    self.threshold[s] = torch.where(cur < 0, t, 0.99 * cur + 0.01 * t)
            if dead_mask is not None:
                aux = (out[4], out[5])
            code = (rp, cols, vals)
        else:
            rp, cols, vals, _, l0 = jumprelu_encode(x_s, W, b, theta, None, eps=c.bandwidth, cand_k=self.cand_k[s])
            self._note_candidates(s, rp)
            code = (rp, cols, vals)
        return code, aux, l0

    def _layer_weights(self, s: int):
        theta = self.log_threshold[s].exp() if self.act == "jumprelu" else None
        return self.W_enc[s], self.b_enc[s], theta

    def _all_layer_weights(self) -> list:
        """Every layer's ``(W_enc, b_enc, theta)``, from one ``unbind`` per parameter: indexing
        ``W_enc[s]`` once per layer would make the backward allocate and sum L zero gradients
        of the whole ``[L, m, d]`` (measured: a quarter of a 16-layer step's CPU time)."""
        thetas = self.log_threshold.exp().unbind(0) if self.act == "jumprelu" else [None] * self.n_layers
        return list(zip(self.W_enc.unbind(0), self.b_enc.unbind(0), thetas))

    def _encode_all(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None):
        """Every layer's code merged into one :class:`Latents` over ``L * m`` (rows in layer
        order), with each layer's AuxK pair and L0 term."""
        self._check(x)
        m, L = self.m_local, self.n_layers
        codes, auxes, l0s = [], [], []
        weights = self._all_layer_weights()
        for s in range(L):
            dm = None if dead_mask is None else dead_mask[s * m : (s + 1) * m]
            code, aux, l0 = self.encode_layer(s, x[:, s], dm, weights[s])
            codes.append(code)
            auxes.append(aux)
            l0s.append(l0)
        if len(codes[0]) == 2:  # TopK on one rank: top form [n, L k], layer-major columns
            v = torch.cat([cv for cv, _ in codes], dim=1)
            i = torch.cat([ci + s * m for s, (_, ci) in enumerate(codes)], dim=1)
            return Latents.from_topk(v, i, L * m), auxes, l0s
        return _merge_csr(codes, m, x.shape[0]), auxes, l0s

    def encode(self, x: torch.Tensor, dense: bool = False):
        """``x [n, L, d]`` -> the code, one :class:`Latents` over ``L * m`` (column ``s*m + i``
        is latent ``i`` of layer ``s``); ``[n, L * m]`` with ``dense``."""
        lat = self._encode_all(x)[0]
        return lat.dense() if dense else lat

    @property
    def _top_form(self) -> bool:
        """Whether this CLT's codes are TopK's top form ``[n, L k]`` (TopK on one rank)."""
        return self.act == "topk" and not self.sharded

    def _partial(self, lat: Latents, t: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Target ``t`` from this rank's latents of layers ``<= t`` (a prefix of every row of
        ``lat``; ``rows``: its entries' rows, for a CSR code): one sparse decode, ``[n, d_out]``
        float32, no bias."""
        if self._top_form:  # the first (t+1) k columns
            kk = (t + 1) * min(self.cfg.k, self.m_local)
            v = lat.vals.view(lat.n, -1)[:, :kk]
            i = lat.cols.view(lat.n, -1)[:, :kk]
            return sparse_decode(v.contiguous(), i.contiguous(), self.W_dec[t])
        keep = lat.cols < (t + 1) * self.m_local
        row_ptr = _row_ptr(torch.bincount(rows[keep], minlength=lat.n))
        return csr_decode(row_ptr, lat.cols[keep], lat.vals[keep], self.W_dec[t])

    def output(self, x: torch.Tensor, latents: Latents | None = None) -> torch.Tensor:
        """``[n, L, d_out]`` float32: every target, from the sources ``x [n, L, d]``."""
        lat = self.encode(x) if latents is None else latents
        rows = None if self._top_form else lat.rows()  # once for every target's prefix
        parts = torch.stack([self._partial(lat, t, rows) for t in range(self.n_layers)], dim=1)
        if self.sharded:
            parts = _SumOverRanks.apply(parts, self.dist)
        out = parts + self.b_dec.float()
        if self.W_skip is not None:
            out = out + torch.einsum("nld,lod->nlo", x.float(), self.W_skip.float())
        return out

    def decode_target(self, t: int, codes: list, x_t: torch.Tensor | None = None) -> torch.Tensor:
        """Target ``t`` ``[n, d_out]`` float32 from the codes of layers ``0..t`` (each a
        :class:`Latents` over this layer's ``m``, as :meth:`layer_latents` gives) and, for
        skip_clt, the source ``x_t [n, d]``: what a spliced forward needs at layer ``t``."""
        lat = _merge_csr([(c.row_ptr, c.cols, c.vals) for c in codes], self.m_local, codes[0].n)
        y = csr_decode(lat.row_ptr, lat.cols, lat.vals, self.W_dec[t]) + self.b_dec[t].float()
        if self.W_skip is not None:
            if x_t is None:
                raise SAEError("a skip CLT's output needs its source rows (W_skip x)")
            y = y + x_t.float() @ self.W_skip[t].float().t()
        return y

    def layer_latents(self, s: int, x_s: torch.Tensor) -> Latents:
        """Layer ``s``'s code of ``x_s [n, d]`` as :class:`Latents` over ``m`` (eval use)."""
        code = self.encode_layer(s, x_s)[0]
        if len(code) == 2:
            return Latents.from_topk(code[0], code[1], self.m_local)
        return Latents(*code, self.m_local)

    def level_outputs(self, latents: Latents, x: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``[y_hat [n, L * d_out]]``: the evaluation's one level, flattened by target."""
        return [self.output(x, latents).flatten(1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(x)

    def block_names(self) -> list[str]:
        return list(self.cfg.targets)

    # -- the loss -------------------------------------------------------------------------------

    def _sum_ranks(self, t: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(t, self.dist) if self.sharded else t

    def loss(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None, target: torch.Tensor | None = None) -> dict:
        """``x [n, L, d]`` sources, ``target [n, L, d_out]``; see the module docstring."""
        if target is None:
            raise SAEError(f"a CLT reconstructs its targets: pass target= rows [n, L, {self.cfg.d_target}]")
        self._check(target, "target", self.cfg.d_target)
        use_aux = dead_mask is not None and bool(dead_mask.any())
        if self.sharded and dead_mask is not None:  # every rank must take the same path (its collectives)
            flag = torch.tensor([int(use_aux)], device=dead_mask.device)
            self.dist.all_reduce(flag, op=self.dist.ReduceOp.MAX)
            use_aux = bool(flag)
        lat, auxes, l0s = self._encode_all(x, dead_mask if use_aux else None)
        y = target.float()
        y_hat = self.output(x, lat)
        err = y_hat - y
        mse = err.pow(2).sum(2).mean(0)  # [L]
        var = (y - y.mean(0)).pow(2).sum(2).mean(0).clamp_min(1e-12)  # [L]
        fvu = mse / var
        out = {"mse": mse.mean(), "layer_fvu": fvu.detach(), "total_variance": var.sum()}
        if self.act == "jumprelu":
            l0 = self._sum_ranks(torch.stack(l0s))  # [L]: each layer's L0 over every rank's latents
            out["l0_penalty"] = l0.mean()
            out["loss"] = mse.mean() + self.cfg.l0_coef * l0.mean()
            out["fvu"] = fvu.mean()
        else:
            out["fvu"] = fvu.mean()
            aux = torch.zeros((), device=y.device)
            if use_aux:
                m = self.m_local
                terms = []
                for s, pair in enumerate(auxes):
                    n_dead = dead_mask[s * m : (s + 1) * m].sum()
                    if self.sharded:
                        n_dead = self._sum_ranks(n_dead.float())
                    diag = self.W_dec[s][s * m : (s + 1) * m]
                    e_hat = self._sum_ranks(sparse_decode(pair[0], pair[1], diag))
                    sse = (e_hat + err[:, s].detach()).pow(2).sum(1).mean()  # residual y - y_hat = -err
                    scale = (n_dead.float() / self.cfg.k_aux).clamp(max=1.0)
                    terms.append(scale * sse / var[s])
                aux = torch.stack(terms).mean()
            out["aux_fvu"] = aux
            out["loss"] = out["fvu"] + self.cfg.aux_coef * aux
        out["latents"] = lat
        out["l0"] = self._sum_ranks(torch.tensor(float(lat.l0()), device=y.device)) if self.sharded else None
        return out

    # -- scale folding and sharding ---------------------------------------------------------------

    @torch.no_grad()
    def fold_scale(self) -> None:
        """Fold each layer's training normalization (source ``x_s' = a_s x_s``, target
        ``y_l' = c_l y_l``) into the weights: ``W_enc[s] *= a_s``, ``W_dec[l], b_dec[l] /=
        c_l``, ``W_skip[l] *= a_l / c_l``; the latents (and thresholds) are unchanged."""
        a = torch.tensor(self.cfg.source_scales, dtype=torch.float32)
        c = torch.tensor(self.cfg.target_scales, dtype=torch.float32)
        if bool((a == 1).all() and (c == 1).all()):
            return
        if not bool(torch.isfinite(torch.cat([a, c])).all() and (torch.cat([a, c]) > 0).all()):
            raise SAEError("cannot fold the CLT's scales: each must be a positive finite number")
        dev = self.W_enc.device
        self.W_enc.mul_(a.view(-1, 1, 1).to(dev, self.W_enc.dtype))
        for t, w in enumerate(self.W_dec):
            w.div_(float(c[t]))
        self.b_dec.div_(c.view(-1, 1).to(dev, self.b_dec.dtype))
        if self.W_skip is not None:
            self.W_skip.mul_((a / c).view(-1, 1, 1).to(dev, self.W_skip.dtype))
        self.cfg.source_scales = [1.0] * self.n_layers
        self.cfg.target_scales = [1.0] * self.n_layers

    @torch.no_grad()
    def gathered(self) -> "CrossLayerTranscoder":
        """A 1-rank CLT (on rank 0's device, CPU here) holding every rank's latents, in the
        1-rank order (rank r's latents of each layer are ``r*m : (r+1)*m``); every rank must
        call it. Itself when not sharded."""
        if not self.sharded:
            return self
        full = type(self)(self.cfg, device="cpu", dtype=self.W_enc.dtype)

        def cat(t: torch.Tensor, dim: int) -> torch.Tensor:
            parts = [torch.empty_like(t) for _ in range(self.world)]
            self.dist.all_gather(parts, t.detach().contiguous())
            return torch.cat(parts, dim=dim).cpu()

        full.W_enc.copy_(cat(self.W_enc, 1))
        full.b_enc.copy_(cat(self.b_enc, 1))
        for t, w in enumerate(self.W_dec):
            g = cat(w.view(t + 1, self.m_local, -1), 1)  # [t+1, m, d_out], source-major
            full.W_dec[t].copy_(g.reshape(-1, g.shape[-1]))
        full.b_dec.copy_(self.b_dec.detach().cpu())
        if self.W_skip is not None:
            full.W_skip.copy_(self.W_skip.detach().cpu())
        if self.act == "jumprelu":
            full.log_threshold.copy_(cat(self.log_threshold, 1))
        return full


def _row_ptr(counts: torch.Tensor) -> torch.Tensor:
    """CSR ``row_ptr [n+1]`` from entries per row ``[n]``."""
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _csr_of_masked(v: torch.Tensor, i: torch.Tensor, keep: torch.Tensor):
    """``(row_ptr, cols, vals)`` of the entries of ``v, i [n, k]`` where ``keep``."""
    return _row_ptr(keep.sum(1)), i[keep], v[keep]


def _merge_csr(codes: list, m: int, n: int) -> Latents:
    """Per-layer CSR codes ``(row_ptr, cols, vals)`` (cols in ``[0, m)``) -> one CSR over
    ``len(codes) * m`` whose rows keep layer order (``csr_from_coo``'s stable sort)."""
    rows = torch.cat([rows_of(rp, c.numel()) for rp, c, _ in codes])
    cols = torch.cat([c + s * m for s, (_, c, _) in enumerate(codes)])
    vals = torch.cat([v for _, _, v in codes])
    return Latents(*csr_from_coo(n, rows, cols, vals), len(codes) * m)
