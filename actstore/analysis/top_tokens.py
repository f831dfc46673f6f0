"""``top_tokens``: the input tokens each latent fires on most.

State: a sparse table over the (latent, token) pairs seen firing, kept sorted by
``key = latent << 32 | token`` with ``count`` int64 and the activation ``sum`` float64; one
table per block, merged through a :class:`~actstore.analysis._tree.BlockTree` so that the
float sums are bit-identical under any split into shares. Rows with no token id (-1) are
skipped. Memory: the number of distinct pairs (bounded by m x vocabulary).

Output ``[m, t]``: ``top_tokens/tokens`` int32 (-1 pad), ``top_tokens/counts`` int64 and
``top_tokens/mean`` float64 (mean activation over those rows), by count descending, ties
by lower token id.
"""

from __future__ import annotations

import numpy as np

from ._pass import Batch, Reducer
from ._tree import BlockTree


def _table(keys: np.ndarray, counts: np.ndarray, sums: np.ndarray) -> dict:
    uk, inv = np.unique(keys, return_inverse=True)
    return {
        "keys": uk,
        "count": np.bincount(inv, counts, uk.size).astype(np.int64),
        "sum": np.bincount(inv, sums, uk.size),
    }


def _combine(a: dict, b: dict) -> dict:
    # bincount adds in index order, so a shared key sums to a + b exactly as two leaves would.
    return _table(
        np.concatenate([a["keys"], b["keys"]]),
        np.concatenate([a["count"], b["count"]]),
        np.concatenate([a["sum"], b["sum"]]),
    )


class TopTokens(Reducer):
    name = "top_tokens"

    def __init__(self, m: int, *, t: int = 10):
        super().__init__(m)
        self.t = int(t)
        self.tree = BlockTree(_combine)

    def config(self) -> dict:
        return {"t": self.t}

    def update(self, b: Batch) -> None:
        tok = b.token[b.ent_row].astype(np.int64)
        ok = tok >= 0
        keys = (b.cols[ok].astype(np.uint64) << np.uint64(32)) | tok[ok].astype(np.uint64)
        self.tree.push(b.block, _table(keys, np.ones(keys.size, np.float64), b.vals[ok].astype(np.float64)))

    def merge(self, other: "TopTokens") -> None:
        self.tree.merge(other.tree)

    def state_dict(self) -> dict:
        return self.tree.state_dict("tree/")

    def load_state_dict(self, sd: dict) -> None:
        self.tree.load_state_dict(sd, "tree/")

    def result(self) -> dict:
        empty = {"keys": np.zeros(0, np.uint64), "count": np.zeros(0, np.int64), "sum": np.zeros(0, np.float64)}
        tab = self.tree.total(empty)
        lat = (tab["keys"] >> np.uint64(32)).astype(np.int64)
        tok = (tab["keys"] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        o = np.lexsort((tok, -tab["count"], lat))
        lat, tok, cnt, sm = lat[o], tok[o], tab["count"][o], tab["sum"][o]
        start = np.searchsorted(lat, lat, "left")
        rank = np.arange(lat.size) - start
        k = rank < self.t
        tokens = np.full((self.m, self.t), -1, np.int32)
        counts = np.zeros((self.m, self.t), np.int64)
        mean = np.zeros((self.m, self.t), np.float64)
        tokens[lat[k], rank[k]] = tok[k]
        counts[lat[k], rank[k]] = cnt[k]
        mean[lat[k], rank[k]] = sm[k] / cnt[k]
        return {"top_tokens/tokens": tokens, "top_tokens/counts": counts, "top_tokens/mean": mean}
