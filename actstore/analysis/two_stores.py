"""Steering vectors between two stores: ``mean(x | store B) - mean(x | store A)`` per hook,
for the rows each store's groups select (every row but BOS/EOS by default), e.g. a chat
model's activations (B) against its base model's (A) on the same text.

The two stores are read one after the other with the same pass as ``steering.py`` (float64
sums, exact under any split of either store's rows). Reported as :class:`SteeringVectors`
with ``positive="B"`` and ``negative="A"``: the norms, the AUROC of the projection (B rows
against A rows), the cosine across hooks, the paired PCA (document ``k`` of A paired with
document ``k`` of B, by document id), the logit lens, and the top rows by projection, taken
from store B (rows and windows are store B's).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from .. import _dist
from ._checkpoint import COMMIT_ROWS, Checkpoint, store_identity
from ._pass import AnalysisError
from ._rows import check_hooks, n_blocks, share
from .contexts import windows
from .lens import logit_lens, token_mask, unembedding
from .steering import SteeringVectors, _gather, _paired_pca, _proj_pass, _sums_pass, auroc, merge_sums


def _one_group(groups):
    if len(groups.names) != 1:
        raise AnalysisError(f"between two stores each side is one group, got {list(groups.names)}: select one")


def steering_between(
    store_a,
    store_b,
    hooks,
    groups_a,
    groups_b,
    *,
    pca: bool = False,
    top_k: int = 20,
    window: int = 8,
    model=None,
    lens_t: int = 10,
    lens_outlier_z: float = 0.0,
    block_rows: int = 4096,
    rank: int | None = None,
    world_size: int | None = None,
    state_dir=None,
    commit_rows: int = COMMIT_ROWS,
    on_commit=None,
) -> SteeringVectors:
    """``mean(B) - mean(A)`` per hook; ``groups_a`` / ``groups_b`` (``groups.resolve`` of each
    store, one group each) select the rows. state_dir / commit_rows / on_commit: the passes
    (``steering.sums_a``, ``steering.sums_b``, ``steering.proj_a``, ``steering.proj_b``) commit
    their state there and a rerun continues from it (``_checkpoint.py``; None: no state)."""
    from ..api import open as open_store

    sa = open_store(store_a) if isinstance(store_a, (str, os.PathLike)) else store_a
    sb = open_store(store_b) if isinstance(store_b, (str, os.PathLike)) else store_b
    hooks = check_hooks(sa, hooks)
    check_hooks(sb, hooks)
    for h in hooks:
        da, db = sa.schema.hooks[h].d, sb.schema.hooks[h].d
        if da != db:
            raise AnalysisError(f"hook {h!r} has width {da} in store A and {db} in store B: compare one model's widths")
    _one_group(groups_a)
    _one_group(groups_b)
    rank, world = _dist.rank_world(rank, world_size)
    ident = {"kind": "steering_between", "store_a": store_identity(sa), "store_b": store_identity(sb)}
    ident.update(hooks=hooks, groups_a=groups_a.to_json(), groups_b=groups_b.to_json())
    ident.update(pca=bool(pca), block_rows=int(block_rows))
    ck = Checkpoint(state_dir, ident, rank, world, commit_rows, on_commit)
    sums = []
    for s, g, side in ((sa, groups_a, "a"), (sb, groups_b, "b")):
        blocks = share(n_blocks(s, block_rows), rank, world)
        sums.append(merge_sums(_gather(_sums_pass(s, hooks, g, blocks, block_rows, pca, ck, f"sums_{side}"), world)))
    ca, cb = int(sums[0]["counts"][0]), int(sums[1]["counts"][0])
    if ca == 0 or cb == 0:
        raise AnalysisError(f"store {'A' if ca == 0 else 'B'} has no selected rows: check its groups")
    widths = {h: sa.schema.hooks[h].d for h in hooks}
    tot = [st["tree"].total({f"s{j}": np.zeros((1, widths[h])) for j, h in enumerate(hooks)}) for st in sums]
    vec, mp, mn = {}, {}, {}
    for j, h in enumerate(hooks):
        mn[h] = tot[0][f"s{j}"][0] / ca
        mp[h] = tot[1][f"s{j}"][0] / cb
        vec[h] = torch.from_numpy((mp[h] - mn[h]).astype(np.float32))
    norms = np.array([float(np.linalg.norm(mp[h] - mn[h])) for h in hooks])
    H = len(hooks)
    cos = np.full((H, H), np.nan)
    for a in range(H):
        for b in range(H):
            va, vb = mp[hooks[a]] - mn[hooks[a]], mp[hooks[b]] - mn[hooks[b]]
            if va.size == vb.size:
                cos[a, b] = float(va @ vb / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-300))
    pca_dirs = None
    if pca:
        # Documents of B get ids shifted past A's, so one table pairs the k-th of each.
        shift = int(groups_a.doc_group.size)
        docs = list(sums[0]["docs"]) + [(blk + (1 << 40), u + shift, s_, c) for blk, u, s_, c in sums[1]["docs"]]
        gi = np.concatenate([np.where(groups_a.doc_group >= 0, 1, -1), np.where(groups_b.doc_group >= 0, 0, -1)])
        pca_dirs = _paired_pca(docs, hooks, gi, 0, 1)
    units = [vec[h] / max(float(vec[h].norm()), 1e-30) for h in hooks]
    proj = []
    for s, g, side in ((sa, groups_a, "a"), (sb, groups_b, "b")):
        blocks = share(n_blocks(s, block_rows), rank, world)
        mine = _proj_pass(s, hooks, g, blocks, block_rows, units, ck, f"proj_{side}")
        parts = [p for got in _gather(mine, world) for p in got]
        rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        pr = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, H), np.float32)
        proj.append((rows, pr))
    au = np.array([auroc(proj[1][1][:, j], proj[0][1][:, j]) for j in range(H)])
    top = {}
    rows_b, pb = proj[1]
    k = min(int(top_k), rows_b.size)

    def doc_of(idx):
        return sb.tokens(idx)["doc"].numpy().astype(np.int64)

    for j, h in enumerate(hooks):
        if k == 0:
            break
        order = np.lexsort((rows_b, -pb[:, j].astype(np.float64)))[:k]
        trows = rows_b[order]
        win = windows(doc_of, sb.rows, trows, int(window))
        valid = win >= 0
        tok = np.full(win.shape, -1, np.int32)
        wp = np.zeros(win.shape, np.float32)
        if valid.any():
            uniq = np.unique(win[valid])
            at = np.searchsorted(uniq, win[valid])
            tok[valid] = sb.tokens(uniq)["token"].numpy()[at]
            wp[valid] = (sb.read(h, uniq).numpy() @ units[j].numpy())[at]
        top[h] = {"rows": trows, "values": pb[order, j], "tokens": tok, "proj": wp, "window_rows": win}
    lens = {}
    if model is not None:
        from ..models import prepare_model

        m = prepare_model(model, device=torch.device("cpu")).model
        w_u, gain = unembedding(m)
        masked = token_mask(w_u, None, float(lens_outlier_z), False)
        for h in hooks:
            if widths[h] == w_u.shape[1]:
                got = logit_lens(vec[h][None].to(w_u.dtype), w_u, gain, int(lens_t), masked)
                lens[h] = {k_.split("/")[1]: v[0] for k_, v in got.items() if k_ != "lens/masked"}
    meta = {
        "store": {"path": str(sb.path), "rows": sb.rows},
        "store_a": {"path": str(sa.path), "rows": sa.rows},
        "groups": groups_b.to_json(),
        "groups_a": groups_a.to_json(),
        "positive": "B",
        "negative": "A",
        "block_rows": int(block_rows),
        "projection": "x . vector / ||vector||",
        "top_from": "store B",
    }
    return SteeringVectors(
        hooks, vec, mp, mn, cb, ca, norms, au, cos, pca_dirs, top, lens, json.loads(json.dumps(meta))
    )
