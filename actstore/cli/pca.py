"""``actstore pca``: normalized PCA of a store's hooks (``actstore.analysis.pca``) into a Zarr
group with one SVG scatter per hook (``OUT/pca_<j>.svg``, coloured by group); with two hooks
or ``--store-b`` (its PCA goes to ``OUT/store_b``), the principal angles between the leading
subspaces are printed and saved (attribute ``principal_angles``)."""

from __future__ import annotations

import json

from ._groups import add_group_options, drop_state, groups_from_args, state_dir


def register(sub) -> None:
    p = sub.add_parser("pca", help="normalized PCA of hooks of a store (components, explained variance, SVG)")
    p.add_argument("--store", required=True, help="the store to read")
    p.add_argument("--hooks", required=True, help="comma list of hooks (one pass reads all of them)")
    p.add_argument("--out", required=True, help="output folder (a Zarr v3 group)")
    p.add_argument("--store-b", help="a second store: PCA of the same hooks there, and the principal angles")
    p.add_argument("--k", type=int, default=10, help="components kept")
    p.add_argument("--standardize", action="store_true", help="standardize with the store's mean and std first")
    p.add_argument("--sample", type=int, default=2000, help="rows projected for the plot")
    p.add_argument("--seed", type=int, default=0, help="seed of the hashed sample")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_group_options(p, default_sources=True)
    p.set_defaults(fn=run)


def _one(path, args, state):
    # Deferred: they import torch, which building the parser (actstore --help) must not.
    from ..analysis.pca import pca
    from ..api import open as open_store

    store = open_store(path)
    groups = groups_from_args(store, args)
    kw = dict(k=args.k, standardize=args.standardize, sample=args.sample, seed=args.seed, block_rows=args.block_rows)
    return pca(store, args.hooks, groups, state_dir=state, commit_rows=args.commit_rows, **kw)


def run(args) -> int:
    import numpy as np

    from ..analysis.jobs import hook_angles  # deferred, as in _one
    from ..analysis.pca import principal_angles

    res = _one(args.store, args, state_dir(args))
    summary = {
        "out": str(args.out),
        "rows": res.count,
        "explained_ratio": {h: res.explained_ratio[h].tolist() for h in res.hooks},
    }
    angles = {}
    other = None
    if args.store_b:
        other = _one(args.store_b, args, state_dir(args, "store_b"))
        for h in res.hooks:
            angles[f"{h} (A vs B)"] = principal_angles(res.components[h], other.components[h]).tolist()
    angles.update(hook_angles(res))
    if angles:
        res.meta["principal_angles"] = angles
    res.save(args.out)
    if other is not None:
        other.save(f"{args.out}/store_b")  # a child group of the output, written after it
    drop_state(args)
    summary["principal_angles"] = angles
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"PCA of {res.count:,} rows into {args.out}")
        for h in res.hooks:
            r = res.explained_ratio[h]
            head = ", ".join(f"{x:.3f}" for x in r[:5])
            print(f"  {h}: first {len(r)} components explain {100 * r.sum():.1f}% ({head} ...)")
        for name, a in angles.items():
            print(f"  principal angles {name} (degrees): {', '.join(f'{x:.1f}' for x in np.degrees(a)[:5])} ...")
    return 0
