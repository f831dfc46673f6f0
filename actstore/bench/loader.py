"""``actstore bench loader``: batches/s and GB/s of the ActivationLoader.

A store of ``rows x d`` random bf16 values (token ids = row numbers). Variants,
interleaved: ``loader`` (one shuffled epoch of ``batch_size`` rows, fp32 on ``device``) and
``store_read`` (``Store.read`` of every row in order, then to ``device``: the same bytes
without shuffle windows or batches). GB/s count the stored bf16 bytes. Checked first: the
loader's epoch, put back in row order by its token ids, equals the store read.
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
from .harness import compare

HOOK = "h"


def run(
    rows: int = 262144, d: int = 1024, batch_size: int = 4096, device="cpu", repeats: int = 5, progress=None, **_
) -> dict:
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="actstore-bench-loader-"))
    path = work / "s"
    with create(path, {HOOK: d}, segment="s", dtype="bf16", durable=False) as w:
        w.append({HOOK: torch.randn(rows, d, generator=gen).to(torch.bfloat16)}, tokens=np.arange(rows))
    store = open_store(path)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    loader = ActivationLoader(store, HOOK, batch_size, shuffle=True, device=dev)
    batches = len(loader)

    def epoch():
        loader.set_epoch(0)
        for _ in loader:
            pass
        sync()

    def read():
        x = store.read(HOOK).to(dev)
        sync()
        return x

    def loader_in_row_order():
        ld = ActivationLoader(store, HOOK, batch_size, shuffle=True, device=dev, tokens=True)
        out = torch.empty(rows, d)
        for b in ld:
            out[b["token"].long().cpu()] = b[HOOK].cpu()
        ld.close()
        return out

    try:
        res = compare(
            "loader",
            {"loader": epoch, "store_read": read},
            work=rows * d * 2 / 1e9,
            unit="GB/s",
            ratios={"loader / plain read": ("loader", "store_read")},
            outputs={"store_read": lambda: read().cpu(), "loader": loader_in_row_order},
            repeats=repeats,
            params={"rows": rows, "d": d, "batch_size": batch_size, "batches": batches, "device": str(dev)},
            progress=progress,
        )
    finally:
        loader.close()
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    f = res["variants"]["loader"]
    f["batches_per_s"] = batches / f["median_s"]
    return res
