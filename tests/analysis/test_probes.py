"""Linear probes (actstore/analysis/probes.py) on a planted separable label: the logistic
probe against sklearn's LogisticRegression (direction cosine above 0.99, accuracy within
one point), the mass-mean probe against the plain mean difference, the split by document,
the SVG across hooks."""

from __future__ import annotations

import numpy as np
import pytest

import actstore
from actstore.analysis._pass import AnalysisError
from actstore.analysis.groups import resolve
from actstore.analysis.probes import is_test, probes

D, N_DOCS = 12, 80


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "s"
    g = np.random.default_rng(7)
    u = g.standard_normal(D)
    u /= np.linalg.norm(u)
    lens = g.integers(4, 12, N_DOCS)
    doc = np.repeat(np.arange(N_DOCS), lens)
    y = doc % 2 == 0  # even documents are positive
    x = g.standard_normal((doc.size, D)) * np.linspace(0.5, 2.0, D) + 1.0  # uneven scales, off-centre
    x += np.where(y, 2.5, -2.5)[:, None] * u
    x[np.abs((x - 1.0) @ u) < 0.5] += np.where(y, 1.0, -1.0)[np.abs((x - 1.0) @ u) < 0.5, None] * u  # a margin
    noise = g.standard_normal((doc.size, D))
    pos = np.concatenate([np.arange(k) for k in lens]).astype(np.int32)
    with actstore.create(path, {"x": D, "noise": D}, dtype="fp32", codec="none") as w:
        w.append({"x": x.astype(np.float32), "noise": noise.astype(np.float32)}, tokens=np.zeros(doc.size, np.int32),
                 doc=doc, pos=pos, flags=np.zeros(doc.size, np.uint8))  # fmt: skip
    s = actstore.open(path)
    labels = {int(d): ("pos" if d % 2 == 0 else "neg") for d in range(N_DOCS)}
    return s, x.astype(np.float32).astype(np.float64), y, doc, resolve(s, labels=labels, drop_flags=None)


def test_logistic_against_sklearn_and_mass_mean(separable):
    from sklearn.linear_model import LogisticRegression

    s, x, y, doc, rg = separable
    res = probes(s, "x,noise", rg, "pos", "neg", epochs=25, lr=0.1, batch=64, block_rows=1024)
    test = is_test(doc, 0, 0.25)
    tr = ~test
    assert res.counts["test_pos"] + res.counts["test_neg"] == int(test.sum())
    assert len(set(doc[test]) & set(doc[tr])) == 0  # no document on both sides
    mu, sd = x[tr].mean(0), x[tr].std(0)
    ref = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit((x[tr] - mu) / sd, y[tr])
    w_ref = ref.coef_[0] / sd
    w = res.lr_weight["x"]
    assert float(w @ w_ref / np.linalg.norm(w) / np.linalg.norm(w_ref)) > 0.99
    acc_ref = ref.score((x[test] - mu) / sd, y[test])
    assert abs(res.accuracy["logistic"][0] - acc_ref) <= 0.01
    assert res.accuracy["logistic"][0] > 0.97 and res.auroc["logistic"][0] > 0.99
    mm = x[tr & y].mean(0) - x[tr & ~y].mean(0)
    np.testing.assert_allclose(res.mm_direction["x"], mm, rtol=1e-9)
    assert res.accuracy["mass_mean"][0] > 0.9
    assert 0.3 < res.auroc["logistic"][1] < 0.7  # the noise hook carries no label


def test_svg_and_errors(separable, tmp_path):
    s, _, _, _, rg = separable
    res = probes(s, "x,noise", rg, "pos", "neg", epochs=1, block_rows=100)
    svg = (res.save(tmp_path / "o") / "probes.svg").read_text()
    assert svg.count("<polyline") == 4 and "noise" in svg
    with pytest.raises(AnalysisError, match="test_frac"):
        probes(s, "x", rg, "pos", "neg", test_frac=1.5)
    with pytest.raises(AnalysisError, match="no rows in"):
        probes(s, "x", rg, "pos", "neg", test_frac=1e-9)
