"""Normalized PCA (actstore/analysis/pca.py) on the planted store: covariance, components
and explained variance against numpy on the materialized matrix, standardization with the
store's statistics, shares merging bit for bit, the hashed sample, the SVG, and principal
angles against scipy."""

from __future__ import annotations

import numpy as np
import pytest

from actstore import open as open_store
from actstore.analysis.groups import resolve
from actstore.analysis.pca import _moments_pass, merge_nodes, pca, principal_angles, splitmix64
from helpers.repr_store import write_repr_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("pca") / "s"
    cols = write_repr_store(path)
    s = open_store(path)
    return s, cols, resolve(s, sources=True)


def _selected(c):
    return c["flags"] == 0


def _check_components(res, h, x, k):
    cov = np.cov(x, rowvar=False)
    np.testing.assert_allclose(res.cov[h], cov, rtol=1e-9, atol=1e-12)
    w, v = np.linalg.eigh(cov)
    np.testing.assert_allclose(res.explained_variance[h], w[::-1][:k], rtol=1e-9)
    np.testing.assert_allclose(res.explained_ratio[h], w[::-1][:k] / np.trace(cov), rtol=1e-9)
    for i in range(k):
        assert abs(float(res.components[h][i] @ v[:, -1 - i])) == pytest.approx(1.0, abs=1e-8)
        assert res.components[h][i][np.abs(res.components[h][i]).argmax()] > 0


def test_pca_against_numpy(planted):
    s, c, rg = planted
    res = pca(s, "a,c", rg, k=4, sample=50, block_rows=37)
    keep = _selected(c)
    for h in "ac":
        _check_components(res, h, c[h][keep].astype(np.float64), 4)
    assert res.count == int(keep.sum())
    # The planted direction is the first component of a (its variance is 1 + 1.5^2).
    assert abs(float(res.components["a"][0] @ c["u"])) > 0.95


def test_standardize_uses_store_stats(planted):
    s, c, rg = planted
    res = pca(s, "b", rg, k=3, standardize=True, sample=0, block_rows=64)
    st = s.stats("b")
    z = (c["b"].astype(np.float64) - np.asarray(st["mean"], np.float64)) / np.asarray(st["std"], np.float64)
    _check_components(res, "b", z[_selected(c)], 3)


def test_sample_projections_and_svg(planted, tmp_path):
    s, c, rg = planted
    res = pca(s, "a", rg, k=3, sample=40, seed=5, block_rows=37)
    keep = np.flatnonzero(_selected(c))
    want = np.sort(keep[np.argsort(splitmix64(keep ^ np.int64(5)), kind="stable")[:40]])
    assert np.array_equal(res.sample_rows, want)
    assert np.array_equal(res.sample_group, np.where(c["doc"][want] < c["half"], 0, 1))
    x = c["a"][want].astype(np.float64)
    np.testing.assert_allclose(res.projections["a"], (x - res.mean["a"]) @ res.components["a"].T, rtol=1e-5, atol=1e-5)
    out = res.save(tmp_path / "o")
    svg = (out / "pca_0.svg").read_text()
    assert svg.count("<circle") == 40 and "pos" in svg and "neg" in svg


def test_shares_merge_bit_identical(planted):
    s, _, rg = planted
    one = merge_nodes(["a", "b"], [_moments_pass(s, ["a", "b"], rg, range(0, 9), 37, None, None, 10, 0)]).total({})
    parts = [_moments_pass(s, ["a", "b"], rg, r, 37, None, None, 10, 0) for r in (range(0, 5), range(5, 9))]
    two = merge_nodes(["a", "b"], parts).total({})
    assert all(one[k].tobytes() == two[k].tobytes() for k in one)


def test_principal_angles_against_scipy(planted):
    from scipy.linalg import subspace_angles

    s, _, rg = planted
    res = pca(s, "a,b", rg, k=5, sample=0)
    got = principal_angles(res.components["a"], res.components["b"])
    np.testing.assert_allclose(got, np.sort(subspace_angles(res.components["a"].T, res.components["b"].T)), atol=1e-7)
    assert got[0] < 0.1  # b = 2a + small noise: the leading subspaces nearly coincide
    g = np.random.default_rng(0)
    a, b = g.standard_normal((3, 16)), g.standard_normal((4, 16))
    np.testing.assert_allclose(principal_angles(a, b), np.sort(subspace_angles(a.T, b.T)), atol=1e-10)
