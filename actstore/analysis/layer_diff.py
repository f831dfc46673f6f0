"""Layer diffs: ``delta = x_B - x_A`` over aligned rows of two hooks of one store (the same
rows: every hook of a store is row-aligned), for the rows ``groups`` selects.

Outputs (one pass, float64 sums through ``_tree.BlockTree``, exact under any split):

- ``norm stats`` of ``||delta||``: count, mean, std, min, max, and a histogram on
  ``bins`` equal-width bins over ``[0, max]`` (a second pass, once the max is known);
- ``mean_delta [d]`` (float64) and ``mean_norm_a`` / ``mean_norm_b`` (the mean row norms of
  the two hooks, for scale);
- ``top``: the ``top_k`` rows with the largest ``||delta||`` (descending, then by row), with
  their token windows (``window`` either side, never across a document) and ``||delta||``
  at every token of the window;
- ``lens`` (with ``model=``): the logit lens (final-norm gain folded, ``lens.py``) of
  ``mean_delta`` and of each top row's delta: which tokens the change between the layers
  makes more (``top_*``) or less (``bottom_*``) likely.

Hooks of different widths are refused (``delta`` needs one width).
"""

from __future__ import annotations

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
from .contexts import windows
from .lens import logit_lens, token_mask, unembedding
from .output import FORMAT, prepare_out, write_group
from .steering import _gather

KIND = "layer_diff"


@dataclass
class LayerDiff:
    hook_a: str
    hook_b: str
    count: int
    norm_mean: float
    norm_std: float
    norm_min: float
    norm_max: float
    hist_edges: np.ndarray  # [bins + 1]
    hist: np.ndarray  # [bins] int64
    mean_delta: np.ndarray  # [d] float64
    mean_norm_a: float
    mean_norm_b: float
    top_rows: np.ndarray  # [K]
    top_norms: np.ndarray  # [K]
    top_tokens: np.ndarray  # [K, 2W+1]
    top_window_rows: np.ndarray  # [K, 2W+1]
    top_window_norms: np.ndarray  # [K, 2W+1]
    lens: dict = field(default_factory=dict)  # "mean/top_ids" [t], "rows/top_ids" [K, t], ...
    meta: dict = field(default_factory=dict)

    def save(self, out) -> Path:
        out = Path(out)
        arrays = {
            "diff/hist_edges": self.hist_edges,
            "diff/hist": self.hist,
            "diff/mean_delta": self.mean_delta,
            "diff/top/rows": self.top_rows,
            "diff/top/norms": self.top_norms,
            "diff/top/tokens": self.top_tokens,
            "diff/top/window_rows": self.top_window_rows,
            "diff/top/window_norms": self.top_window_norms,
        }
        arrays.update({f"diff/lens/{k}": v for k, v in self.lens.items()})
        prepare_out(out, KIND)
        attrs = {"format": FORMAT, "kind": KIND, "hook_a": self.hook_a, "hook_b": self.hook_b, "count": self.count}
        attrs.update(
            norm={"mean": self.norm_mean, "std": self.norm_std, "min": self.norm_min, "max": self.norm_max},
            mean_norm_a=self.mean_norm_a,
            mean_norm_b=self.mean_norm_b,
            **self.meta,
        )
        write_group(out, arrays, attrs)
        return out


def _pass1(store, a, b, groups, blocks, block_rows, top_k, ck=None):
    tree = BlockTree()
    cand_rows, cand_norm = np.zeros(0, np.int64), np.zeros(0, np.float64)
    lo_hi = [np.inf, -np.inf]

    def fn(blk):
        nonlocal cand_rows, cand_norm
        xa, xb = blk.x[a].double(), blk.x[b].double()
        delta = xb - xa
        nrm = delta.norm(dim=1)
        tree.push(
            blk.block,
            {
                "n": np.array([blk.rows.size], np.int64),
                "sum": delta.sum(0).numpy(),
                "nsum": np.array([float(nrm.sum())]),
                "nsq": np.array([float((nrm * nrm).sum())]),
                "na": np.array([float(xa.norm(dim=1).sum())]),
                "nb": np.array([float(xb.norm(dim=1).sum())]),
            },
        )
        lo_hi[0], lo_hi[1] = min(lo_hi[0], float(nrm.min())), max(lo_hi[1], float(nrm.max()))
        cand_rows = np.concatenate([cand_rows, blk.rows])
        cand_norm = np.concatenate([cand_norm, nrm.numpy()])
        if cand_rows.size > 4 * max(top_k, 1):
            o = np.lexsort((cand_rows, -cand_norm))[:top_k]
            cand_rows, cand_norm = cand_rows[o], cand_norm[o]

    def save() -> dict:
        return {**tree.state_dict("tree/"), "rows": cand_rows, "norms": cand_norm, "lo_hi": np.array(lo_hi)}

    def load(sd: dict) -> None:
        nonlocal cand_rows, cand_norm
        tree.load_state_dict(sd, "tree/")
        cand_rows, cand_norm = sd["rows"], sd["norms"]
        lo_hi[:] = sd["lo_hi"].tolist()

    stream(store, [a, b], groups, blocks, block_rows, fn, ck.track("layer_diff.norms", save, load) if ck else None)
    return {"tree": tree, "rows": cand_rows, "norms": cand_norm, "lo_hi": lo_hi}


