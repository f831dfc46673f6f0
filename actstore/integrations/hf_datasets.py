"""``to_hf_dataset``: a store as a Hugging Face ``datasets.IterableDataset`` of rows.

    ds = to_hf_dataset("acts", "blocks.6.hook_resid_post")      # rows: {"blocks.6...": [d], "token", "doc", "pos"}
    ds = ds.shuffle(seed=0, buffer_size=10_000).with_format("torch")
    for row in ds: ...
    DataLoader(ds, batch_size=4096, num_workers=2)               # each worker takes whole shards

Rows come in store order from the store's committed rows when the dataset was made
(segments in name order). The rows are cut into shards of whole chunks (``rows_per_shard``,
rounded up to whole chunks of the widest hook), handed to ``datasets`` as a list in
``gen_kwargs``, so its machinery does the rest: ``.shuffle()`` permutes the shards and
shuffles rows in a buffer, ``DataLoader`` workers and ``split_dataset_by_node`` split the
shards. Each shard is read a block of chunks at a time through :meth:`actstore.Store.read`
(one decode per chunk), then yielded row by row, as ``datasets`` generators are.

Features: each hook a ``List(Value(dtype), length=d)``, ``token`` int32, ``doc`` int64,
``pos`` int32 (with ``tokens=True``, the default); ``dtype`` float32 or float16 (arrow has no
bfloat16; bf16 stores read back exactly as float32). ``drop_flags`` leaves BOS/special rows out.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..api import open as open_store
from ..loader.loader import parse_drop_flags
from ..store.errors import LoaderError
from ..store.reader import Store
from ._common import require

_DTYPES = {"float32": torch.float32, "float16": torch.float16}  # arrow has no bfloat16


def to_hf_dataset(
    store: Store | str,
    hooks: str | list[str],
    *,
    tokens: bool = True,
    drop_flags=None,
    dtype: str = "float32",
    rows_per_shard: int = 65536,
):
    """A ``datasets.IterableDataset`` over the store's rows; see the module docstring."""
    datasets = require("datasets", "datasets")
    if dtype not in _DTYPES:
        raise LoaderError(f"dtype {dtype!r}: use float32 or float16 (arrow has no bfloat16)")
    path = str(store.path) if isinstance(store, Store) else os.fspath(store)
    s = store if isinstance(store, Store) else open_store(path)
    names = [hooks] if isinstance(hooks, str) else list(hooks)
    try:
        specs = [s._hook(h) for h in names]  # UnknownHookError, one line
        rows = s.rows
    finally:
        if s is not store:
            s.close()
    if not rows:
        raise LoaderError(f"store {path} has no committed rows: capture or append activations first")
    block = max(sp.chunk_rows for sp in specs)
    step = max(block, -(-int(rows_per_shard) // block) * block)
    shards = [(lo, min(lo + step, rows)) for lo in range(0, rows, step)]
    feats = {sp.name: datasets.List(datasets.Value(dtype), length=sp.d) for sp in specs}
    if tokens:
        feats.update(token=datasets.Value("int32"), doc=datasets.Value("int64"), pos=datasets.Value("int32"))
    return datasets.IterableDataset.from_generator(
        _rows,
        features=datasets.Features(feats),
        gen_kwargs={
            "shards": shards,  # the one list: datasets shards over it
            "path": path,
            "hooks": tuple(names),
            "tokens": tokens,
            "drop": parse_drop_flags(drop_flags),
            "dtype": dtype,
            "block": block,
            "snapshot": rows,
        },
    )


def _rows(shards, path, hooks, tokens, drop, dtype, block, snapshot):
    """The generator behind :func:`to_hf_dataset`: the rows of ``shards``, in order."""
    with open_store(path) as s:
        if s.rows < snapshot:
            raise LoaderError(
                f"store {path} has {s.rows} committed rows, fewer than the {snapshot} it had; remake the dataset"
            )
        for lo, hi in shards:
            for a in range(lo, hi, 4 * block):
                rows = np.arange(a, min(a + 4 * block, hi), dtype=np.int64)
                cols = s.tokens(rows) if (tokens or drop) else {}
                if drop:
                    keep = (cols["flags"].numpy() & drop) == 0
                    rows = rows[keep]
                    cols = {k: v[torch.from_numpy(keep)] for k, v in cols.items()}
                if not rows.size:
                    continue
                acts = {h: s.read(h, rows, dtype=_DTYPES[dtype]).numpy() for h in hooks}
                tok = {k: cols[k].numpy() for k in ("token", "doc", "pos")} if tokens else {}
                for j in range(rows.size):
                    row = {h: acts[h][j] for h in hooks}
                    for k, v in tok.items():
                        row[k] = v[j].item()
                    yield row
