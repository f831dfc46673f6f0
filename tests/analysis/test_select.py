"""``keep_best`` / ``BestTable`` against a brute-force sort: ties, truncated packed keys, any
buffer capacity; and ``stats``' two document-run paths agree."""

import numpy as np
import pytest

from actstore.analysis._pass import Batch
from actstore.analysis._select import BestTable
from actstore.analysis.feature_stats import FeatureStats

NOKEY = np.iinfo(np.uint64).max
PAD = {"keys": NOKEY, "rows": -1, "vals": 0.0}


def primary(a):
    return a["keys"], 64


def brute(groups, keys, rows, vals, n_groups, k):
    want = {"keys": np.full((n_groups, k), NOKEY, np.uint64), "rows": np.full((n_groups, k), -1, np.int64)}
    want["vals"] = np.zeros((n_groups, k), np.float32)
    for gi in range(n_groups):
        i = np.flatnonzero(groups == gi)
        o = i[np.lexsort((rows[i], keys[i]))][:k]
        want["keys"][gi, : o.size], want["rows"][gi, : o.size], want["vals"][gi, : o.size] = keys[o], rows[o], vals[o]
    return want


@pytest.mark.parametrize("capacity", [1, 37, None])
@pytest.mark.parametrize("n_groups", [3, 5000])
def test_best_table_matches_brute_force(capacity, n_groups):
    g = np.random.default_rng(n_groups)
    n, k = 20000, 4
    groups = g.integers(0, n_groups, n)
    # Keys that share their top bits and differ only in the low ones (the packed sort must
    # fall back to the full key), plus exact duplicates (the row breaks those ties).
    keys = (np.uint64(1) << np.uint64(60)) + g.integers(0, 8, n).astype(np.uint64)
    keys[::7] = g.integers(0, 2**63, keys[::7].size).astype(np.uint64)
    rows = g.permutation(n).astype(np.int64)
    vals = g.random(n).astype(np.float32)
    t = BestTable(
        {
            "keys": np.full((n_groups, k), NOKEY, np.uint64),
            "rows": np.full((n_groups, k), -1, np.int64),
            "vals": np.zeros((n_groups, k), np.float32),
        },
        PAD,
        primary,
        capacity=capacity,
    )
    for a in range(0, n, 1500):  # blocks, each filtered against the (possibly stale) K-th key
        sl = slice(a, a + 1500)
        tk, tr = t.kth("keys")[groups[sl]], t.kth("rows")[groups[sl]]
        hit = (keys[sl] < tk) | ((keys[sl] == tk) & (rows[sl] < tr)) | (tr < 0)
        t.push(groups[sl][hit], {"keys": keys[sl][hit], "rows": rows[sl][hit], "vals": vals[sl][hit]})
    want = brute(groups, keys, rows, vals, n_groups, k)
    for name in want:
        assert (t.table[name] == want[name]).all(), name
    if n_groups == 5000:
        assert (t.table["rows"] == -1).any()  # some groups stay part-filled: padding kept


def test_doc_runs_mark_path_equals_sorted_path():
    g = np.random.default_rng(1)
    m, n = 64, 300
    for doc in (np.repeat(np.arange(10), 30), np.sort(g.integers(0, 40, n)), np.zeros(n, np.int64)):
        nnz = g.integers(0, 6, n)
        row_ptr = np.r_[0, np.cumsum(nnz)]
        ent_row = np.repeat(np.arange(n), nnz)
        cols = np.concatenate([np.sort(g.choice(m, c, replace=False)) for c in nnz]).astype(np.int64)
        b = Batch(0, np.arange(n), row_ptr, ent_row, cols, np.ones(cols.size, np.float32), doc, doc, doc, doc, m)
        fs = FeatureStats(m)
        fast = fs._doc_runs(b)
        slow = fs._doc_runs_sorted(b)
        for x, y in zip(fast, slow):
            assert (x == y).all()
        assert fast[0].size > 0
