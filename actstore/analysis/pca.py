"""Normalized PCA of a store's activations: exact streaming covariance in float64, per hook,
all hooks in one pass; principal angles between two hooks or stores.

For each hook (width ``d``) and the selected rows (``groups.py``; every group together):

- optionally standardize each row with the store's statistics first (``standardize=True``:
  ``z = (x - mean) / std``, the store's float64 per-dimension mean and std over all its rows,
  ``Store.stats``; dimensions with std 0 are left centred only);
- covariance by Chan's merge in float64: each block gives ``(n, mean [d], M2 [d, d])`` and
  blocks merge as ``M2 = M2_a + M2_b + delta delta^T n_a n_b / n`` through
  ``_tree.BlockTree`` (bit-identical under any split of the rows, as the store's own
  statistics merge by Chan's formula); ``cov = M2 / (n - 1)``. Memory: ``d^2`` float64 per
  hook and tree level (d=576: 2.7 MB);
- ``components [k, d]`` (unit rows, eigenvectors of ``cov``, largest first, sign set so that
  each component's largest-magnitude entry is positive), ``explained_variance [k]`` and
  ``explained_ratio [k]`` (of the trace);
- ``sample``: up to ``sample`` selected rows chosen uniformly by hashed row id (the
  ``sample`` smallest ``splitmix64(row ^ seed)`` keys, exact and the same under any split),
  with their group and their projections on the first ``k`` components (``[S, k]``), for the
  plot: :func:`scatter_svg` draws components 1 and 2 coloured by group.

:func:`principal_angles` (radians, ascending) between the spans of two component sets: the
arccos of the singular values of ``A B^T``.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import _dist
from ._checkpoint import COMMIT_ROWS, Checkpoint, store_identity
from ._pass import AnalysisError
from ._rows import check_hooks, n_blocks, share, stream
from ._tree import BlockTree
from .output import FORMAT, prepare_out, write_group
from .steering import _gather

KIND = "pca"
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit mix of each value (uint64 arithmetic wraps): the sample's hashed keys."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def chan_combine(a: dict, b: dict) -> dict:
    """Merge two (n, mean, M2) moments (Chan et al.); neither argument is modified."""
    na, nb = float(a["n"][0]), float(b["n"][0])
    if na == 0:
        return b
    if nb == 0:
        return a
    n = na + nb
    delta = b["mean"] - a["mean"]
    return {
        "n": a["n"] + b["n"],
        "mean": a["mean"] + delta * (nb / n),
        "m2": a["m2"] + b["m2"] + np.outer(delta, delta) * (na * nb / n),
    }


@dataclass
class PCA:
    """Per hook (in ``hooks`` order): ``components[h] [k, d]``, ``explained_variance[h] [k]``,
    ``explained_ratio[h] [k]``, ``mean[h] [d]`` and ``cov[h] [d, d]`` (float64, of the rows
    as analysed: standardized when asked), ``count``; the sample: ``sample_rows [S]``,
    ``sample_group [S]`` and ``projections[h] [S, k]``; ``group_names``."""

    hooks: list[str]
    components: dict[str, np.ndarray]
    explained_variance: dict[str, np.ndarray]
    explained_ratio: dict[str, np.ndarray]
    mean: dict[str, np.ndarray]
    cov: dict[str, np.ndarray]
    count: int
    sample_rows: np.ndarray
    sample_group: np.ndarray
    projections: dict[str, np.ndarray]
    group_names: list[str]
    meta: dict = field(default_factory=dict)

    def save(self, out) -> Path:
        out = Path(out)
        arrays = {"pca/sample_rows": self.sample_rows, "pca/sample_group": self.sample_group}
        for j, h in enumerate(self.hooks):
            p = f"pca/{j}"
            arrays[f"{p}/components"] = self.components[h]
            arrays[f"{p}/explained_variance"] = self.explained_variance[h]
            arrays[f"{p}/explained_ratio"] = self.explained_ratio[h]
            arrays[f"{p}/mean"] = self.mean[h]
            arrays[f"{p}/cov"] = self.cov[h]
            arrays[f"{p}/projections"] = self.projections[h]
        prepare_out(out, KIND)
        attrs = {"format": FORMAT, "kind": KIND, "hooks": self.hooks, "count": self.count}
        attrs.update(groups=self.group_names, **self.meta)
        write_group(out, arrays, attrs)
        for j, h in enumerate(self.hooks):
            (out / f"pca_{j}.svg").write_text(scatter_svg(self, h))
        return out


def _moments_pass(store, hooks, groups, blocks, block_rows, shift, scale, sample: int, seed: int, ck=None):
    tree = BlockTree(_combine_hooks(hooks))
    keys, rows_s, grp_s = np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int32)

    def fn(b):
        nonlocal keys, rows_s, grp_s
        payload = {}
        for j, h in enumerate(hooks):
            x = b.x[h].double()
            if shift is not None:
                x = (x - shift[j]) * scale[j]
            mu = x.mean(0)
            xc = x - mu
            payload[f"{j}/n"] = np.array([b.rows.size], np.int64)
            payload[f"{j}/mean"] = mu.numpy()
            payload[f"{j}/m2"] = (xc.T @ xc).numpy()
        tree.push(b.block, payload)
        if sample > 0:
            k = splitmix64(b.rows ^ np.int64(seed))
            keys = np.concatenate([keys, k])
            rows_s = np.concatenate([rows_s, b.rows])
            grp_s = np.concatenate([grp_s, b.group])
            if keys.size > 2 * sample:
                o = np.argsort(keys, kind="stable")[:sample]
                keys, rows_s, grp_s = keys[o], rows_s[o], grp_s[o]

    def save() -> dict:
        return {**tree.state_dict("tree/"), "keys": keys, "rows": rows_s, "group": grp_s}

    def load(sd: dict) -> None:
        nonlocal keys, rows_s, grp_s
        tree.load_state_dict(sd, "tree/")
        keys, rows_s, grp_s = sd["keys"], sd["rows"], sd["group"]

    stream(store, hooks, groups, blocks, block_rows, fn, ck.track("pca.moments", save, load) if ck else None)
    # The tree's nodes, not the tree: its combine is a closure, and shares travel pickled.
    return {"nodes": tree.nodes, "keys": keys, "rows": rows_s, "group": grp_s}


def merge_nodes(hooks, parts) -> BlockTree:
    """One BlockTree of the shares' nodes, in share order."""
    tree = BlockTree(_combine_hooks(hooks))
    for p in parts:
        other = BlockTree()
        other.nodes = p["nodes"]
        tree.merge(other)
    return tree


