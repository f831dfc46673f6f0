"""Layer diffs (actstore/analysis/layer_diff.py) on the planted store, against brute force
on the materialized rows: norm statistics and histogram, mean delta, top rows and windows,
the logit lens of the mean delta and of the top rows against a dense product."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore import open as open_store
from actstore.analysis._pass import AnalysisError
from actstore.analysis.groups import resolve
from actstore.analysis.layer_diff import layer_diff
from helpers.repr_store import write_repr_store


class Unembed(torch.nn.Module):
    """A causal-LM-shaped stub: output embeddings [V, d] and a final norm with a gain."""

    def __init__(self, v=40, d=16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lm_head = torch.nn.Linear(d, v, bias=False)
        self.lm_head.weight.data = torch.randn(v, d, generator=g)
        self.model = torch.nn.Module()
        self.model.norm = torch.nn.LayerNorm(d)
        self.model.norm.weight.data = torch.rand(d, generator=g) + 0.5

    def get_output_embeddings(self):
        return self.lm_head


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("diff") / "s"
    cols = write_repr_store(path)
    s = open_store(path)
    return s, cols, resolve(s)


def test_against_brute_force(planted, tmp_path):
    s, c, rg = planted
    m = Unembed()
    res = layer_diff(s, "a", "b", rg, top_k=6, window=2, bins=8, model=m, lens_t=5, block_rows=37)
    keep = np.flatnonzero(c["flags"] == 0)
    delta = c["b"][keep].astype(np.float64) - c["a"][keep].astype(np.float64)
    nrm = np.linalg.norm(delta, axis=1)
    assert res.count == keep.size
    assert res.norm_mean == pytest.approx(nrm.mean(), rel=1e-12)
    assert res.norm_std == pytest.approx(nrm.std(), rel=1e-9)
    assert (res.norm_min, res.norm_max) == pytest.approx((nrm.min(), nrm.max()), rel=1e-12)
    np.testing.assert_allclose(res.mean_delta, delta.mean(0), rtol=1e-12, atol=1e-14)
    assert res.hist.sum() == keep.size
    # The edges from their definition (docs/FORMAT.md: equal bins over [0, max]), not the
    # code's: 8 bins of width max / 8, bin i holding [edge i, edge i+1), the max in the last.
    edges = np.array([k / 8 * nrm.max() for k in range(9)])
    np.testing.assert_allclose(res.hist_edges, edges, rtol=1e-12, atol=1e-12)
    idx = np.minimum((nrm[:, None] >= edges[None, 1:]).sum(1), 7)
    assert np.array_equal(res.hist, np.bincount(idx, minlength=8))
    order = keep[np.lexsort((keep, -nrm))][:6]
    assert np.array_equal(res.top_rows, order)
    for r, win, tok in zip(res.top_rows, res.top_window_rows, res.top_tokens):
        assert win[2] == r and (c["doc"][win[win >= 0]] == c["doc"][r]).all()
        np.testing.assert_array_equal(tok[win >= 0], c["token"][win[win >= 0]])
    # The lens against a dense product with the norm's gain folded in.
    w = m.lm_head.weight.detach().double().numpy()
    g = m.model.norm.weight.detach().double().numpy()
    dense = (delta.mean(0) * g) @ w.T
    assert np.array_equal(res.lens["mean/top_ids"], np.argsort(-dense)[:5])
    rows_dense = ((c["b"][res.top_rows] - c["a"][res.top_rows]).astype(np.float64) * g) @ w.T
    assert np.array_equal(res.lens["rows/bottom_ids"], np.argsort(rows_dense, axis=1)[:, :5])
    out = res.save(tmp_path / "o")
    import zarr

    assert zarr.open_group(str(out), mode="r")["diff/top/rows"][...].tolist() == order.tolist()


def test_widths_must_match(planted):
    s, _, rg = planted
    with pytest.raises(AnalysisError, match="differ in width"):
        layer_diff(s, "a", "c", rg)
