"""``actstore scan``: project a store's rows at one hook on some vectors
(``actstore.analysis.scan``): a histogram per vector and the top and bottom rows with contexts.

``--vectors`` is a ``.npy`` file ``[V, d]``; a folder written by ``actstore steering`` (the
hook's unit steering vector) or ``actstore probe`` (the hook's unit logistic and mass-mean
directions); or an SAE folder (its decoder rows, ``--latents 3,17`` to pick some).
"""

from __future__ import annotations

import json

from ._groups import add_group_options, drop_state, groups_from_args, state_dir


def register(sub) -> None:
    p = sub.add_parser("scan", help="project a store's rows on vectors: histograms, top and bottom rows with contexts")
    p.add_argument("--store", required=True, help="the store to read")
    p.add_argument("--hook", required=True, help="the hook whose rows are projected")
    p.add_argument("--vectors", required=True, help=".npy [V, d], a steering or probe output folder, or an SAE folder")
    p.add_argument("--latents", help="comma list of SAE latents (with an SAE folder; default: all)")
    p.add_argument("--out", required=True, help="output folder (a Zarr v3 group)")
    p.add_argument("--k", type=int, default=20, help="top and bottom rows per vector")
    p.add_argument("--bins", type=int, default=50, help="histogram bins per vector")
    p.add_argument("--window", type=int, default=8, help="context tokens either side")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_group_options(p, default_sources=False)
    p.set_defaults(fn=run)


def run(args) -> int:
    # Deferred: they import torch, which building the parser (actstore --help) must not.
    from ..analysis.jobs import load_vectors
    from ..analysis.scan import scan
    from ..api import open as open_store

    store = open_store(args.store)
    groups = groups_from_args(store, args)
    vecs = load_vectors(args.vectors, args.hook, args.latents)
    res = scan(
        store, args.hook, vecs, groups, k=args.k, bins=args.bins, window=args.window, block_rows=args.block_rows,
        state_dir=state_dir(args), commit_rows=args.commit_rows,
    )  # fmt: skip
    res.save(args.out)
    drop_state(args)
    summary = {
        "out": str(args.out),
        "rows": res.count,
        "vectors": int(vecs.shape[0]),
        "range": [[float(e[0]), float(e[-1])] for e in res.edges],
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"scanned {res.count:,} rows of {args.hook} on {vecs.shape[0]} vectors into {args.out}")
    return 0
