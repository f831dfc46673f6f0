"""``actstore probe``: linear probes of two row groups per hook (``actstore.analysis.probes``):
mass-mean and streamed logistic regression, split by document; accuracy and AUROC per hook,
and ``OUT/probes.svg`` across the hooks."""

from __future__ import annotations

import json

from ..errors import AnalysisError
from ._groups import add_group_options, drop_state, groups_from_args, state_dir


def register(sub) -> None:
    p = sub.add_parser("probe", help="linear probes (mass-mean, logistic) of two row groups per hook of a store")
    p.add_argument("--store", required=True, help="the store to read")
    p.add_argument("--hooks", required=True, help="comma list of hooks (one pass reads all of them)")
    p.add_argument("--out", required=True, help="output folder (a Zarr v3 group)")
    p.add_argument("--positive", help="the positive group (default: the first)")
    p.add_argument("--negative", help="the negative group (default: the second)")
    p.add_argument("--test-frac", type=float, default=0.25, help="share of documents held out for testing")
    p.add_argument("--seed", type=int, default=0, help="seed of the document split")
    p.add_argument("--epochs", type=int, default=20, help="passes of minibatch Adam for the logistic probe")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    p.add_argument("--batch", type=int, default=256, help="rows per Adam step")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength, as sklearn's LogisticRegression")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_group_options(p, default_sources=True)
    p.set_defaults(fn=run)


def run(args) -> int:
    # Deferred: they import torch, which building the parser (actstore --help) must not.
    from ..analysis.probes import probes
    from ..api import open as open_store

    store = open_store(args.store)
    groups = groups_from_args(store, args)
    if len(groups.names) < 2:
        raise AnalysisError(f"a probe needs two groups, the selection has {list(groups.names)}")
    pos, neg = args.positive or groups.names[0], args.negative or groups.names[1]
    res = probes(
        store, args.hooks, groups, pos, neg, test_frac=args.test_frac, seed=args.seed, epochs=args.epochs,
        lr=args.lr, batch=args.batch, C=args.C, block_rows=args.block_rows, state_dir=state_dir(args),
        commit_rows=args.commit_rows,
    )  # fmt: skip
    res.save(args.out)
    drop_state(args)
    summary = {
        "out": str(args.out),
        "counts": res.counts,
        "hooks": {
            h: {k: {"accuracy": float(res.accuracy[k][j]), "auroc": float(res.auroc[k][j])} for k in res.accuracy}
            for j, h in enumerate(res.hooks)
        },
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"probes {pos} vs {neg} ({res.counts}) into {args.out}")
        for j, h in enumerate(res.hooks):
            mm, lg = (res.accuracy[k][j] for k in ("mass_mean", "logistic"))
            print(
                f"  {h}: accuracy mass-mean {mm:.3f}, logistic {lg:.3f}; AUROC logistic {res.auroc['logistic'][j]:.3f}"
            )
    return 0
