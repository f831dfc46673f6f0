"""Vector scan: project a store's rows on any set of vectors (steering vectors, probe
directions, SAE decoder rows) and report, per vector, a histogram of the projections and the
top and bottom rows with their token contexts.

``vectors``: ``[V, d]`` (tensor or array), used as given (``x . v``; pass unit vectors for
lengths along a direction), for one ``hook`` of width ``d`` (a different width is a one-line
error). Rows: those ``groups`` selects (``groups.py``). Two passes over the hook: the first
finds each vector's min and max and keeps the top and bottom ``k`` rows (value, then row:
the same under any split of the rows), the second fills ``bins`` equal-width bins on
``[min, max]``. Token windows (``window`` either side, never across a document) carry the
projection at every token.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import _dist
from ._checkpoint import COMMIT_ROWS, Checkpoint, store_identity
from ._pass import AnalysisError
from ._rows import check_hooks, n_blocks, share, stream
from .contexts import windows
from .output import FORMAT, prepare_out, write_group
from .steering import _gather

KIND = "scan"


@dataclass
class Scan:
    """Per vector ``i``: ``hist[i] [bins]`` on ``edges[i] [bins+1]``; ``top_rows / top_values
    [V, k]`` (descending) and ``bottom_rows / bottom_values [V, k]`` (ascending); windows
    ``top_tokens``, ``top_window_rows``, ``top_window_proj`` ``[V, k, 2W+1]`` (and ``bottom_*``)."""

    hook: str
    count: int
    edges: np.ndarray
    hist: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def save(self, out) -> Path:
        out = Path(out)
        prepare_out(out, KIND)
        arrays = {"scan/edges": self.edges, "scan/hist": self.hist, **{f"scan/{k}": v for k, v in self.arrays.items()}}
        attrs = {"format": FORMAT, "kind": KIND, "hook": self.hook, "count": self.count, **self.meta}
        write_group(out, arrays, attrs)
        return out


def _keep(rows, vals, k, largest):
    """Per column of ``vals [n, V]``, the ``k`` best (value, then row ascending): ``[V, k]`` rows and values."""
    V = vals.shape[1]
    kk = min(k, rows.size)
    r_out = np.full((V, k), -1, np.int64)
    v_out = np.zeros((V, k), np.float32)
    for i in range(V):
        key = -vals[:, i].astype(np.float64) if largest else vals[:, i].astype(np.float64)
        o = np.lexsort((rows, key))[:kk]
        r_out[i, :kk], v_out[i, :kk] = rows[o], vals[o, i]
    return r_out, v_out


def scan(
    store,
    hook: str,
    vectors,
    groups,
    *,
    k: int = 20,
    bins: int = 50,
    window: int = 8,
    block_rows: int = 4096,
    rank: int | None = None,
    world_size: int | None = None,
    state_dir=None,
    commit_rows: int = COMMIT_ROWS,
    on_commit=None,
) -> Scan:
    """Project the rows ``groups`` selects at ``hook`` on ``vectors [V, d]`` (see the module docstring).
    state_dir / commit_rows / on_commit: the passes ``scan.range`` and ``scan.hist`` commit
    their state there and a rerun continues from it (``_checkpoint.py``; None: no state)."""
    from ..api import open as open_store

    store = open_store(store) if isinstance(store, (str, os.PathLike)) else store
    (hook,) = check_hooks(store, [hook])
    v = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
    v = v[None] if v.dim() == 1 else v
    d = store.schema.hooks[hook].d
    if v.dim() != 2 or v.shape[1] != d:
        raise AnalysisError(
            f"vectors of width {v.shape[-1]} (shape {tuple(v.shape)}) do not match hook {hook!r} of width {d}: "
            f"give [V, {d}]"
        )
    V = v.shape[0]
    rank, world = _dist.rank_world(rank, world_size)
    ident = {"kind": KIND, "store": store_identity(store), "hooks": [hook], "groups": groups.to_json()}
    vsha = hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
    ident.update(vectors=[list(v.shape), vsha], k=int(k), bins=int(bins), block_rows=int(block_rows))
    ck = Checkpoint(state_dir, ident, rank, world, commit_rows, on_commit)
    blocks = share(n_blocks(store, block_rows), rank, world)
    state = {"n": 0, "lo": np.full(V, np.inf), "hi": np.full(V, -np.inf), "top": None, "bot": None}

    def fn(b):
        p = (b.x[hook] @ v.T).numpy()  # [n, V]
        state["n"] += b.rows.size
        state["lo"] = np.minimum(state["lo"], p.min(0))
        state["hi"] = np.maximum(state["hi"], p.max(0))
        # The running k best merged with the block's rows (exact: value, then row, a total order).
        for name, largest in (("top", True), ("bot", False)):
            state[name] = _merge(state[name], b.rows, p, k, largest)

    def save() -> dict:
        sd = {"n": np.array([state["n"]], np.int64), "lo": state["lo"], "hi": state["hi"]}
        for name in ("top", "bot"):
            if state[name] is not None:
                sd[f"{name}/rows"], sd[f"{name}/values"] = state[name]
        return sd

    def load(sd: dict) -> None:
        state.update(n=int(sd["n"][0]), lo=sd["lo"], hi=sd["hi"])
        for name in ("top", "bot"):
            state[name] = (sd[f"{name}/rows"], sd[f"{name}/values"]) if f"{name}/rows" in sd else None

    stream(store, [hook], groups, blocks, block_rows, fn, ck.track("scan.range", save, load) if ck else None)
    parts = _gather(state, world)
    n = sum(p["n"] for p in parts)
    if n == 0:
        raise AnalysisError("the groups select no rows: nothing to scan")
    lo = np.min([p["lo"] for p in parts], 0)
    hi = np.max([p["hi"] for p in parts], 0)
    res = {}
    for name, largest in (("top", True), ("bot", False)):
        merged = None
        for p in parts:
            if p[name] is not None:
                merged = _merge_tables(merged, p[name], k, largest)
        res[name] = merged
    edges = np.stack([np.linspace(a, b if b > a else a + 1.0, bins + 1) for a, b in zip(lo, hi)])
    hist = np.zeros((V, bins), np.int64)

    def fill(b):
        p = (b.x[hook] @ v.T).numpy().astype(np.float64)
        for i in range(V):
            idx = np.clip(np.searchsorted(edges[i], p[:, i], side="right") - 1, 0, bins - 1)
            hist[i] += np.bincount(idx, minlength=bins)

    def load_hist(sd: dict) -> None:
        hist[:] = sd["hist"]

    resume = ck.track("scan.hist", lambda: {"hist": hist}, load_hist) if ck else None
    stream(store, [hook], groups, blocks, block_rows, fill, resume)
    hist = sum(_gather(hist, world))

    def doc_of(idx):
        return store.tokens(idx)["doc"].numpy().astype(np.int64)

    arrays = {}
    for name, label in (("top", "top"), ("bot", "bottom")):
        rows, vals = res[name]
        arrays[f"{label}_rows"], arrays[f"{label}_values"] = rows, vals
        win = windows(doc_of, store.rows, rows.reshape(-1), int(window))
        tok = np.full(win.shape, -1, np.int32)
        wp = np.zeros(win.shape, np.float32)
        valid = win >= 0
        if valid.any():
            uniq = np.unique(win[valid])
            at = np.searchsorted(uniq, win[valid])
            tok[valid] = store.tokens(uniq)["token"].numpy()[at]
            vec_of = np.repeat(np.arange(V), k)[:, None].repeat(win.shape[1], 1)[valid]
            proj = (store.read(hook, uniq) @ v.T).numpy()  # [u, V]
            wp[valid] = proj[at, vec_of]
        L = 2 * int(window) + 1
        arrays[f"{label}_tokens"] = tok.reshape(V, k, L)
        arrays[f"{label}_window_rows"] = win.reshape(V, k, L)
        arrays[f"{label}_window_proj"] = wp.reshape(V, k, L)
    meta = {"store": {"path": str(store.path), "rows": store.rows}, "groups": groups.to_json(), "k": k, "bins": bins}
    return Scan(hook, int(n), edges, hist, arrays, meta)


def _merge(prev, rows, vals, k, largest):
    """The running ``([V, k] rows, [V, k] values)`` merged with rows ``[c]`` and their
    projections ``[c, V]``."""
    V = vals.shape[1]
    if rows.size == 0:
        return prev
    if prev is None:
        return _keep(rows, vals, k, largest)
    out_r = np.full((V, k), -1, np.int64)
    out_v = np.zeros((V, k), np.float32)
    for i in range(V):
        ok = prev[0][i] >= 0
        r = np.concatenate([prev[0][i][ok], rows])
        x = np.concatenate([prev[1][i][ok], vals[:, i]]).astype(np.float64)
        o = np.lexsort((r, -x if largest else x))[:k]
        out_r[i, : o.size], out_v[i, : o.size] = r[o], x[o]
    return out_r, out_v


def _merge_tables(a, b, k, largest):
    if a is None:
        return b
    V = a[0].shape[0]
    out_r = np.full((V, k), -1, np.int64)
    out_v = np.zeros((V, k), np.float32)
    for i in range(V):
        r = np.concatenate([a[0][i], b[0][i]])
        x = np.concatenate([a[1][i], b[1][i]]).astype(np.float64)
        ok = r >= 0
        r, x = r[ok], x[ok]
        o = np.lexsort((r, -x if largest else x))[:k]
        out_r[i, : o.size], out_v[i, : o.size] = r[o], x[o]
    return out_r, out_v
