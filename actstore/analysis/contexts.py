"""``contexts``: the token window around every selected example, with the latent's
activation at each token of it.

Runs after the pass, on the examples the ``top`` and ``bins`` jobs selected: for an
example (latent l, store row r) the window is rows ``r-W .. r+W`` (``window`` W) of the
store, cut at the first row, going outwards from r, that belongs to another document (or
lies outside the store), so a window never crosses a document boundary. The window's rows
are read from the store's token columns and re-encoded with the SAE (in blocks of
``block_rows`` sorted unique rows, the union over every source, once) to give l's
activation at each of them. Rows outside
the selection (e.g. dropped BOS rows) still appear in windows: they are the text.

Output, for every example array ``<src>/rows [...]`` (``top``, ``bins/abs``, ...):
``contexts/<src>/tokens [..., 2W+1]`` int32 (-1 outside the window or for padding),
``contexts/<src>/acts [..., 2W+1]`` float32 (0 outside) and ``contexts/<src>/rows
[..., 2W+1]`` int64 (store rows, -1 outside); index W is the example itself.
"""

from __future__ import annotations

import numpy as np

from ._pass import Encoder


def windows(doc_of, n_rows: int, rows: np.ndarray, w: int) -> np.ndarray:
    """``[E, 2W+1]`` store rows of the windows around ``rows [E]`` (-1 outside); ``doc_of(idx)``
    returns the document id of store rows ``idx``."""
    off = np.arange(-w, w + 1)
    win = rows[:, None] + off[None, :]
    inside = (win >= 0) & (win < n_rows) & (rows[:, None] >= 0)
    uniq = np.unique(win[inside])
    docs = np.full(win.shape, np.iinfo(np.int64).min, np.int64)
    docs[inside] = doc_of(uniq)[np.searchsorted(uniq, win[inside])]
    same = inside & (docs == docs[:, w : w + 1])
    # Keep a side only up to its first row of another document: a cumulative AND outwards.
    right = np.cumprod(same[:, w:], axis=1).astype(bool)
    left = np.cumprod(same[:, w::-1], axis=1).astype(bool)[:, ::-1]
    ok = np.concatenate([left[:, :w], right], axis=1)
    return np.where(ok, win, -1)


def activations_at(store, hook: str, encoder: Encoder, win: np.ndarray, lat: np.ndarray, block_rows: int) -> np.ndarray:
    """Latent ``lat[e]``'s activation at every row of ``win [E, L]`` (0 where -1)."""
    out = np.zeros(win.shape, np.float32)
    valid = win >= 0
    uniq = np.unique(win[valid])
    m = encoder.sae.cfg.m
    qk = win[valid] * m + np.broadcast_to(lat[:, None], win.shape)[valid]
    qv = np.zeros(qk.size, np.float32)
    for a in range(0, uniq.size, block_rows):
        rows = uniq[a : a + block_rows]
        _, ent_row, cols, vals = encoder(store.read(hook, rows))
        keys = rows[ent_row] * m + cols
        o = np.argsort(keys, kind="stable")
        keys, vals = keys[o], vals[o]
        pos = np.clip(np.searchsorted(keys, qk), 0, max(keys.size - 1, 0))
        if keys.size:
            hit = keys[pos] == qk
            qv[hit] = vals[pos[hit]]
    out[valid] = qv
    return out


def contexts(
    store, hook: str, encoder: Encoder, examples: dict[str, np.ndarray], window: int, block_rows: int
) -> dict[str, np.ndarray]:
    """``examples``: source name -> ``rows [m, ...]`` (-1 pad); the latent is the first index."""
    out = {}
    n = store.rows
    L = 2 * window + 1

    def doc_of(idx):
        return store.tokens(idx)["doc"].numpy().astype(np.int64)

    wins, lats = {}, {}
    for src, rows in examples.items():
        flat = rows.reshape(-1)
        lats[src] = np.repeat(np.arange(rows.shape[0]), flat.size // max(rows.shape[0], 1))
        wins[src] = windows(doc_of, n, flat, window)
    # Every source's windows in one re-encode: they share most rows (a latent's top examples
    # and its upper bins overlap), and each block of rows costs a full SAE encode; encoding
    # per source re-read and re-encoded the union up to four times (``bench_saedashboard.py``
    # found contexts at 3/4 of a whole analysis).
    win = np.concatenate([wins[s] for s in examples]) if examples else np.zeros((0, L), np.int64)
    lat = np.concatenate([lats[s] for s in examples]) if examples else np.zeros(0, np.int64)
    tok = np.full(win.shape, -1, np.int32)
    valid = win >= 0
    if valid.any():
        uniq = np.unique(win[valid])
        tok[valid] = store.tokens(uniq)["token"].numpy()[np.searchsorted(uniq, win[valid])]
    acts = activations_at(store, hook, encoder, win, lat, block_rows)
    at = 0
    for src, rows in examples.items():
        e = wins[src].shape[0]
        out[f"contexts/{src}/tokens"] = tok[at : at + e].reshape(*rows.shape, L)
        out[f"contexts/{src}/acts"] = acts[at : at + e].reshape(*rows.shape, L)
        out[f"contexts/{src}/rows"] = wins[src].reshape(*rows.shape, L)
        at += e
    return out
