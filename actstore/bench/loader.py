"""``actstore bench loader``: batches/s and GB/s of the ActivationLoader.

Default data: a temporary store of ``rows x d`` random bf16 values, removed afterwards.
With ``store`` (``--store PATH``): the first ``rows`` rows (default: at most 262144) of
``hook`` in the user's own store, which is only read. Variants, interleaved: ``loader``
(one shuffled epoch of ``batch_size`` rows, fp32 on ``device``) and ``store_read``
(``Store.read`` of the same rows in order, then to ``device``: the same bytes without
shuffle windows or batches). GB/s count the stored bytes (activations and any per-row
scales). Checked first: the loader's epoch, put back in row order by its ``row`` column,
equals the store read.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..api import create
from ..api import open as open_store
from ..loader import ActivationLoader
from .harness import check_sizes, compare, open_user_store

HOOK = "h"
DEFAULT_ROWS = 262144


def run(
    rows: int | None = DEFAULT_ROWS,
    d: int | None = 1024,
    batch_size: int = 4096,
    device="cpu",
    repeats: int = 5,
    progress=None,
    store: str | None = None,
    hook: str | None = None,
    **_,
) -> dict:
    # Sizes first: nothing is written (no temporary folder left behind) for a bad one.
    check_sizes("loader", rows=rows, d=d, batch_size=batch_size, repeats=repeats)
    dev = torch.device(device)
    work = st = loader = None
    try:
        if store is None:
            rows = DEFAULT_ROWS if rows is None else rows
            d = 1024 if d is None else d
            name = HOOK
            work = Path(tempfile.mkdtemp(prefix="actstore-bench-loader-"))
            path = work / "s"
            gen = torch.Generator().manual_seed(0)
            with create(path, {name: d}, segment="s", dtype="bf16", durable=False) as w:
                w.append({name: torch.randn(rows, d, generator=gen).to(torch.bfloat16)}, tokens=np.arange(rows))
            st = open_store(path)
            row_bytes = d * 2
            source = {"store": "temporary (random bf16)", "dtype": "bf16"}
        else:
            st, spec, rows = open_user_store("loader", store, hook, rows, DEFAULT_ROWS, d)
            name, d = spec.name, spec.d
            arrays = {a.path: a for a in st.schema.arrays()}
            row_bytes = sum(
                arrays[p].dtype.itemsize * int(np.prod(arrays[p].row_shape or (1,)))
                for p in (spec.array, spec.scale_array)
                if p
            )
            source = {"store": str(store), "hook": name, "dtype": spec.dtype.name}
        # The rows benched: [0, rows). A loader over the whole store takes no row selection,
        # so that it runs the same code path (no per-block kept-row masks) as a user's would.
        sel = (0, rows)
        pick = None if rows == st.rows else sel

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        loader = ActivationLoader(st, name, batch_size, shuffle=True, device=dev, rows=pick)
        batches = len(loader)

        def epoch():
            loader.set_epoch(0)
            for _ in loader:
                pass
            sync()

        def read():
            x = st.read(name, slice(*sel)).to(dev)
            sync()
            return x

        def loader_in_row_order():
            ld = ActivationLoader(st, name, batch_size, shuffle=True, device=dev, tokens=True, rows=pick)
            out = torch.full((rows, d), float("nan"))  # a row the loader never gives stays NaN: the check fails
            for b in ld:
                out[b["row"].cpu()] = b[name].cpu()
            ld.close()
            return out

        res = compare(
            "loader",
            {"loader": epoch, "store_read": read},
            work=rows * row_bytes / 1e9,
            unit="GB/s",
            ratios={"loader / plain read": ("loader", "store_read")},
            outputs={"store_read": lambda: read().cpu(), "loader": loader_in_row_order},
            repeats=repeats,
            params={
                "rows": rows,
                "d": d,
                "batch_size": batch_size,
                "batches": batches,
                "device": str(dev),
                **source,
            },
            progress=progress,
        )
    finally:
        if loader is not None:
            loader.close()
        if st is not None:
            st.close()
        if work is not None:  # only the temporary store; the user's is never removed
            shutil.rmtree(work, ignore_errors=True)
    f = res["variants"]["loader"]
    f["batches_per_s"] = batches / f["median_s"]
    return res
