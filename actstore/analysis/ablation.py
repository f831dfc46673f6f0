"""``ablation`` ("ablated text"): how much each earlier token of an example makes its latent fire.

Examples: for latent l, its first ``examples`` (E) ``top`` rows (so ``top`` must run too),
for every latent, or only the latents in ``latents``, or only the ``busiest`` N (those that
fire on most rows, by ``stats``' counts: the latents ``actstore report --pages N`` gives pages;
``feature_stats.busiest``). For an example at store row r the model
input is the prefix of store rows ``r-A .. r`` (``tokens`` A), cut at the first row of
another document (the rule of ``contexts``' windows). One forward on the prefix gives the
base activation ``a0`` of l at r's position; for each of the up to A earlier tokens, one
forward on the prefix with that token deleted gives ``a_j``; the result is ``a_j - a0``.
The base is measured on the prefix, not read from the store: the captured row may have
seen a longer context.

Forwards: ``batch`` sequences at once, right-padded (id 0) with an attention mask (a causal
model's kept positions do not see the padding), each stopped at the hooked module by
:class:`~actstore.models.HookRecorder`; only the example's position is encoded with the SAE
(float32 activation, clamped at 0 like the pass). Sequences run sorted by length, so the
result is fixed for a given ``batch``.

Output, ``[m, E]`` unless said: ``ablation/rows`` int64 (example rows, -1 pad),
``ablation/base`` float32, ``ablation/delta [m, E, A]`` float32 (column c: the token at
offset ``c - A`` from the example deleted, so the last column is the token just before
it; NaN where the prefix has no token or for padding), ``ablation/tokens [m, E, A+1]``
int32 (the prefix, right-aligned: the last column is the example's token; -1 pad).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ..models import HookRecorder, LoadedModel, resolve_hooks
from ._pass import AnalysisError
from .contexts import windows

PAD_ID = 0


def options(opts: dict) -> dict:
    """The ablation options, checked and with defaults (part of the analysis identity)."""
    unknown = set(opts) - {"examples", "tokens", "batch", "latents", "busiest"}
    if unknown:
        raise AnalysisError(
            f"bad job option: ablation takes examples, tokens, batch, latents, busiest, not {sorted(unknown)}"
        )
    lat = opts.get("latents")
    out = {
        "examples": int(opts.get("examples", 3)),
        "tokens": int(opts.get("tokens", 8)),
        "batch": int(opts.get("batch", 64)),
        "latents": None if lat is None else sorted({int(x) for x in lat}),
    }
    if opts.get("busiest") is not None:
        # Only when given: the options are the analysis identity, and every analysis written
        # before this option existed must keep its identity (and so resume).
        if lat is not None:
            raise AnalysisError("ablation takes latents or busiest, not both")
        n = opts["busiest"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise AnalysisError(f"ablation.busiest must be a positive number of latents, got {n!r}")
        out["busiest"] = n
    return out


class Forward:
    """``fwd(seqs, targets, lats) -> [n] float32``: latent ``lats[i]``'s activation at position
    ``targets[i]`` of token sequence ``seqs[i]``, run through ``model`` up to ``hook`` and the SAE."""

    def __init__(self, loaded: LoadedModel, hook: str, sae, batch: int = 64):
        sites = resolve_hooks(loaded.model, hook)
        if len(sites) != 1:
            raise AnalysisError(f"hook {hook!r} names {len(sites)} modules of the model: ablation needs exactly one")
        self.loaded, self.sae, self.batch = loaded, sae.eval(), int(batch)
        p = next(sae.parameters())
        self.sae_device, self.sae_dtype = p.device, p.dtype
        mp = next(loaded.model.parameters(), None)
        self.device = mp.device if mp is not None else torch.device("cpu")
        self.recorder = HookRecorder(loaded.model, sites, stop_early=True)

    @torch.no_grad()
    def __call__(self, seqs: list[list[int]], targets, lats) -> np.ndarray:
        targets, lats = np.asarray(targets, np.int64), np.asarray(lats, np.int64)
        out = np.zeros(len(seqs), np.float32)
        order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
        for a in range(0, len(order), self.batch):
            idx = order[a : a + self.batch]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), PAD_ID, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, : len(seqs[i])] = torch.as_tensor(seqs[i], dtype=torch.long)
                mask[j, : len(seqs[i])] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            acts = next(iter(self.recorder.run(partial(self.loaded.forward, ids, mask)).values()))
            x = acts[torch.arange(len(idx), device=acts.device), torch.as_tensor(targets[idx], device=acts.device)]
            f = self.sae.encode(x.reshape(len(idx), -1).to(self.sae_device, self.sae_dtype), dense=True)
            v = f[torch.arange(len(idx), device=f.device), torch.as_tensor(lats[idx], device=f.device)]
            out[idx] = v.float().clamp_min(0).cpu().numpy()
        return out

    def close(self) -> None:
        self.recorder.remove()


def ablation(store, top_rows: np.ndarray, fwd: Forward, vocab: int, *, examples, tokens, batch, latents):
    """The ``ablation/*`` arrays for the examples ``top_rows [m, K]`` (-1 pad)."""
    del batch  # fwd was built with it
    m = top_rows.shape[0]
    e_n, a_n = int(examples), int(tokens)
    rows = np.full((m, e_n), -1, np.int64)
    take = top_rows[:, :e_n]
    rows[:, : take.shape[1]] = take
    if latents is not None:
        bad = [x for x in latents if not 0 <= x < m]
        if bad:
            raise AnalysisError(f"unknown latent(s) {bad} in ablation latents: this SAE has latents 0..{m - 1}")
        keep = np.zeros(m, bool)
        keep[latents] = True
        rows[~keep] = -1
    base = np.zeros((m, e_n), np.float32)
    delta = np.full((m, e_n, a_n), np.nan, np.float32)
    toks = np.full((m, e_n, a_n + 1), -1, np.int32)
    flat = rows.reshape(-1)
    live = np.flatnonzero(flat >= 0)
    if live.size:

        def doc_of(idx):
            return store.tokens(idx)["doc"].numpy().astype(np.int64)

        win = windows(doc_of, store.rows, flat[live], a_n)[:, : a_n + 1]  # [X, A+1], right-aligned prefix
        uniq = np.unique(win[win >= 0])
        tok_of = store.tokens(uniq)["token"].numpy().astype(np.int64)
        if tok_of.size and (tok_of.min() < 0 or tok_of.max() >= vocab):
            raise AnalysisError(
                f"an ablation window holds token id {int(tok_of.max() if tok_of.max() >= vocab else tok_of.min())} "
                f"outside the model's vocabulary of {vocab}: use the model the store was captured with"
            )
        ptok = np.where(win >= 0, tok_of[np.searchsorted(uniq, np.maximum(win, 0))], -1)
        seqs, targets, lats, slots = [], [], [], []  # slot: (example x, column c or -1 for the base)
        for x, fi in enumerate(live):
            p = ptok[x][ptok[x] >= 0].tolist()
            lat = int(fi // e_n)
            seqs.append(p)
            targets.append(len(p) - 1)
            lats.append(lat)
            slots.append((x, -1))
            for j in range(len(p) - 1):
                seqs.append(p[:j] + p[j + 1 :])
                targets.append(len(p) - 2)
                lats.append(lat)
                slots.append((x, a_n + j - (len(p) - 1)))
        vals = fwd(seqs, targets, lats)
        b = np.zeros(live.size, np.float32)
        d = np.full((live.size, a_n), np.nan, np.float32)
        for (x, c), v in zip(slots, vals):
            if c < 0:
                b[x] = v
        for (x, c), v in zip(slots, vals):
            if c >= 0:
                d[x, c] = v - b[x]
        base.reshape(-1)[live] = b
        delta.reshape(-1, a_n)[live] = d
        toks.reshape(-1, a_n + 1)[live] = ptok
    return {"ablation/rows": rows, "ablation/base": base, "ablation/delta": delta, "ablation/tokens": toks}
