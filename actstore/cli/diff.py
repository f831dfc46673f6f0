"""``actstore diff``: layer diffs ``x[B] - x[A]`` over a store's aligned rows
(``actstore.analysis.layer_diff``): norm statistics, the mean delta, the top rows by norm with
contexts, and with ``--model`` the logit lens of the mean delta and of the top rows."""

from __future__ import annotations

import json

from ._groups import add_group_options, drop_state, groups_from_args, state_dir


def register(sub) -> None:
    p = sub.add_parser("diff", help="the difference between two hooks' activations over a store's rows")
    p.add_argument("--store", required=True, help="the store to read")
    p.add_argument("--hook-a", required=True, help="the earlier hook (delta = B - A)")
    p.add_argument("--hook-b", required=True, help="the later hook")
    p.add_argument("--out", required=True, help="output folder (a Zarr v3 group)")
    p.add_argument("--top-k", type=int, default=20, help="rows with the largest ||delta||, with contexts")
    p.add_argument("--window", type=int, default=8, help="context tokens either side")
    p.add_argument("--bins", type=int, default=50, help="histogram bins of ||delta||")
    p.add_argument("--model", help="HF causal LM folder: logit lens of the mean delta and the top rows")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_group_options(p, default_sources=False)
    p.set_defaults(fn=run)


def run(args) -> int:
    # Deferred: they import torch, which building the parser (actstore --help) must not.
    from ..analysis.layer_diff import layer_diff
    from ..api import open as open_store

    store = open_store(args.store)
    groups = groups_from_args(store, args)
    res = layer_diff(
        store, args.hook_a, args.hook_b, groups, top_k=args.top_k, window=args.window, bins=args.bins,
        model=args.model, block_rows=args.block_rows, state_dir=state_dir(args), commit_rows=args.commit_rows,
    )  # fmt: skip
    res.save(args.out)
    drop_state(args)
    summary = {
        "out": str(args.out),
        "rows": res.count,
        "norm": {"mean": res.norm_mean, "std": res.norm_std, "min": res.norm_min, "max": res.norm_max},
        "mean_norm_a": res.mean_norm_a,
        "mean_norm_b": res.mean_norm_b,
        "top_rows": res.top_rows.tolist(),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{args.hook_b} - {args.hook_a} over {res.count:,} rows: ||delta|| mean {res.norm_mean:.4g} "
            f"(std {res.norm_std:.4g}, max {res.norm_max:.4g}); row norms {res.mean_norm_a:.4g} -> "
            f"{res.mean_norm_b:.4g}; into {args.out}"
        )
    return 0
