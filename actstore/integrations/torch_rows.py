"""``RowDataset``: a store as a map-style ``torch.utils.data.Dataset`` over its rows.

For users who want their own loop, sampler or ``DataLoader``::

    ds = RowDataset("acts", "blocks.6.hook_resid_post")          # ds[i]: float32 [d]
    dl = DataLoader(ds, batch_size=4096, shuffle=True, num_workers=2)
    for x in dl: ...                                              # x: [4096, d]

    ds = RowDataset("acts", ["blocks.6.ln2", "blocks.6.mlp"], tokens=True)
    ds[7]   # {"blocks.6.ln2": [d1], "blocks.6.mlp": [d2], "token", "doc", "pos", "row"}

With ``tokens=True`` an item also carries ``row``: its global store row index (int64
scalar; a batch: ``[B]``), the one key that names a row uniquely. ``(doc, pos)`` does not:
tokens a capture inserted (BOS, separators) have ``pos == -1``.

Index ``i`` is the ``i``-th kept row of the store's committed rows when the dataset was
made (segments in name order; ``drop_flags`` leaves BOS/special rows out). A
``DataLoader`` with automatic batching calls ``__getitems__`` with the whole batch's
indices, so each batch is one :meth:`actstore.Store.read` per hook (each chunk decoded
once), not ``batch_size`` single-row reads. The store is opened lazily in each process,
so the dataset pickles for ``spawn`` workers and nothing with threads crosses a ``fork``.

``normalize`` is the loader's: ``"mean_norm"`` scales by ``sqrt(d) / mean_norm`` from the
store's statistics, ``"standardize"`` gives ``(x - mean) / std``. For shuffled streaming at
full speed, and exact resume, use :class:`actstore.ActivationLoader`.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from ..api import open as open_store
from ..loader.loader import NORMALIZE, ROW_KEY, TOKEN_KEYS, parse_drop_flags
from ..store.errors import LoaderError
from ..store.reader import Store


class RowDataset(torch.utils.data.Dataset):
    """Row ``i`` of ``hooks`` (one name: a ``[d]`` tensor; a list: a dict); see the module docstring."""

    def __init__(
        self,
        store: Store | str,
        hooks: str | list[str],
        *,
        dtype: torch.dtype = torch.float32,
        normalize: str | None = None,
        drop_flags=None,
        tokens: bool = False,
    ):
        if normalize is not None and normalize not in NORMALIZE:
            raise LoaderError(f"unknown normalize {normalize!r}: use None, 'mean_norm' or 'standardize'")
        self.path = str(store.path) if isinstance(store, Store) else os.fspath(store)
        self._single = isinstance(hooks, str)
        self.hooks = [hooks] if self._single else list(hooks)
        self.dtype = dtype
        self.normalize = normalize
        self.tokens = bool(tokens)
        s = store if isinstance(store, Store) else open_store(self.path)
        self._store, self._pid = s, os.getpid()
        self.widths = {h: s._hook(h).d for h in self.hooks}  # UnknownHookError, one line
        if tokens and set(self.hooks) & {*TOKEN_KEYS, ROW_KEY}:
            clash = sorted(set(self.hooks) & {*TOKEN_KEYS, ROW_KEY})[0]
            raise LoaderError(f"a hook named {clash!r} collides with the token columns of tokens=True; rename it")
        mask = parse_drop_flags(drop_flags)
        # The snapshot: rows committed now; later commits need a new dataset.
        self.index = np.arange(s.rows, dtype=np.int64)
        if mask and s.rows:
            self.index = np.flatnonzero((s.tokens()["flags"].numpy() & mask) == 0).astype(np.int64)
        if self.index.size == 0:
            raise LoaderError(f"store {self.path} has no rows to serve (none committed, or all dropped by drop_flags)")
        self._norm = {h: self._norm_of(s, h) for h in self.hooks}

    def _norm_of(self, s: Store, hook: str):
        if self.normalize is None:
            return None, None
        st = s.stats(hook)
        if self.normalize == "mean_norm":
            mn = st["mean_norm"]
            if not mn or not math.isfinite(mn) or mn <= 0:
                raise LoaderError(
                    f"hook {hook!r} has no usable mean norm in the store's statistics ({mn}); use normalize=None"
                )
            return None, torch.tensor(math.sqrt(self.widths[hook]) / mn, dtype=torch.float32)
        std = np.asarray(st["std"], dtype=np.float64)
        mean = torch.from_numpy(np.asarray(st["mean"], dtype=np.float32))
        return mean, torch.from_numpy((1.0 / np.where(std > 0, std, 1.0)).astype(np.float32))

    def _open(self) -> Store:
        if self._store is None or self._pid != os.getpid():
            self._store, self._pid = open_store(self.path), os.getpid()
        return self._store

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"] = None  # thread pool and handles stay in the process that opened them
        return state

    def __len__(self) -> int:
        return int(self.index.size)

    def _rows(self, idx) -> np.ndarray:
        i = np.asarray(idx, dtype=np.int64)
        n = self.index.size
        if i.size and (i.min() < -n or i.max() >= n):
            bad = int(i[(i < -n) | (i >= n)][0])
            raise IndexError(f"row {bad} is out of range: the dataset has {n} rows")
        return self.index[i]

    def _read(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        s = self._open()
        out = {}
        for h in self.hooks:
            x = s.read(h, rows, dtype=torch.float32)
            shift, mul = self._norm[h]
            if shift is not None:
                x = x - shift
            if mul is not None:
                x = x * mul
            out[h] = x.to(self.dtype)
        if self.tokens:
            t = s.tokens(rows)
            out.update({k: t[k] for k in TOKEN_KEYS})
            out[ROW_KEY] = torch.from_numpy(rows.astype(np.int64, copy=True))  # global store rows, not dataset indices
        return out

    def __getitem__(self, i):
        got = self._read(self._rows([int(i)]))
        item = {k: v[0] for k, v in got.items()}
        return item[self.hooks[0]] if self._single and not self.tokens else item

    def __getitems__(self, indices) -> list:
        """A whole batch in one read per hook (the DataLoader's batched fetch); a list of items."""
        got = self._read(self._rows(list(indices)))
        if self._single and not self.tokens:
            return list(got[self.hooks[0]].unbind(0))
        n = len(indices)
        return [{k: v[j] for k, v in got.items()} for j in range(n)]

    def __repr__(self) -> str:
        return f"RowDataset({self.path!r}, hooks={self.hooks}, rows={len(self)})"
