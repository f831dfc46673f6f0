"""Small real stores with every layer's MLP input and output, for the CLT and crosscoder tests.

The activations come from a known sparse model, so a dictionary has something to find:
each token draws a sparse code ``z_s`` per layer (``K_ACTIVE`` of ``N_FEAT`` features);
the input of layer ``l`` is ``z_l A_l`` (plus the residual of earlier layers' outputs), and
its output ``sum_{s <= l} z_s B_{s,l}``: features written across layers, which a CLT
represents directly and per-layer transcoders only through their inputs.

Hooks: ``model.layers.{l}.mlp:input`` (d = ``D``) and ``model.layers.{l}.mlp`` (``D``).
``build_pair`` writes two stores of the same tokens, one per "model" (the second with some
features of its own), for two-model crosscoders.
"""

from __future__ import annotations

import numpy as np
import torch

import actstore

L, D, N_FEAT, K_ACTIVE = 3, 16, 48, 3
ROWS = 1600


def source(layer: int) -> str:
    return f"model.layers.{layer}.mlp:input"


def target(layer: int) -> str:
    return f"model.layers.{layer}.mlp"


def _codes(tok: np.ndarray, layers: int, seed: int) -> torch.Tensor:
    """``[n, layers, N_FEAT]`` sparse nonnegative codes, a function of the token id."""
    out = torch.zeros(tok.size, layers, N_FEAT)
    for i, t in enumerate(tok):
        g = torch.Generator().manual_seed(int(t) * 7919 + seed)
        for s in range(layers):
            idx = torch.randperm(N_FEAT, generator=g)[:K_ACTIVE]
            out[i, s, idx] = 0.5 + torch.rand(K_ACTIVE, generator=g)
    return out


def activations(tok: np.ndarray, layers: int = L, model_seed: int = 0) -> dict[str, torch.Tensor]:
    """``{hook: [n, D]}`` for every layer's input and output."""
    g = torch.Generator().manual_seed(1234 + model_seed)
    A = torch.randn(layers, N_FEAT, D, generator=g) / np.sqrt(D)
    B = torch.randn(layers, layers, N_FEAT, D, generator=g) / np.sqrt(D)
    z = _codes(tok, layers, model_seed)
    out, resid = {}, torch.zeros(tok.size, D)
    for ly in range(layers):
        x = z[:, ly] @ A[ly] + 0.3 * resid
        y = sum(z[:, s] @ B[s, ly] for s in range(ly + 1))
        out[source(ly)] = x
        out[target(ly)] = y
        resid = resid + y
    return out


def build(path, layers: int = L, rows: int = ROWS, model_seed: int = 0, dtype: str = "fp32"):
    """Write a store of ``rows`` tokens with every layer's MLP input and output, and open it."""
    tok = np.arange(rows, dtype=np.int64)
    acts = activations(tok, layers, model_seed)
    with actstore.create(
        path,
        {h: D for h in acts},
        dtype=dtype,
        durable=False,
        chunk_bytes=64 * D * 4,
        chunks_per_shard=4,
    ) as w:
        for lo in range(0, rows, 400):
            sl = slice(lo, lo + 400)
            t = tok[sl]
            w.append({h: a[sl] for h, a in acts.items()}, tokens=t, doc=t // 40, pos=t % 40)
            w.commit()
    return actstore.open(path)


def build_pair(folder, layers: int = 2, rows: int = ROWS):
    """Two stores of the same tokens from two "models" (different weights): ``(a, b)``."""
    return build(folder / "base", layers, rows, 0), build(folder / "chat", layers, rows, 1)
