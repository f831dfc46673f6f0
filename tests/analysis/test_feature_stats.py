"""``stats`` against brute force over the planted store (dense code, numpy)."""

import numpy as np

import actstore.analysis as an
from helpers.analysis_store import BLOCK, M, dense_code, docs_contiguous_count


def test_stats_match_brute_force(planted, relu, tmp_path):
    path, cols = planted
    out = an.run(path, relu, ["stats"], tmp_path / "o", block_rows=BLOCK)
    a = an.open(out)
    f = dense_code(relu, cols["x"])
    fd = f.astype(np.float64)
    fires = f > 0
    assert (a.array("latents/count") == fires.sum(0)).all()
    assert (a.array("latents/max") == f.max(0)).all()
    np.testing.assert_allclose(a.array("latents/sum"), fd.sum(0), rtol=1e-12)
    np.testing.assert_allclose(a.array("latents/sumsq"), (fd * fd).sum(0), rtol=1e-12)
    assert (a.array("latents/doc_count") == docs_contiguous_count(f, cols["doc"])).all()
    # The edges from their definition (docs/FORMAT.md, the module docstring), not from the
    # code: 8 bins per decade from 1e-4 to 1e4, i.e. 10^(e/8) for e = -32..32, with an
    # underflow bin (0, 1e-4) first and an overflow bin [1e4, inf) last; bin i holds
    # [edge i-1, edge i).
    edges = np.array([10.0 ** (e / 8) for e in range(-32, 33)])
    np.testing.assert_allclose(a.array("latents/hist_edges"), edges, rtol=1e-14)
    hist = np.zeros((M, edges.size + 1), np.int64)
    for j in range(M):
        v = fd[fires[:, j], j]
        hist[j] = np.bincount((v[:, None] >= edges[None, :]).sum(1), minlength=edges.size + 1)
    assert (a.array("latents/hist") == hist).all()
    assert hist[:, 1:-1].sum() > 0  # the planted activations land in the inner bins, not only under/overflow
    assert (a.array("summary/l0_hist") == np.bincount(fires.sum(1), minlength=M + 1)).all()
    dens = fires.mean(0)
    assert (a.array("latents/dead") == (dens == 0)).all() and (a.array("latents/dense") == (dens > 0.1)).all()
    # log10(density) of the live latents in bins of 0.2 from -10 to 0 (the last bin closed;
    # below -10 in the first).
    ld_edges = np.arange(-50, 1) / 5
    np.testing.assert_allclose(a.array("summary/log_density_edges"), ld_edges, rtol=0, atol=1e-12)
    logd = np.log10(dens[dens > 0])
    ld = np.bincount(np.clip((logd[:, None] >= ld_edges[None, 1:-1]).sum(1), 0, 49), minlength=50)
    assert (a.array("summary/log_density_hist") == ld).all() and ld.sum() == (dens > 0).sum()
    assert a.attrs["summary"]["stats"]["rows"] == f.shape[0] and 0 < (dens > 0).sum() < M  # some dead, some live
    v = a[int(np.argmax(dens))].stats
    assert v["count"] == fires.sum(0).max() and not v["dead"]


def test_stats_row_selection(planted, relu, tmp_path):
    path, cols = planted
    f = dense_code(relu, cols["x"])
    out = an.run(path, relu, {"stats": {}}, tmp_path / "o", block_rows=BLOCK, rows=(50, 250), drop_flags="bos")
    keep = np.zeros(f.shape[0], bool)
    keep[50:250] = True
    keep &= cols["flags"] == 0
    a = an.open(out)
    assert a.attrs["rows_seen"] == keep.sum()
    assert (a.array("latents/count") == (f[keep] > 0).sum(0)).all()
    out2 = an.run(path, relu, ["stats"], tmp_path / "o2", block_rows=BLOCK, docs=[1, 3])
    keep = np.isin(cols["doc"], [1, 3])
    assert (an.open(out2).array("latents/count") == (f[keep] > 0).sum(0)).all()


def test_busiest_ranks_by_count_ties_to_the_lower_id_within_the_given_latents():
    from actstore.analysis.feature_stats import busiest

    count = np.array([5, 9, 0, 9, 7, 5], np.int64)
    assert busiest(count, 3).tolist() == [1, 3, 4]  # 9, 9, 7; returned in id order
    assert busiest(count, 2, among=[5, 0, 4]).tolist() == [0, 4]  # 7, then the tie 5/5 goes to 0
    assert busiest(count, 10, among=[2, 5]).tolist() == [2, 5] and busiest(count, 0).tolist() == []
