"""``to_hf_dataset``: a store as a Hugging Face ``datasets.IterableDataset`` of rows.

    ds = to_hf_dataset("acts", "blocks.6.hook_resid_post")      # rows: {"blocks.6...": [d], "token", "doc", "pos"}
    ds = ds.shuffle(seed=0, buffer_size=10_000).with_format("torch")
    for row in ds: ...                                           # row["blocks.6..."]: float32 tensor [d]
    DataLoader(ds, batch_size=4096, num_workers=2)               # each worker takes whole shards

Rows come in store order from the store's committed rows when the dataset was made
(segments in name order). The rows are cut into shards of whole chunks (``rows_per_shard``,
rounded up to whole chunks of the widest hook), handed to ``datasets`` as a list in its
generator keyword arguments, so its machinery does the rest: ``.shuffle()`` permutes the
shards and shuffles rows in a buffer, ``DataLoader`` workers and ``split_dataset_by_node``
split the shards. Each shard is read a block of chunks at a time through
:meth:`actstore.Store.read` (one decode per chunk).

Features: each hook a ``List(Value(dtype), length=d)`` (``with_format("torch")`` gives a
``[d]`` tensor per row, ``[B, d]`` per batch), ``token`` int32, ``doc`` int64, ``pos`` int32
(with ``tokens=True``, the default); ``dtype`` float32 or float16 (arrow has no bfloat16;
bf16 stores read back exactly as float32): the Arrow column's type (``with_format("arrow")``
shows it); ``with_format("numpy")`` and ``("torch")`` widen floats to float32, as ``datasets``
does for any Arrow-backed dataset. ``drop_flags`` leaves BOS/special rows out.

Why Arrow tables: a generator of row dicts makes ``datasets`` re-encode each row's
``[d]`` array as a list of ``d`` Python scalars, which ``with_format("torch")`` then turns
into ``d`` one-element tensors and stacks (130-320 rows/s). Blocks handed over as Arrow
tables (a fixed-size list column) take its table path instead: each row's ``[d]`` is one
numpy view and one tensor (benchmarks/bench_hf_datasets.py measures both). With a
``datasets`` that lacks that path the rows go through the row generator, as before.
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
TOKEN_FEATURES = {"token": "int32", "doc": "int64", "pos": "int32"}


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
    feats = features(datasets, {sp.name: sp.d for sp in specs}, dtype, tokens)
    gen_kwargs = {
        "shards": shards,  # the one list: datasets shards over it
        "path": path,
        "hooks": tuple(names),
        "tokens": tokens,
        "drop": parse_drop_flags(drop_flags),
        "dtype": dtype,
        "block": block,
        "snapshot": rows,
    }
    try:
        from datasets.iterable_dataset import ArrowExamplesIterable
    except ImportError:  # a datasets without the table path: rows one by one (slow with a tensor format)
        return datasets.IterableDataset.from_generator(_rows, features=feats, gen_kwargs=gen_kwargs)
    return datasets.IterableDataset(
        ArrowExamplesIterable(_tables, {**gen_kwargs, "features": feats}),
        info=datasets.DatasetInfo(features=feats),
    )


def features(datasets, widths: dict[str, int], dtype: str = "float32", tokens: bool = True):
    """The ``datasets.Features`` of :func:`to_hf_dataset`: each hook ``List(Value(dtype), length=d)``
    (``widths``: hook -> d), then the token columns."""
    feats = {h: datasets.List(datasets.Value(dtype), length=d) for h, d in widths.items()}
    if tokens:
        feats.update({k: datasets.Value(t) for k, t in TOKEN_FEATURES.items()})
    return datasets.Features(feats)


def _blocks(shards, path, hooks, tokens, drop, dtype, block, snapshot):
    """``((shard's first row, block's first row), {column: numpy [n] or [n, d]})`` for the kept rows of ``shards``, in
    order, a few chunks (``4 * block`` rows) at a time."""
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
                out = {h: s.read(h, rows, dtype=_DTYPES[dtype]).numpy() for h in hooks}
                if tokens:
                    out.update({k: cols[k].numpy().astype(t, copy=False) for k, t in TOKEN_FEATURES.items()})
                yield (lo, a), out


def _tables(features, **kwargs):
    """The Arrow tables behind :func:`to_hf_dataset`: one per block of kept rows, each hook a
    fixed-size list column (zero-copy from the ``[n, d]`` array), in the features' schema."""
    import pyarrow as pa

    try:
        from datasets.builder import Key
    except ImportError:  # older datasets: any hashable key

        def Key(lo, a):  # noqa: N802 - stands in for the class
            return f"{lo}_{a}"

    schema = features.arrow_schema
    for (lo, a), cols in _blocks(**kwargs):
        arrays = []
        for field in schema:
            x = cols[field.name]
            if x.ndim == 2:
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]).cast(field.type))
            else:
                arrays.append(pa.array(x, type=field.type))
        yield Key(lo, a), pa.Table.from_arrays(arrays, schema=schema)  # (shard's first row, block's first row)


def _rows(**kwargs):
    """Rows one by one (``{hook: numpy [d], token: int, ...}``): the generator for a
    ``datasets`` without the table path."""
    for _, cols in _blocks(**kwargs):
        n = next(iter(cols.values())).shape[0]
        for j in range(n):
            yield {k: (v[j] if v.ndim == 2 else v[j].item()) for k, v in cols.items()}
