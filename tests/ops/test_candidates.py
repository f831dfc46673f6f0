"""``ops/_candidates``: the size of ``cand_k`` from the last batch, the count of rows sent to
the dense fallback, and ``threshold_candidates``' paths (kernel rows, kernel + dense rows,
dense by choice) against the dense scores; the kernel runs in the interpreter on the CPU."""

from __future__ import annotations

import pytest
import torch

from actstore.ops._candidates import DENSE_CAND_K, MIN_CAND_K, adapt_cand_k, dense_fallback_rows, threshold_candidates


def test_adapt_cand_k_follows_the_99th_percentile_not_outliers():
    m = 16384
    counts = torch.full((1000,), 40)
    counts[:5] = 5000  # a few outlier rows (BOS) do not set it
    assert adapt_cand_k(counts, m) == 64  # 1.25 x 40 = 50 -> 64
    counts[:20] = 5000  # 2% of the rows: now they do, and that is past DENSE_CAND_K
    assert adapt_cand_k(counts, m) == m
    assert adapt_cand_k(torch.zeros(10, dtype=torch.long), m) == MIN_CAND_K
    assert adapt_cand_k(torch.full((10,), DENSE_CAND_K * 4 // 5), m) == DENSE_CAND_K
    assert adapt_cand_k(torch.full((10,), DENSE_CAND_K * 4 // 5 + 1), m) == m
    assert adapt_cand_k(torch.full((10,), 60), 100) == 100  # 75 -> 128 >= m: dense


def test_dense_fallback_rows_counts_rows_at_or_above_cand_k():
    c = torch.tensor([0, 7, 8, 9, 100])
    assert dense_fallback_rows(c, 8, 64) == 3 and dense_fallback_rows(c, 64, 64) == 5


@pytest.mark.gpu
@pytest.mark.parametrize("cand_k", [8, 96])  # 96 = m: dense by choice, no kernel pass
def test_threshold_candidates_exact_with_planted_overflow_rows(cand_k, device):
    n, d, m = 24, 32, 96
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=g)
    W = torch.randn(m, d, generator=g) / d**0.5
    b = torch.full((m,), -2.0)  # a normal row has a few scores above 0
    heavy = torch.tensor([2, 5, 11, 17])
    x[heavy] *= 8  # these hold many more: they overflow cand_k=8 and are recomputed densely
    dense = x @ W.t() + b
    counts = (dense > 0).sum(1)
    planted = torch.zeros(n, dtype=torch.bool)
    planted[heavy] = True
    assert ((counts >= 8) == planted).all() and counts.sum() > 0
    rows, cols, scores = threshold_candidates(x.to(device), W.to(device), b.to(device), cand_k, 0.0)
    rows, cols, scores = rows.cpu(), cols.cpu(), scores.cpu()
    assert sorted(zip(rows.tolist(), cols.tolist())) == sorted(map(tuple, (dense > 0).nonzero().tolist()))
    torch.testing.assert_close(scores, dense[rows, cols], atol=1e-5, rtol=1e-5)
    assert dense_fallback_rows(counts, cand_k, m) == (4 if cand_k == 8 else n)
