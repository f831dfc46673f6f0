"""A planted store and SAEs for the analysis tests (tests/analysis/), and brute force to check
them against; also imported by the SIGKILL child, tests/helpers/analysis_kill_job.py.

The store: ``N`` rows of width ``D`` in two segments (so global rows cross a segment),
documents of 3-40 rows with BOS-flagged first rows, token ids 0..49. Brute force encodes
the rows in the same aligned blocks as the pass (so every value is bit-identical to what
the pass saw) and keeps the dense ``[N, m]`` code.
"""

from __future__ import annotations

import numpy as np
import torch

import actstore
from actstore.analysis._pass import Batch
from actstore.sae import ReLUSAE, SAEConfig, TopKSAE

N, D, M, BLOCK = 300, 16, 24, 64


def write_store(path, n=N, d=D, seed=0, tokens=True):
    g = np.random.default_rng(seed)
    x = (g.standard_normal((n, d)) * 2).astype(np.float32)
    x[n - 20 : n - 10] = x[10:20]  # repeated rows: tied activations in other blocks
    lens, total = [], 0
    while total < n:
        lens.append(int(g.integers(3, 41)))
        total += lens[-1]
    doc = np.repeat(np.arange(len(lens)), lens)[:n].astype(np.int64)
    pos = np.concatenate([np.arange(k) for k in lens])[:n].astype(np.int32)
    tok = g.integers(0, 50, n).astype(np.int32)
    flags = (pos == 0).astype(np.uint8)  # BOS
    cut = n * 3 // 5
    for seg, sl in (("a", slice(0, cut)), ("b", slice(cut, n))):
        with actstore.create(path, {"h": d}, segment=seg, dtype="fp32", codec="none") as w:
            w.append({"h": x[sl]}, tokens=tok[sl] if tokens else None, doc=doc[sl], pos=pos[sl], flags=flags[sl])
    return {"x": x, "doc": doc, "pos": pos, "token": tok, "flags": flags}


def relu_sae(m=M, d=D, seed=1):
    sae = ReLUSAE(SAEConfig("relu", d, m, hook="h"), seed=seed)
    with torch.no_grad():
        sae.W_enc.mul_(40.0)  # activations spread over [0, ~20]: several absolute bins
        sae.b_enc.copy_(torch.linspace(-3.0, 0.5, m))
        sae.W_enc[0] = 0.0  # latent 0 is dead
        sae.b_enc[0] = -1.0
    return sae


def topk_sae(m=M, d=D, k=4, seed=2):
    sae = TopKSAE(SAEConfig("topk", d, m, k=k, hook="h"), seed=seed)
    with torch.no_grad():
        sae.W_enc.mul_(5.0)
    return sae


def dense_code(sae, x, block=BLOCK):
    """``[N, m]`` float32 code, encoded in the pass's aligned blocks; 0 where not firing."""
    out = []
    with torch.no_grad():
        for a in range(0, x.shape[0], block):
            out.append(sae.encode(torch.from_numpy(x[a : a + block]), dense=True).float().numpy())
    f = np.concatenate(out)
    return np.where(f > 0, f, 0).astype(np.float32)


def docs_contiguous_count(f, doc):
    """Per latent, the number of distinct documents it fires in (docs are contiguous here)."""
    return np.array([np.unique(doc[f[:, j] > 0]).size for j in range(f.shape[1])])


def code_batches(f, block):
    out = []
    for b, lo in enumerate(range(0, f.shape[0], block)):
        sub = f[lo : lo + block]
        r, c = np.nonzero(sub > 0)
        ptr = np.r_[0, np.cumsum(np.bincount(r, minlength=sub.shape[0]))]
        z = np.zeros(sub.shape[0], np.int64)
        out.append(
            Batch(
                b,
                np.arange(lo, lo + sub.shape[0]),
                ptr,
                r.astype(np.int64),
                c.astype(np.int64),
                sub[r, c],
                z.astype(np.int32),
                z,
                z.astype(np.int32),
                z.astype(np.uint8),
                f.shape[1],
            )
        )
    return out


JOBS = {
    "stats": {},
    "top": {"k": 5},
    "bins": {"width": 4.0, "n_abs": 4, "quantiles": 3, "n_equal": 4, "samples": 3, "seed": 7},
    "contexts": {"window": 3},
    "top_tokens": {"t": 4},
}
