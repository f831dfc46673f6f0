"""``top_tokens`` against brute force: counts, mean activation, order (count desc, token asc)."""

import numpy as np


def test_top_tokens_exact(full):
    a, cols, f = full
    tok = cols["token"]
    for j in range(f.shape[1]):
        fire = f[:, j] > 0
        t, c = np.unique(tok[fire], return_counts=True)
        o = np.lexsort((t, -c))[:4]
        got = a[j].top_tokens
        assert [(x[0], x[1]) for x in got] == [(int(t[i]), int(c[i])) for i in o]
        for tk, _, mean in got:
            sel = fire & (tok == tk)
            assert np.isclose(mean, f[sel, j].astype(np.float64).mean(), rtol=1e-12)