def _combine_hooks(hooks):
    def combine(a, b):
        out = {}
        for j in range(len(hooks)):
            got = chan_combine(*({k: p[f"{j}/{k}"] for k in ("n", "mean", "m2")} for p in (a, b)))
            out.update({f"{j}/{k}": v for k, v in got.items()})
        return out

    return combine


def pca(
    store,
    hooks,
    groups,
    *,
    k: int = 10,
    standardize: bool = False,
    sample: int = 2000,
    seed: int = 0,
    block_rows: int = 4096,
    rank: int | None = None,
    world_size: int | None = None,
    state_dir=None,
    commit_rows: int = COMMIT_ROWS,
    on_commit=None,
) -> PCA:
    """Normalized PCA of ``store`` at ``hooks`` over the rows ``groups`` selects (see the
    module docstring). Under torchrun every rank reads its share and returns the merged result.
    state_dir / commit_rows / on_commit: the pass ``pca.moments`` commits its state there and
    a rerun continues from it (``_checkpoint.py``; None: no state)."""
    from ..api import open as open_store

    store = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    hooks = check_hooks(store, hooks)
    rank, world = _dist.rank_world(rank, world_size)
    shift = scale = None
    if standardize:
        shift, scale = [], []
        for h in hooks:
            st = store.stats(h)
            std = np.asarray(st["std"], np.float64)
            shift.append(torch.from_numpy(np.asarray(st["mean"], np.float64)))
            scale.append(torch.from_numpy(np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 1.0)))
    ident = {"kind": KIND, "store": store_identity(store), "hooks": hooks, "groups": groups.to_json()}
    ident.update(standardize=bool(standardize), sample=int(sample), seed=int(seed), block_rows=int(block_rows))
    ck = Checkpoint(state_dir, ident, rank, world, commit_rows, on_commit)
    blocks = share(n_blocks(store, block_rows), rank, world)
    parts = _gather(_moments_pass(store, hooks, groups, blocks, block_rows, shift, scale, sample, seed, ck), world)
    total = merge_nodes(hooks, parts).total({})
    if not total:
        raise AnalysisError("the groups select no rows: nothing to analyse")
    keys = np.concatenate([p["keys"] for p in parts])
    o = np.lexsort((np.concatenate([p["rows"] for p in parts]), keys))[:sample]
    srows = np.concatenate([p["rows"] for p in parts])[o]
    sgrp = np.concatenate([p["group"] for p in parts])[o]
    order = np.argsort(srows, kind="stable")
    srows, sgrp = srows[order], sgrp[order]
    comps, ev, ratio, means, covs, projs = {}, {}, {}, {}, {}, {}
    n = int(total["0/n"][0])
    for j, h in enumerate(hooks):
        cov = total[f"{j}/m2"] / max(n - 1, 1)
        w, v = np.linalg.eigh(cov)
        kk = min(int(k), w.size)
        w, v = w[::-1][:kk], v[:, ::-1][:, :kk].T.copy()
        sign = np.sign(v[np.arange(kk), np.abs(v).argmax(1)])
        v *= np.where(sign == 0, 1.0, sign)[:, None]
        comps[h], ev[h] = v, w
        ratio[h] = w / max(float(np.trace(cov)), 1e-300)
        means[h], covs[h] = total[f"{j}/mean"], cov
        x = store.read(h, srows).double() if srows.size else torch.zeros(0, cov.shape[0], dtype=torch.float64)
        if shift is not None:
            x = (x - shift[j]) * scale[j]
        projs[h] = ((x.numpy() - means[h]) @ v.T).astype(np.float32)
    meta = {
        "store": {"path": str(store.path), "rows": store.rows},
        "standardize": bool(standardize),
        "groups_def": groups.to_json(),
        "k": int(k),
        "sample": int(sample),
        "seed": int(seed),
        "block_rows": int(block_rows),
    }
    return PCA(hooks, comps, ev, ratio, means, covs, n, srows, sgrp, projs, list(groups.names), meta)


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the row spans of ``a [k, d]`` and
    ``b [l, d]`` (orthonormalized first)."""
    if a.shape[1] != b.shape[1]:
        raise AnalysisError(f"principal angles need one width: {a.shape[1]} vs {b.shape[1]}")
    qa, _ = np.linalg.qr(np.asarray(a, np.float64).T)
    qb, _ = np.linalg.qr(np.asarray(b, np.float64).T)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.sort(np.arccos(np.clip(s, -1.0, 1.0)))


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def scatter_svg(res: PCA, hook: str, width: int = 480, height: int = 400) -> str:
    """An SVG scatter of the sample on components 1 and 2 of ``hook``, coloured by group."""
    p = res.projections[hook]
    if p.shape[1] < 2 or p.shape[0] == 0:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="40"><text y="20">no sample</text></svg>'
        )
    pad = 40
    lo, hi = p[:, :2].min(0), p[:, :2].max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    xs = pad + (p[:, 0] - lo[0]) / span[0] * (width - 2 * pad)
    ys = height - pad - (p[:, 1] - lo[1]) / span[1] * (height - 2 * pad)
    r = res.explained_ratio[hook]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<text x="{pad}" y="16">{html.escape(hook)}: PC1 ({100 * r[0]:.1f}%) vs PC2 ({100 * r[1]:.1f}%)</text>',
        f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" stroke="#999"/>',
    ]
    for x, y, g in zip(xs, ys, res.sample_group):
        c = PALETTE[int(g) % len(PALETTE)]
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{c}" fill-opacity="0.6"/>')
    for i, name in enumerate(res.group_names):
        y = pad + 14 * i + 10
        out.append(
            f'<rect x="{width - pad - 90}" y="{y - 8}" width="8" height="8" fill="{PALETTE[i % len(PALETTE)]}"/>'
        )
        out.append(f'<text x="{width - pad - 78}" y="{y}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)
