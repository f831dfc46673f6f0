"""From documents to fixed batches: packing or truncation, BOS/EOS policy, keep-masks,
the token budget and the split across ranks.

Every window is ``context`` tokens long (the last ones padded); a batch is
``batch_size`` windows. Batch ``g`` (counting from 0 over the whole data) belongs to rank
``g % world``, so ranks need no coordination and together see every batch once. The
budget ``max_tokens`` counts kept tokens over the global batch order; the batch that
reaches it keeps only the tokens up to it. Everything here is a pure function of the
data and the options, which is what lets a re-run skip exactly the committed batches.

Columns per token: ``doc`` (document index in the data), ``pos`` (position in the
document; -1 for inserted BOS/separator tokens), ``flags`` (FLAG_BOS, FLAG_PAD,
FLAG_SPECIAL). Pad tokens are never kept; ``drop`` names other flags to leave out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from ..store.errors import CaptureError
from ..store.format import FLAG_BOS, FLAG_PAD, FLAG_SPECIAL


@dataclass(frozen=True)
class Policy:
    """How documents become windows. bos: prepend | none; eos: none | doc (after each
    document in the packed stream) | window (closing each window, BERT's [SEP])."""

    context: int
    packing: str = "pack"  # pack | truncate
    bos: str = "prepend"
    eos: str = "none"
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int = 0

    def body(self) -> int:
        n = self.context - (self.bos == "prepend") - (self.eos == "window")
        if n < 1:
            raise CaptureError(
                f"context {self.context} leaves no room for tokens after BOS/EOS; use a longer --context"
            )
        return n


def default_policy(tokenizer, context: int, packing: str = "pack", bos: str = "auto", eos: str = "auto") -> Policy:
    """Resolve 'auto' from the tokenizer: BERT-style tokenizers (CLS/SEP, no BOS) get
    ``[CLS] ... [SEP]`` windows; tokenizers with a BOS get it prepended and EOS between
    documents; without a tokenizer nothing is inserted."""
    t = tokenizer
    bos_id = getattr(t, "bos_token_id", None) if t is not None else None
    cls_id = getattr(t, "cls_token_id", None) if t is not None else None
    eos_id = getattr(t, "eos_token_id", None) if t is not None else None
    sep_id = getattr(t, "sep_token_id", None) if t is not None else None
    bert = bos_id is None and cls_id is not None and sep_id is not None
    if bos == "auto":
        bos = "prepend" if (bos_id is not None or bert) else "none"
    if eos == "auto":
        eos = "window" if bert else ("doc" if eos_id is not None else "none")
    first = cls_id if bert else bos_id
    last = sep_id if bert else eos_id
    if packing not in ("pack", "truncate"):
        raise CaptureError(f"packing {packing!r}: use pack or truncate")
    if bos not in ("prepend", "none") or eos not in ("none", "doc", "window"):
        raise CaptureError(f"bos {bos!r} / eos {eos!r}: bos is prepend|none|auto, eos is none|doc|window|auto")
    if bos == "prepend" and first is None:
        raise CaptureError("bos=prepend but the tokenizer has no BOS/CLS token; use --bos none")
    if eos != "none" and last is None:
        raise CaptureError(f"eos={eos} but the tokenizer has no EOS/SEP token; use --eos none")
    pad = getattr(t, "pad_token_id", None) if t is not None else None
    pad = pad if pad is not None else (last if last is not None else 0)
    return Policy(context, packing, bos, eos, first, last, int(pad))


@dataclass
class Batch:
    """One batch: ``index`` in the global order; ids/doc/pos/flags ``[B, L]``; keep
    ``[B*L]`` bool (rows to store); ``n_keep`` kept rows."""

    index: int
    ids: np.ndarray
    doc: np.ndarray
    pos: np.ndarray
    flags: np.ndarray
    keep: np.ndarray
    n_keep: int


def iter_windows(docs: Iterable[list[int]], p: Policy) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield (ids, doc, pos, flags), each ``[context]``, per window."""
    body = p.body()
    L = p.context

    def window(tok, doc, pos, flg):
        ids = np.full(L, p.pad_id, np.int64)
        d = np.full(L, -1, np.int64)
        ps = np.full(L, -1, np.int64)
        fl = np.full(L, FLAG_PAD, np.uint8)
        i = 0
        if p.bos == "prepend":
            ids[0], d[0], fl[0] = p.bos_id, doc[0], FLAG_BOS
            i = 1
        n = len(tok)
        ids[i : i + n], d[i : i + n], ps[i : i + n], fl[i : i + n] = tok, doc, pos, flg
        i += n
        if p.eos == "window":
            ids[i], d[i], fl[i] = p.eos_id, doc[-1], FLAG_SPECIAL
        return ids, d, ps, fl

    if p.packing == "truncate":
        for k, toks in enumerate(docs):
            toks = toks[:body]
            if len(toks) == 0:
                continue
            n = len(toks)
            yield window(
                np.asarray(toks, np.int64), np.full(n, k, np.int64), np.arange(n, dtype=np.int64), np.zeros(n, np.uint8)
            )
        return
    # Packing: one stream of tokens (with an EOS after each document if eos == "doc"),
    # cut into bodies of equal length; the last partial window is padded.
    buf_t, buf_d, buf_p, buf_f, have = [], [], [], [], 0
    for k, toks in enumerate(docs):
        n = len(toks)
        if n == 0:
            continue
        t = np.asarray(toks, np.int64)
        d = np.full(n, k, np.int64)
        ps = np.arange(n, dtype=np.int64)
        f = np.zeros(n, np.uint8)
        if p.eos == "doc":
            t, d = np.append(t, p.eos_id), np.append(d, k)
            ps, f = np.append(ps, -1), np.append(f, np.uint8(FLAG_SPECIAL))
        buf_t.append(t), buf_d.append(d), buf_p.append(ps), buf_f.append(f)
        have += len(t)
        if have >= body:
            T, D, P, F = (np.concatenate(b) for b in (buf_t, buf_d, buf_p, buf_f))
            cut = (len(T) // body) * body
            for s in range(0, cut, body):
                yield window(T[s : s + body], D[s : s + body], P[s : s + body], F[s : s + body])
            buf_t, buf_d, buf_p, buf_f = [T[cut:]], [D[cut:]], [P[cut:]], [F[cut:]]
            have = len(T) - cut
    if have:
        T, D, P, F = (np.concatenate(b) for b in (buf_t, buf_d, buf_p, buf_f))
        yield window(T, D, P, F)


def iter_batches(
    windows: Iterable,
    batch_size: int,
    *,
    max_tokens: int | None = None,
    drop_flags: int = 0,
    rank: int = 0,
    world: int = 1,
) -> Iterator[Batch]:
    """Group windows into batches and yield this rank's, with keep-masks and the budget
    applied. Pad rows are never kept; rows with any bit of ``drop_flags`` are dropped."""
    if batch_size < 1:
        raise CaptureError(f"batch size {batch_size}: must be at least 1")
    drop = np.uint8(drop_flags | FLAG_PAD)
    seen = 0
    group: list = []
    g = 0

    def make(items, g):
        nonlocal seen
        ids, doc, pos, flags = (np.stack([w[i] for w in items]) for i in range(4))
        keep = (flags.reshape(-1) & drop) == 0
        if max_tokens is not None:
            room = max_tokens - seen
            if keep.sum() > room:
                keep[np.flatnonzero(keep)[room:]] = False
        n = int(keep.sum())
        seen += n
        return Batch(g, ids, doc, pos, flags, keep, n)

    for w in windows:
        if max_tokens is not None and seen >= max_tokens:
            return
        group.append(w)
        if len(group) == batch_size:
            b = make(group, g)
            group = []
            if g % world == rank and b.n_keep:
                yield b
            g += 1
    if group and (max_tokens is None or seen < max_tokens):
        b = make(group, g)
        if g % world == rank and b.n_keep:
            yield b
