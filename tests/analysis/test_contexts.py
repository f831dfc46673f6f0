"""``contexts``: windows of store rows around every example, cut at document boundaries,
with the latent's activation at each token."""

import numpy as np


def test_contexts_exact(full):
    a, cols, f = full
    w = 3
    doc, tok = cols["doc"], cols["token"]
    n = f.shape[0]
    for src in ("top", "bins/abs", "bins/quantile", "bins/equal"):
        ex = a.array(f"{src}/rows")
        trows, ttok, tact = (a.array(f"contexts/{src}/{k}") for k in ("rows", "tokens", "acts"))
        assert trows.shape == ex.shape + (2 * w + 1,)
        for idx in np.ndindex(ex.shape):
            r = ex[idx]
            if r < 0:
                assert (trows[idx] == -1).all()
                continue
            want = []
            for o in range(-w, w + 1):
                x = r + o
                ok = 0 <= x < n and all(doc[y] == doc[r] for y in range(min(r, x), max(r, x) + 1))
                want.append(x if ok else -1)
            want = np.array(want)
            assert (trows[idx] == want).all(), (src, idx)
            v = want >= 0
            assert (ttok[idx][v] == tok[want[v]]).all() and (ttok[idx][~v] == -1).all()
            np.testing.assert_allclose(tact[idx][v], f[want[v], idx[0]], rtol=1e-5, atol=1e-5)
    views = a[int(np.argmax((f > 0).sum(0)))].contexts
    c = views["top"][0]
    assert len(c["tokens"]) == len(c["acts"]) == len(c["rows"]) and c["row"] in c["rows"]
    assert len({int(doc[x]) for x in c["rows"]}) == 1
    # some window in the planted store is cut by a document boundary
    assert (a.array("contexts/top/rows") == -1).any()
