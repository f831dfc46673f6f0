"""A planted store for the representation-analysis tests (tests/analysis/test_groups.py,
test_steering.py, ...): documents from two named sources whose activations differ along a
known direction.

``N_DOCS`` documents (the first half source ``pos``, the rest ``neg``) of 6-30 rows; the
first row of each is an inserted BOS (pos -1, flag BOS). Hook ``a`` (width ``D``):
``noise + 1.5 * u`` for ``pos`` rows and ``noise - 1.5 * u`` for ``neg`` rows (``u`` a unit
vector, ``planted["u"]``), BOS rows ``10 * e0`` (what dropping BOS keeps out); hook ``b``:
``2 * a + small noise``; hook ``c`` (width ``D // 2``) is unrelated noise. Some documents hold
the prompt marker ``MARKER`` (token ids 7, 8) at positions 2-3, which occur nowhere else.
Two segments, so global rows cross one.
"""

from __future__ import annotations

import numpy as np

import actstore

N_DOCS, D = 40, 16
MARKER = (7, 8)


def write_repr_store(path, seed=0, n_docs=N_DOCS, d=D, sources=True):
    g = np.random.default_rng(seed)
    u = g.standard_normal(d)
    u /= np.linalg.norm(u)
    lens = g.integers(6, 31, n_docs)
    doc = np.repeat(np.arange(n_docs), lens).astype(np.int64)
    pos = np.concatenate([np.arange(-1, k - 1) for k in lens]).astype(np.int32)
    n = doc.size
    tok = g.integers(10, 60, n).astype(np.int32)
    flags = (pos == -1).astype(np.uint8)
    has_marker = g.random(n_docs) < 0.6
    for k in np.flatnonzero(has_marker):
        at = np.flatnonzero(doc == k)
        tok[at[3]], tok[at[4]] = MARKER  # pos 2, 3
    half = n_docs // 2
    sign = np.where(doc < half, 1.0, -1.0)
    a = g.standard_normal((n, d)) + 1.5 * sign[:, None] * u[None, :]
    a[flags == 1] = 0.0
    a[flags == 1, 0] = 10.0
    b = 2 * a + 0.1 * g.standard_normal((n, d))
    c = g.standard_normal((n, d // 2))
    prov = {
        "sources": [
            {"name": "pos", "data": "p", "docs": [0, half]},
            {"name": "neg", "data": "n", "docs": [half, n_docs]},
        ]
    }
    cut = n * 3 // 5
    for seg, sl in (("a", slice(0, cut)), ("b", slice(cut, n))):
        with actstore.create(
            path,
            {"a": d, "b": d, "c": d // 2},
            segment=seg,
            dtype="fp32",
            codec="none",
            provenance=prov if sources else None,
        ) as w:
            w.append(
                {"a": a[sl].astype(np.float32), "b": b[sl].astype(np.float32), "c": c[sl].astype(np.float32)},
                tokens=tok[sl],
                doc=doc[sl],
                pos=pos[sl],
                flags=flags[sl],
            )
    return {
        "a": a.astype(np.float32),
        "b": b.astype(np.float32),
        "c": c.astype(np.float32),
        "doc": doc,
        "pos": pos,
        "token": tok,
        "flags": flags,
        "u": u,
        "half": half,
        "has_marker": has_marker,
        "lens": lens,
    }
