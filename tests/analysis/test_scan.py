"""Vector scan (actstore/analysis/scan.py) on the planted store against brute force:
histograms, top and bottom rows per vector, windows with the projection at each token; a
width mismatch is a one-line error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore import open as open_store
from actstore.analysis._pass import AnalysisError
from actstore.analysis.groups import resolve
from actstore.analysis.scan import scan
from helpers.repr_store import write_repr_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("scan") / "s"
    cols = write_repr_store(path)
    s = open_store(path)
    return s, cols, resolve(s, sources=True)


def test_against_brute_force(planted, tmp_path):
    s, c, rg = planted
    g = np.random.default_rng(1)
    vecs = np.stack([c["u"], g.standard_normal(16), -c["u"]]).astype(np.float32)
    res = scan(s, "a", vecs, rg, k=4, bins=6, window=2, block_rows=37)
    keep = np.flatnonzero(c["flags"] == 0)
    proj = (torch.from_numpy(c["a"][keep]) @ torch.from_numpy(vecs).T).numpy()
    assert res.count == keep.size
    for i in range(3):
        top = keep[np.lexsort((keep, -proj[:, i].astype(np.float64)))][:4]
        bot = keep[np.lexsort((keep, proj[:, i].astype(np.float64)))][:4]
        assert np.array_equal(res.arrays["top_rows"][i], top)
        assert np.array_equal(res.arrays["bottom_rows"][i], bot)
        # The edges from their definition (docs/FORMAT.md: equal bins over [min, max] of the
        # projections), not the code's: 6 bins, bin b holding [edge b, edge b+1), the max in the last.
        p = proj[:, i].astype(np.float64)
        edges = np.array([p.min() + k / 6 * (p.max() - p.min()) for k in range(7)])
        np.testing.assert_allclose(res.edges[i], edges, rtol=1e-6, atol=1e-6)
        idx = np.minimum((p[:, None] >= edges[None, 1:]).sum(1), 5)
        assert np.array_equal(res.hist[i], np.bincount(idx, minlength=6))
    # u and -u: the top rows of one are the bottom rows of the other.
    assert np.array_equal(res.arrays["top_rows"][0], res.arrays["bottom_rows"][2])
    win, wp = res.arrays["top_window_rows"][1], res.arrays["top_window_proj"][1]
    full = c["a"].astype(np.float32) @ vecs[1]
    for w_rows, w_proj in zip(win, wp):
        ok = w_rows >= 0
        np.testing.assert_allclose(w_proj[ok], full[w_rows[ok]], rtol=1e-5, atol=1e-5)
    assert res.save(tmp_path / "o").exists()


def test_width_mismatch(planted):
    s, _, rg = planted
    with pytest.raises(AnalysisError, match="do not match hook") as e:
        scan(s, "c", np.ones((2, 16)), rg)
    assert "\n" not in str(e.value) and "width 16" in str(e.value) and "width 8" in str(e.value)
