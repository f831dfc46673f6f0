"""Dictionary comparison (actstore/analysis/dictionary.py): MCS both ways and nearest
neighbours against a dense einsum on small SAEs, with tiles that do and do not divide m."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore.analysis._pass import AnalysisError
from actstore.analysis.dictionary import mcs, neighbours
from actstore.sae import SAEConfig, TopKSAE


def _sae(m, d=16, seed=0):
    return TopKSAE(SAEConfig("topk", d, m, k=4), seed=seed)


def _dense(a, b):
    A = a.W_dec.detach().double()
    B = b.W_dec.detach().double()
    A, B = A / A.norm(dim=1, keepdim=True), B / B.norm(dim=1, keepdim=True)
    return torch.einsum("id,jd->ij", A, B).numpy()


@pytest.mark.parametrize("tile", [7, 32, 4096])
def test_mcs_against_dense(tile):
    a, b = _sae(40, seed=1), _sae(64, seed=2)
    with torch.no_grad():
        b.W_dec[5] = a.W_dec[3] * 2.0  # a planted shared direction
    got = mcs(a, b, tile=tile)
    c = _dense(a, b)
    np.testing.assert_allclose(got.ab, c.max(1), atol=1e-6)
    np.testing.assert_allclose(got.ba, c.max(0), atol=1e-6)
    assert np.array_equal(got.ab_index, c.argmax(1)) and np.array_equal(got.ba_index, c.argmax(0))
    assert got.ab[3] == pytest.approx(1.0, abs=1e-6) and got.ab_index[3] == 5 and got.ba_index[5] == 3


@pytest.mark.parametrize("tile", [5, 4096])
def test_neighbours_against_dense(tile):
    a = _sae(33, seed=3)
    cos, idx = neighbours(a, k=4, tile=tile)
    c = _dense(a, a)
    np.fill_diagonal(c, -np.inf)
    want = np.argsort(-c, axis=1, kind="stable")[:, :4]
    assert np.array_equal(idx, want)
    np.testing.assert_allclose(cos, np.take_along_axis(c, want, 1), atol=1e-6)


def test_widths_must_match():
    with pytest.raises(AnalysisError, match="widths"):
        mcs(_sae(8, d=16), _sae(8, d=12))
