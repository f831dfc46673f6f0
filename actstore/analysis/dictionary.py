"""Dictionary comparison: the maximum cosine similarity (MCS) of each decoder direction of
one SAE to the other's, in both directions, and the nearest neighbours within one SAE.

Directions are decoder rows ``W_dec [m, d]`` (raw activation units, unit-normalized here).
Everything is tiled: a tile of ``tile`` rows of A against a tile of ``tile`` rows of B gives a
``[tile, tile]`` block of cosines (float32 products, on the SAEs' device), folded into
running maxima for both sides (ties: the lowest index), or into a running top-k; the
``m_a x m_b`` matrix is never held.

- :func:`mcs` (A, B) -> :class:`MCS`: ``ab [m_a]`` / ``ab_index [m_a]`` (each A direction's
  best match in B) and ``ba [m_b]`` / ``ba_index [m_b]``; widths must agree.
- :func:`neighbours` (A, k) -> ``(cos [m, k], index [m, k])``: each direction's k most similar
  other directions of the same SAE (itself excluded), descending.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._pass import AnalysisError
from .output import FORMAT, write_group

KIND = "dictionary"


def _directions(sae) -> torch.Tensor:
    if isinstance(sae, (str, os.PathLike)):
        from ..sae import load

        sae = load(sae)
    w = sae.W_dec.detach() if hasattr(sae, "W_dec") else torch.as_tensor(sae)
    w = w.float()
    if w.dim() != 2:
        raise AnalysisError(f"decoder directions must be [m, d], got {tuple(w.shape)}")
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class MCS:
    ab: np.ndarray
    ab_index: np.ndarray
    ba: np.ndarray
    ba_index: np.ndarray

    def save(self, out, extra: dict | None = None) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {"dictionary/ab": self.ab, "dictionary/ab_index": self.ab_index}
        arrays.update({"dictionary/ba": self.ba, "dictionary/ba_index": self.ba_index})
        arrays.update(extra or {})
        attrs = {
            "format": FORMAT,
            "kind": KIND,
            "mean_mcs_ab": float(self.ab.mean()),
            "mean_mcs_ba": float(self.ba.mean()),
        }
        write_group(out, arrays, attrs)
        return out


def _fold_max(best, idx, vals, cand_idx):
    """Running max per row: ``vals [r, c]`` against ``best [r]``; the lowest index wins ties
    (tiles arrive in index order, so a later tile replaces only on a strictly larger value)."""
    v, i = vals.max(dim=1)  # torch.max returns the first maximal index
    better = v > best
    best[better] = v[better]
    idx[better] = cand_idx[i[better]]


def mcs(a, b, tile: int = 4096) -> MCS:
    """The MCS of SAE (or ``[m, d]`` directions) ``a`` against ``b``, both ways."""
    A, B = _directions(a), _directions(b)
    if A.shape[1] != B.shape[1]:
        raise AnalysisError(f"the dictionaries have widths {A.shape[1]} and {B.shape[1]}: compare SAEs of one hook")
    B = B.to(A.device)
    ma, mb = A.shape[0], B.shape[0]
    ab = torch.full((ma,), -2.0, device=A.device)
    ab_i = torch.zeros(ma, dtype=torch.long, device=A.device)
    ba = torch.full((mb,), -2.0, device=A.device)
    ba_i = torch.zeros(mb, dtype=torch.long, device=A.device)
    ar_b = torch.arange(mb, device=A.device)
    ar_a = torch.arange(ma, device=A.device)
    with torch.no_grad():
        for i in range(0, ma, tile):
            for j in range(0, mb, tile):
                c = A[i : i + tile] @ B[j : j + tile].T
                sub_best, sub_idx = ab[i : i + tile], ab_i[i : i + tile]
                _fold_max(sub_best, sub_idx, c, ar_b[j : j + tile])
                sb, si = ba[j : j + tile], ba_i[j : j + tile]
                _fold_max(sb, si, c.T, ar_a[i : i + tile])
    return MCS(ab.cpu().numpy(), ab_i.cpu().numpy(), ba.cpu().numpy(), ba_i.cpu().numpy())


def neighbours(a, k: int = 10, tile: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each direction's ``k`` nearest other directions of the same SAE, by cosine (descending; ties: lower index)."""
    A = _directions(a)
    m = A.shape[0]
    k = min(int(k), m - 1)
    if k < 1:
        raise AnalysisError("neighbours need at least two directions")
    best = torch.full((m, k), -3.0, device=A.device)
    idx = torch.full((m, k), -1, dtype=torch.long, device=A.device)
    with torch.no_grad():
        for i in range(0, m, tile):
            rows = torch.arange(i, min(m, i + tile), device=A.device)
            for j in range(0, m, tile):
                cols = torch.arange(j, min(m, j + tile), device=A.device)
                c = A[rows] @ A[cols].T
                c[rows[:, None] == cols[None, :]] = -3.0  # never oneself
                vals = torch.cat([best[rows], c], 1)
                ids = torch.cat([idx[rows], cols.expand(rows.numel(), -1)], 1)
                # Sort by value descending, then index ascending: a total order, independent of tiling.
                key_i = torch.where(ids < 0, torch.full_like(ids, m), ids)
                o = torch.argsort(key_i, dim=1, stable=True)
                vals, ids = vals.gather(1, o), ids.gather(1, o)
                o = torch.argsort(-vals, dim=1, stable=True)[:, :k]
                best[rows], idx[rows] = vals.gather(1, o), ids.gather(1, o)
    return best.cpu().numpy(), idx.cpu().numpy()
