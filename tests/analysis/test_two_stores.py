"""Steering vectors between two stores (actstore/analysis/two_stores.py): the mean difference
of store B's rows and store A's against NumPy, the AUROC against sklearn, top rows from B."""

from __future__ import annotations

import numpy as np
import pytest

from actstore import open as open_store
from actstore.analysis._pass import AnalysisError
from actstore.analysis.groups import resolve
from actstore.analysis.two_stores import steering_between
from helpers.repr_store import write_repr_store


def test_between_two_stores(tmp_path):
    ca = write_repr_store(tmp_path / "a", seed=3)
    cb = write_repr_store(tmp_path / "b", seed=4)
    sa, sb = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    sv = steering_between(sa, sb, "a,b", resolve(sa), resolve(sb), top_k=3, block_rows=50, pca=True)
    ka, kb = ca["flags"] == 0, cb["flags"] == 0
    for h in "ab":
        ref = cb[h][kb].astype(np.float64).mean(0) - ca[h][ka].astype(np.float64).mean(0)
        np.testing.assert_allclose(sv.vectors[h].numpy(), ref, rtol=1e-6, atol=1e-6)
    assert (sv.count_pos, sv.count_neg) == (int(kb.sum()), int(ka.sum()))
    # Paired PCA: document k of B minus document k of A, per-document means, against NumPy.
    n = min(ca["lens"].size, cb["lens"].size)
    ma = np.stack([ca["a"][ka & (ca["doc"] == d)].astype(np.float64).mean(0) for d in range(n)])
    mb = np.stack([cb["a"][kb & (cb["doc"] == d)].astype(np.float64).mean(0) for d in range(n)])
    w, vecs = np.linalg.eigh((mb - ma).T @ (mb - ma))
    ref = vecs[:, -1] * np.sign(((mb - ma) @ vecs[:, -1]).sum())
    np.testing.assert_allclose(sv.pca["a"].numpy(), ref, atol=1e-5)
    from sklearn.metrics import roc_auc_score

    v = (sv.vectors["a"] / sv.vectors["a"].norm()).numpy()
    score = np.concatenate([cb["a"][kb] @ v, ca["a"][ka] @ v])
    y = np.r_[np.ones(kb.sum()), np.zeros(ka.sum())]
    assert sv.auroc[0] == pytest.approx(roc_auc_score(y, score), abs=1e-6)
    rows_b = np.flatnonzero(kb)
    want = rows_b[np.lexsort((rows_b, -(cb["a"][kb] @ v).astype(np.float64)))][:3]
    assert np.array_equal(sv.top["a"]["rows"], want)
    with pytest.raises(AnalysisError, match="one group"):
        steering_between(sa, sb, "a", resolve(sa, sources=True), resolve(sb))
