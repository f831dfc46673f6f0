"""Rows/s of the analysis pass (``stats,top,bins``) against the SAE encode alone on the same rows.

Variants, timed round-robin (``_common.interleaved``) over the same store and SAE:

- ``encode``: ``sae.encode`` on the rows already in memory, in the pass's blocks (the floor);
- ``read_encode``: the pass engine with no jobs (store read, one thread ahead, + encode + CSR
  to numpy);
- ``stats_top_bins``: the pass engine feeding ``stats``, ``top`` and ``bins`` (absolute and
  quantile modes: the equal-width mode is a second pass and is left out here);
- ``run``: ``actstore.analysis.run`` of those jobs end to end (state commits, Zarr output).

Overhead = median(variant) / median(encode) - 1. By default the store is synthetic
(Gaussian rows, bf16, zstd) and the SAE a randomly initialized TopK SAE: the jobs' cost
depends on the number of firing entries (rows x k), not on their values. ``--store S --hook
H --sae DIR`` runs on a real store and a trained SAE instead (``make demo`` leaves
``demo_store`` and ``demo_sae``), over its first ``--rows`` rows.

The jobs' cost per row falls as the run goes on (the top and bin tables fill, and then only
the few entries above their running thresholds reach a sort), so a short run measures
mostly the warm-up: use at least 100k rows for a figure that stands for a whole store.

usage: python benchmarks/bench_analysis.py [--rows 131072] [--d 256] [--m 4096] [--k 32] [--repeats 3]
       python benchmarks/bench_analysis.py --store demo_store --hook model.layers.15 --sae demo_sae
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import interleaved, metadata, summary, write_result

import actstore
import actstore.analysis as an
from actstore.analysis._pass import Encoder, Selection, stream
from actstore.analysis.bins import Bins
from actstore.analysis.feature_stats import FeatureStats
from actstore.analysis.top import Top
from actstore.sae import SAEConfig, TopKSAE
from actstore.sae.io import load as load_sae

JOBS = {"stats": {}, "top": {"k": 20}, "bins": {"n_equal": 0}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=131072)
    ap.add_argument("--store", help="a real store (default: a synthetic one)")
    ap.add_argument("--hook", help="with --store: the hook")
    ap.add_argument("--sae", help="with --store: a trained SAE folder")
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--m", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="analysis_cpu")
    args = ap.parse_args()
    meta = metadata()  # first, before any work
    tmp = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    try:
        if args.store:
            store, hook = actstore.open(args.store), args.hook
            sae = load_sae(args.sae).eval()
            args.rows = min(args.rows, store.rows)
            args.d, args.m, args.k = sae.cfg.d, sae.cfg.m, getattr(sae.cfg, "k", None)
        else:
            g = np.random.default_rng(0)
            x = g.standard_normal((args.rows, args.d)).astype(np.float32)
            with actstore.create(tmp / "store", {"h": args.d}, segment="a") as w:
                w.append(
                    {"h": x},
                    tokens=g.integers(0, 50000, args.rows),
                    doc=np.arange(args.rows) // 512,
                    pos=np.arange(args.rows) % 512,
                )
            store, hook = actstore.open(tmp / "store"), "h"
            sae = TopKSAE(SAEConfig("topk", args.d, args.m, k=args.k, hook="h")).eval()
        xs = [store.read(hook, slice(a, a + args.block)) for a in range(0, args.rows, args.block)]
        enc = Encoder(sae)
        sel = Selection(0, args.rows)
        blocks = sel.blocks(args.block)

        def encode():
            with torch.no_grad():
                for xb in xs:
                    sae.encode(xb)

        def read_encode():
            stream(store, hook, enc, sel, blocks, args.block, [])

        def jobs():
            reducers = [FeatureStats(args.m), Top(args.m, k=20), Bins(args.m, n_equal=0)]
            stream(store, hook, enc, sel, blocks, args.block, reducers)
            for r in reducers:
                r.result()

        def full_run():
            an.run(store, sae, JOBS, tmp / "out", hook=hook, block_rows=args.block, rows=(0, args.rows))

        times = interleaved(
            {"encode": encode, "read_encode": read_encode, "stats_top_bins": jobs, "run": full_run},
            args.repeats,
            teardown={"run": lambda: shutil.rmtree(tmp / "out", ignore_errors=True)},
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {name: {**summary(t), "rows_per_s_median": args.rows / summary(t)["median_s"]} for name, t in times.items()}
    base = res["encode"]["median_s"]
    for name in res:
        res[name]["overhead_vs_encode"] = res[name]["median_s"] / base - 1
    doc = {
        "meta": meta,
        "config": vars(args),
        "jobs": JOBS,
        "results": res,
        "overhead_stats_top_bins_vs_encode": res["stats_top_bins"]["overhead_vs_encode"],
        "target_overhead": 0.15,
    }
    path = write_result(args.out, doc)
    for name, r in res.items():
        print(
            f"{name:15s} {r['rows_per_s_median']:>12,.0f} rows/s  median {r['median_s']:.3f}s "
            f"[{r['min_s']:.3f}, {r['max_s']:.3f}]  overhead {r['overhead_vs_encode']:+.1%}"
        )
    print(path)


if __name__ == "__main__":
    main()