def _pass2(store, a, b, groups, blocks, block_rows, edges, ck=None):
    hist = np.zeros(edges.size - 1, np.int64)

    def fn(blk):
        nrm = (blk.x[b].double() - blk.x[a].double()).norm(dim=1).numpy()
        idx = np.clip(np.searchsorted(edges, nrm, side="right") - 1, 0, hist.size - 1)
        hist[:] += np.bincount(idx, minlength=hist.size)

    def load(sd: dict) -> None:
        hist[:] = sd["hist"]

    resume = ck.track("layer_diff.hist", lambda: {"hist": hist}, load) if ck else None
    stream(store, [a, b], groups, blocks, block_rows, fn, resume)
    return hist


def layer_diff(
    store,
    hook_a: str,
    hook_b: str,
    groups,
    *,
    top_k: int = 20,
    window: int = 8,
    bins: int = 50,
    model=None,
    lens_t: int = 10,
    lens_outlier_z: float = 0.0,
    block_rows: int = 4096,
    rank: int | None = None,
    world_size: int | None = None,
    state_dir=None,
    commit_rows: int = COMMIT_ROWS,
    on_commit=None,
) -> LayerDiff:
    """``x[hook_b] - x[hook_a]`` over the rows ``groups`` selects (see the module docstring).
    state_dir / commit_rows / on_commit: the passes ``layer_diff.norms`` and ``layer_diff.hist``
    commit their state there and a rerun continues from it (``_checkpoint.py``; None: no state)."""
    from ..api import open as open_store

    store = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    check_hooks(store, [hook_a, hook_b])
    da, db = store.schema.hooks[hook_a].d, store.schema.hooks[hook_b].d
    if da != db:
        raise AnalysisError(f"hooks {hook_a!r} (width {da}) and {hook_b!r} (width {db}) differ in width: no delta")
    rank, world = _dist.rank_world(rank, world_size)
    ident = {"kind": KIND, "store": store_identity(store), "hooks": [hook_a, hook_b], "groups": groups.to_json()}
    ident.update(top_k=int(top_k), bins=int(bins), block_rows=int(block_rows))
    ck = Checkpoint(state_dir, ident, rank, world, commit_rows, on_commit)
    blocks = share(n_blocks(store, block_rows), rank, world)
    parts = _gather(_pass1(store, hook_a, hook_b, groups, blocks, block_rows, int(top_k), ck), world)
    tree = parts[0]["tree"]
    for p in parts[1:]:
        tree.merge(p["tree"])
    tot = tree.total({})
    if not tot:
        raise AnalysisError("the groups select no rows: nothing to compare")
    n = int(tot["n"][0])
    mean_norm = float(tot["nsum"][0]) / n
    var = max(float(tot["nsq"][0]) / n - mean_norm**2, 0.0)
    lo = min(p["lo_hi"][0] for p in parts)
    hi = max(p["lo_hi"][1] for p in parts)
    edges = np.linspace(0.0, hi if hi > 0 else 1.0, int(bins) + 1)
    hist = sum(_gather(_pass2(store, hook_a, hook_b, groups, blocks, block_rows, edges, ck), world))
    rows = np.concatenate([p["rows"] for p in parts])
    norms = np.concatenate([p["norms"] for p in parts])
    o = np.lexsort((rows, -norms))[: int(top_k)]
    trows, tnorm = rows[o], norms[o]

    def doc_of(idx):
        return store.tokens(idx)["doc"].numpy().astype(np.int64)

    win = windows(doc_of, store.rows, trows, int(window))
    tok = np.full(win.shape, -1, np.int32)
    wn = np.zeros(win.shape, np.float32)
    valid = win >= 0
    if valid.any():
        uniq = np.unique(win[valid])
        at = np.searchsorted(uniq, win[valid])
        tok[valid] = store.tokens(uniq)["token"].numpy()[at]
        wn[valid] = (store.read(hook_b, uniq).double() - store.read(hook_a, uniq).double()).norm(dim=1).numpy()[at]
    mean_delta = tot["sum"] / n
    lens = {}
    if model is not None:
        from ..models import prepare_model

        m = prepare_model(model, device=torch.device("cpu")).model
        w_u, gain = unembedding(m)
        if w_u.shape[1] != da:
            raise AnalysisError(f"the model's unembedding takes width {w_u.shape[1]}, the hooks have {da}: no lens")
        masked = token_mask(w_u, None, float(lens_outlier_z), False)
        got = logit_lens(torch.from_numpy(mean_delta[None]).to(w_u.dtype), w_u, gain, int(lens_t), masked)
        lens.update({f"mean/{k.split('/')[1]}": v[0] for k, v in got.items() if k != "lens/masked"})
        if trows.size:
            d_rows = store.read(hook_b, trows) - store.read(hook_a, trows)
            got = logit_lens(d_rows.to(w_u.dtype), w_u, gain, int(lens_t), masked)
            lens.update({f"rows/{k.split('/')[1]}": v for k, v in got.items() if k != "lens/masked"})
    meta = {
        "store": {"path": str(store.path), "rows": store.rows},
        "groups": groups.to_json(),
        "block_rows": block_rows,
    }
    return LayerDiff(
        hook_a, hook_b, n, mean_norm, var**0.5, lo, hi, edges, hist, mean_delta,
        float(tot["na"][0]) / n, float(tot["nb"][0]) / n, trows, tnorm, tok, win, wn, lens, meta,
    )  # fmt: skip
