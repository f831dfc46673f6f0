"""``actstore bench store``: write and read GB/s of a store against its codec's own ceiling.

Data: ``rows x d`` random bf16 values (one hook; GB = the raw bf16 bytes, decimal). With
``store`` (``--store PATH``): the first ``rows`` rows (default: at most 262144) of ``hook``
in the user's own store, read once as bf16, so that the codec sees real activations
(random values compress less than those); they are written to a temporary store like the
random ones, and the user's store is only read.
Variants, interleaved: ``store_write`` (create + append + close, durable as ``create``
makes it by default: every object fsynced before its rename, what a user's write costs),
``store_write_nondurable`` (the same with ``durable=False``, no fsync: not what ``create``
gives, kept to show what the fsyncs cost) and ``codec_encode`` (the store's ChunkCodec on
the same chunks, in memory, on the store's thread count: the ceiling of a write);
``store_read`` (``Store.read`` of every row) and ``codec_decode`` (the same chunks decoded
in memory: the ceiling of a read). Checked first: the store reads back the input bit for
bit (durable and not), and so does the codec.
"""

from __future__ import annotations

import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .._native import default_threads
from ..api import create
from ..api import open as open_store
from ..store.codecs import codec_from_preset
from .harness import check_sizes, compare, open_user_store

HOOK = "h"
DEFAULT_ROWS = 262144


def run(
    rows: int | None = DEFAULT_ROWS,
    d: int | None = 1024,
    codec: str = "zstd",
    repeats: int = 5,
    progress=None,
    store: str | None = None,
    hook: str | None = None,
    **_,
) -> dict:
    # Sizes first, and the data in memory, before the temporary folder exists.
    check_sizes("store", rows=rows, d=d, repeats=repeats)
    if store is None:
        rows = DEFAULT_ROWS if rows is None else rows
        d = 1024 if d is None else d
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(rows, d, generator=gen).to(torch.bfloat16)
        source = {"source": "random bf16"}
    else:
        user, spec, rows = open_user_store("store", store, hook, rows, DEFAULT_ROWS, d)
        with user:
            d = spec.d
            x = user.read(spec.name, slice(0, rows), dtype=torch.bfloat16)
        source = {"source": str(store), "hook": spec.name, "source_dtype": spec.dtype.name}
    raw = x.view(torch.int16).numpy()
    threads = default_threads()
    work = Path(tempfile.mkdtemp(prefix="actstore-bench-store-"))
    path = work / "s"
    pool = None

    def write(**durability):
        # durability: empty for create's default (durable); {"durable": False} for the labelled variant
        shutil.rmtree(path, ignore_errors=True)
        with create(path, {HOOK: d}, segment="s", dtype="bf16", codec=codec, **durability) as w:
            w.append({HOOK: x})

    def encode():
        return list(pool.map(cc.encode, chunks))

    def decode():
        out = np.empty_like(raw)

        def one(i):
            cc.decode_into(encoded[i], out[i * chunk_rows : (i + 1) * chunk_rows])

        list(pool.map(one, range(len(chunks))))
        return out

    def read():
        with open_store(path) as st:
            return st.read(HOOK, dtype=torch.bfloat16)

    try:  # from the first write on, so that the temporary store goes whatever fails
        write()
        with open_store(path) as st:
            chunk_rows = st._hook(HOOK).chunk_rows
        chunks = [np.ascontiguousarray(raw[i : i + chunk_rows]) for i in range(0, rows, chunk_rows)]
        cc = codec_from_preset(codec).with_typesize(2)
        pool = ThreadPoolExecutor(threads)
        encoded = list(pool.map(cc.encode, chunks))
        res = compare(
            "store",
            {
                "store_write": write,
                "store_write_nondurable": lambda: write(durable=False),
                "codec_encode": encode,
                "store_read": read,
                "codec_decode": decode,
            },
            work=rows * d * 2 / 1e9,
            unit="GB/s",
            ratios={
                "write / codec ceiling": ("store_write", "codec_encode"),
                "non-durable write (no fsync) / codec ceiling": ("store_write_nondurable", "codec_encode"),
                "read / codec ceiling": ("store_read", "codec_decode"),
            },
            outputs={
                "input": lambda: raw,
                "store (write, read back)": lambda: (write(), read().view(torch.int16))[1],
                "store (non-durable write, read back)": lambda: (write(durable=False), read().view(torch.int16))[1],
                "codec (encode, decode)": lambda: decode(),
            },
            repeats=repeats,
            params={
                "rows": rows,
                "d": d,
                "dtype": "bf16",
                "codec": codec,
                "store_write": "durable (create's default: fsync before each rename)",
                "store_write_nondurable": "durable=False (no fsync): not what create gives",
                "threads": threads,
                "chunk_rows": chunk_rows,
                **source,
            },
            progress=progress,
        )
    finally:
        if pool is not None:
            pool.shutdown()
        shutil.rmtree(work, ignore_errors=True)  # the temporary store only; a --store is never written
    return res
