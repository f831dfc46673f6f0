"""``bins``: exact counts and samples in the three modes, and uniform samples (chi-square)."""

import numpy as np

from actstore.analysis import Bins
from actstore.analysis.bins import quantile_groups, sample_keys
from helpers.analysis_store import JOBS, code_batches

OPT = JOBS["bins"]


def bottom(keys_rows, s):
    o = sorted(keys_rows)[:s]
    return [r for _, r in o]


def check_mode(a, f, mode, bin_of, nb):
    s = OPT["samples"]
    cnt, rows = a.array(f"bins/{mode}/count"), a.array(f"bins/{mode}/rows")
    for j in range(f.shape[1]):
        r = np.flatnonzero(f[:, j] > 0)
        b = bin_of(j, f[r, j])
        keys = sample_keys(OPT["seed"], np.full(r.size, j), r)
        for k in range(nb):
            inb = b == k
            assert cnt[j, k] == inb.sum()
            want = bottom(list(zip(keys[inb].tolist(), r[inb].tolist())), s)
            assert rows[j, k][rows[j, k] >= 0].tolist() == want


def test_abs_and_equal_bins_exact(full):
    a, _, f = full
    w, na, ne = OPT["width"], OPT["n_abs"], OPT["n_equal"]
    assert (a.array("bins/abs/count").sum(1) == (f > 0).sum(0)).all()
    assert a.array("bins/abs/count")[:, 1:].sum() > 0  # the planted activations reach several bins
    check_mode(a, f, "abs", lambda j, v: np.minimum(np.floor(v.astype(np.float64) / w), na - 1), na)
    mx = f.max(0).astype(np.float64)
    check_mode(a, f, "equal", lambda j, v: np.clip(np.floor(v.astype(np.float64) * ne / mx[j]), 0, ne - 1), ne)
    v = a[5].bins["equal"]
    assert v[-1]["hi"] == float(np.float32(f[:, 5].max())) and v[-1]["count"] >= 1
    # The edges from their definition (the module docstring, docs/FORMAT.md), not the code's:
    # abs: [0, w), [w, 2w), ..., the last bin open (w = 4, 4 bins in the planted jobs);
    assert (w, na) == (4.0, 4)
    assert a.array("bins/abs/edges").tolist() == [0.0, 4.0, 8.0, 12.0, np.inf]
    # equal: n_equal bins of width max / n_equal on [0, max], the max itself in the last bin.
    eq = a.array("bins/equal/edges")
    assert eq.shape == (f.shape[1], ne + 1)
    np.testing.assert_allclose(eq, [[k / ne * m for k in range(ne + 1)] for m in mx], rtol=1e-12, atol=0)
    assert (eq[:, 0] == 0).all() and (eq[:, -1] == mx).all()


def test_quantile_bins(full):
    a, _, f = full
    q, s = OPT["quantiles"], OPT["samples"]
    n = (f > 0).sum(0)
    cnt = a.array("bins/quantile/count")
    assert (cnt.sum(1) == n).all() and (cnt.max(1) - cnt.min(1) <= 1).all()
    rows, vals = a.array("bins/quantile/rows"), a.array("bins/quantile/values")
    for j in np.flatnonzero(n):
        r = np.flatnonzero(f[:, j] > 0)
        keys = sample_keys(OPT["seed"], np.full(r.size, j), r)
        kept = np.array(bottom(list(zip(keys.tolist(), r.tolist())), q * s))  # the latent's uniform sample
        kept = kept[np.lexsort((kept, f[kept, j]))]
        got = rows[j][rows[j] >= 0]
        assert set(got.tolist()) <= set(kept.tolist())
        flat = vals[j][rows[j] >= 0]
        assert (np.diff(flat) >= 0).all()  # groups go up in value
        # The edges from their definition (the module docstring): the sample sorted by value,
        # cut into q groups of sizes nk*(g+1)//q - nk*g//q; edge g is group g's lowest value
        # (an empty group repeats the edge before it), the last edge the sample's max.
        ks, nk = f[kept, j].astype(np.float64), kept.size
        want = []
        for g in range(q):
            lo, hi = nk * g // q, nk * (g + 1) // q
            want.append(ks[lo] if hi > lo else (want[-1] if want else 0.0))
        assert a.array("bins/quantile/edges")[j].tolist() == [*want, ks.max()]


