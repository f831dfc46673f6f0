"""``top``: exact top-k per latent (value descending, lower row first), and merge invariance."""

import numpy as np

from actstore.analysis import Top
from helpers.analysis_store import code_batches


def brute_top(f, k):
    vals = np.zeros((f.shape[1], k), np.float32)
    rows = np.full((f.shape[1], k), -1, np.int64)
    for j in range(f.shape[1]):
        r = np.flatnonzero(f[:, j] > 0)
        o = np.lexsort((r, -f[r, j]))[:k]
        vals[j, : o.size], rows[j, : o.size] = f[r[o], j], r[o]
    return vals, rows


def test_top_exact_with_ties(full):
    a, cols, f = full
    vals, rows = brute_top(f, 5)
    assert (a.array("top/rows") == rows).all() and (a.array("top/values") == vals).all()
    assert (a.array("top/rows")[0] == -1).all()  # the dead latent: padding
    # the repeated rows tie with their originals: the lower row comes first
    j = int(np.argmax(f[10:20].max(0)))
    assert a[j].top == [(float(v), int(r)) for v, r in zip(vals[j], rows[j]) if r >= 0]


def test_top_merge_order_invariance():
    g = np.random.default_rng(0)
    f = np.where(g.random((400, 12)) < 0.3, np.round(g.random((400, 12)) * 4, 1), 0).astype(np.float32)  # many ties
    batches = code_batches(f, 50)
    want = brute_top(f, 6)
    for _ in range(4):
        parts = [Top(12, k=6) for _ in range(3)]
        for b in batches:
            parts[int(g.integers(3))].update(b)  # any split, any order
        order = g.permutation(3)
        acc = parts[order[0]]
        for i in order[1:]:
            acc.merge(parts[i])
        got = acc.result()
        assert (got["top/rows"] == want[1]).all() and (got["top/values"] == want[0]).all()
