"""The CPU references of the sparse products (the fallback every CPU training step runs)
against the brute-force dense formula, on each of their paths: entries in row order (the
embedding_bag form), unsorted entries (the dense GEMM and the sliced gathers), empty rows
and latents, a shift, float32 and float64; and the same sums, bit for bit, run to run."""

import pytest
import torch

from actstore.reference import sparse_matmul as S


def _coo(n, m, nnz_per_row, sort=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, nnz_per_row * 2, (n,), generator=g)
    counts[::7] = 0  # empty rows
    rows = torch.repeat_interleave(torch.arange(n), counts)
    cols = torch.randint(0, m // 2, (rows.numel(),), generator=g)  # the upper half of the latents never appears
    if not sort:
        p = torch.randperm(rows.numel(), generator=g)
        rows, cols = rows[p], cols[p]
    return rows, cols


@pytest.mark.parametrize("sort", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dense_max", [S._DENSE_MAX, 0])  # 0: the sliced-gather path for unsorted entries
def test_gather_dot_and_transposed_product_match_the_dense_formula(sort, dtype, dense_max, monkeypatch):
    monkeypatch.setattr(S, "_DENSE_MAX", dense_max)
    n, m, d = 64, 96, 12
    rows, cols = _coo(n, m, 5, sort)
    g = torch.Generator().manual_seed(1)
    G, X = (torch.randn(n, d, generator=g, dtype=dtype) for _ in range(2))
    W = torch.randn(m, d, generator=g, dtype=dtype)
    vals = torch.randn(rows.numel(), generator=g, dtype=dtype)
    shift = torch.randn(d, generator=g, dtype=dtype)
    tol = {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-4, "rtol": 1e-4}
    got = S.csr_gather_dot_reference(rows, cols, G, W)
    assert got.dtype == dtype
    torch.testing.assert_close(got, (G @ W.t())[rows, cols], **tol)
    dense = torch.zeros(n, m, dtype=dtype).index_put_((rows, cols), vals, accumulate=True)
    gw, gb = S.csr_transpose_matmul_reference(rows, cols, vals, X, m, shift)
    torch.testing.assert_close(gb, dense.sum(0), **tol)
    torch.testing.assert_close(gw, dense.t() @ X - dense.sum(0)[:, None] * shift, **tol)
    assert not gw[m // 2 :].any()  # latents with no entry get exactly zero
    gw2, _ = S.csr_transpose_matmul_reference(rows, cols, vals, X, m, shift)
    assert torch.equal(gw, gw2)  # the same order of sums every run (resume is bit-identical)


def test_no_entries():
    z = torch.zeros(0, dtype=torch.long)
    assert S.csr_gather_dot_reference(z, z, torch.randn(3, 4), torch.randn(5, 4)).shape == (0,)
    gw, gb = S.csr_transpose_matmul_reference(z, z, torch.zeros(0), torch.randn(3, 4), 5)
    assert gw.shape == (5, 4) and not gw.any() and not gb.any()


def test_strided_index_views_are_accepted():
    """A slice of a [n, k] index tensor (Matryoshka's AuxK keeps min(k_aux, n_dead) columns)
    reshapes to a strided view: the embedding_bag path must take it."""
    n, m, d, k = 16, 40, 8, 6
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, m, (n, k), generator=g)[:, :1]
    rows, cols = torch.arange(n), idx.reshape(-1)
    G, W = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)
    torch.testing.assert_close(S.csr_gather_dot_reference(rows, cols, G, W), (G @ W.t())[rows, cols])