def test_bin_samples_uniform_chi_square():
    """One bin of 20 entries, S=5, 2000 seeds: each entry's inclusion count against
    Binomial(2000, 1/4). X = sum (o-e)^2 / (T p (1-p)) is about chi2(19) * 20/19 (fixed-size
    samples are negatively correlated); 50 is above its 0.999 quantile (~46)."""
    n, s, seeds = 20, 5, 2000
    f = np.zeros((n, 1), np.float32)
    f[:, 0] = 0.5
    batches = code_batches(f, 7)
    inc = np.zeros(n)
    for seed in range(seeds):
        r = Bins(1, n_abs=1, quantiles=1, n_equal=0, samples=s, seed=seed)
        for b in batches:
            r.update(b)
        got = r.result()["bins/abs/rows"][0, 0]
        assert (got >= 0).all() and np.unique(got).size == s
        inc[got] += 1
    p = s / n
    x = ((inc - seeds * p) ** 2).sum() / (seeds * p * (1 - p))
    assert x < 50, x
    assert x > 5  # and not suspiciously even


def test_bins_merge_order_invariance():
    g = np.random.default_rng(1)
    f = np.where(g.random((300, 6)) < 0.4, g.random((300, 6)) * 3, 0).astype(np.float32)
    batches = code_batches(f, 40)
    whole = Bins(6, width=1.0, n_abs=3, quantiles=2, samples=4, seed=3)
    for b in batches:
        whole.update(b)
    want = whole.result()
    parts = [Bins(6, width=1.0, n_abs=3, quantiles=2, samples=4, seed=3) for _ in range(3)]
    for b in batches:
        parts[int(g.integers(3))].update(b)
    parts[2].merge(parts[0])
    parts[2].merge(parts[1])
    got = parts[2].result()
    for k in want:
        assert np.array_equal(got[k], want[k]), k


def _quantile_groups_loop(rows, vals, q, s):
    m = rows.shape[0]
    qr, qv, qe = np.full((m, q, s), -1, np.int64), np.zeros((m, q, s), np.float32), np.zeros((m, q + 1))
    for lat in range(m):
        nk = int((rows[lat] >= 0).sum())
        if not nk:
            continue
        o = np.lexsort((rows[lat, :nk], vals[lat, :nk]))
        rs, vs = rows[lat, :nk][o], vals[lat, :nk][o]
        for j in range(q):
            a, b = nk * j // q, nk * (j + 1) // q
            take = min(b - a, s)
            qr[lat, j, :take], qv[lat, j, :take] = rs[a : a + take], vs[a : a + take]
            qe[lat, j] = vs[a] if b > a else (qe[lat, j - 1] if j else 0.0)
        qe[lat, q] = vs[-1]
    return qr, qv, qe


def test_quantile_groups_match_a_loop_over_latents():
    g = np.random.default_rng(5)
    q, s, m = 4, 3, 40
    nk = g.integers(0, q * s + 1, m)  # empty, part-filled (fewer than q) and full samples
    nk[:3] = [0, 2, q * s]
    rows = np.full((m, q * s), -1, np.int64)
    vals = np.zeros((m, q * s), np.float32)
    for lat, n in enumerate(nk):
        rows[lat, :n] = g.choice(1000, n, replace=False)
        vals[lat, :n] = np.round(g.random(n) * 3, 1)  # ties in value: the row orders them
    got, want = quantile_groups(rows, vals, q, s), _quantile_groups_loop(rows, vals, q, s)
    for x, y in zip(got, want):
        assert x.dtype == y.dtype and (x == y).all()
