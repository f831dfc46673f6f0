"""``actstore steering``: steering vectors of a store, per hook, from two row groups, into a
Zarr group (``actstore.analysis.steering``), with optional exports for the steering-vectors
and repeng packages.

Groups: ``--sources pos,neg`` (the capture's named sources; default when the store has
them), ``--labels TABLE`` (CSV/JSON/Parquet with doc,label) or ``--docs FILE`` (JSON
``{"name": [doc ids]}``); ``--positive``/``--negative`` name the two (default: the first two
groups). Positions: ``--positions all|last|after_prompt``; ``after_prompt`` takes
``--marker TEXT`` (tokenized with ``--tokenizer``, else ``--model``'s) or ``--marker-ids 1,2``.
"""

from __future__ import annotations

import json

from ..errors import AnalysisError
from ._groups import add_group_options, drop_state, groups_from_args, state_dir
from ._groups import marker as _marker_ids


def register(sub) -> None:
    p = sub.add_parser("steering", help="steering vectors (mean difference of two row groups) per hook of a store")
    p.add_argument("--store", required=True, help="the store to read")
    p.add_argument("--hooks", required=True, help="comma list of hooks (one pass reads all of them)")
    p.add_argument("--out", required=True, help="output folder (a Zarr v3 group)")
    add_group_options(p)
    p.add_argument(
        "--store-b", help="a second store: the vectors are mean(store B) - mean(store A = --store), one group each"
    )
    p.add_argument("--positive", help="the positive group (default: the first)")
    p.add_argument("--negative", help="the negative group (default: the second)")
    p.add_argument("--pca", action="store_true", help="also the paired-difference PCA direction")
    p.add_argument("--top-k", type=int, default=20, help="rows with the highest projection, with contexts")
    p.add_argument("--window", type=int, default=8, help="context tokens either side")
    p.add_argument("--model", help="HF causal LM folder (logit lens of the vectors; tokenizer for --marker)")
    p.add_argument("--export-steering-vectors", metavar="PT", help="also write the steering-vectors package's fields")
    p.add_argument("--export-repeng", metavar="GGUF", help="also write a repeng control-vector GGUF")
    p.add_argument("--model-hint", default="", help="model_hint of the repeng GGUF")
    p.add_argument(
        "--layers", help="HOOK=INDEX,... decoder layer of each hook for the exports (default: from ...layers.N)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(fn=run)


def run(args) -> int:
    # Deferred: they import torch, which building the parser (actstore --help) must not.
    import torch.distributed as dist

    from .._dist import init_if_launched
    from ..analysis.steering import steering_vectors
    from ..api import open as open_store

    store = open_store(args.store)
    groups = groups_from_args(store, args)
    if args.store_b:
        return _between(store, groups, args)
    if len(groups.names) < 2:
        raise AnalysisError(f"steering needs two groups, the selection has {list(groups.names)}")
    pos = args.positive or groups.names[0]
    neg = args.negative or groups.names[1]
    joined = init_if_launched()
    try:
        sv = steering_vectors(
            store,
            args.hooks,
            groups,
            pos,
            neg,
            pca=args.pca,
            top_k=args.top_k,
            window=args.window,
            model=args.model,
            block_rows=args.block_rows,
            state_dir=state_dir(args),
            commit_rows=args.commit_rows,
        )
    finally:
        if joined:
            dist.destroy_process_group()
    from .._dist import rank_world

    if rank_world(None, None)[0] != 0:
        return 0
    return _finish(sv, pos, neg, args)


def _between(store, groups, args) -> int:
    from ..analysis.groups import resolve
    from ..analysis.two_stores import steering_between
    from ..api import open as open_store

    store_b = open_store(args.store_b)
    groups_b = resolve(store_b, positions=args.positions, marker=_marker_ids(args), drop_flags=args.drop)
    if len(groups.names) != 1:  # --sources / --labels / --docs on store A: keep its rows of every group
        groups = resolve(store, positions=args.positions, marker=_marker_ids(args), drop_flags=args.drop)
    sv = steering_between(
        store, store_b, args.hooks, groups, groups_b, pca=args.pca, top_k=args.top_k, window=args.window,
        model=args.model, block_rows=args.block_rows, state_dir=state_dir(args), commit_rows=args.commit_rows,
    )  # fmt: skip
    return _finish(sv, "B", "A", args)


def _finish(sv, pos, neg, args) -> int:
    layers = None
    if args.layers:
        try:
            layers = {h.strip(): int(i) for h, _, i in (x.rpartition("=") for x in args.layers.split(","))}
        except ValueError:
            raise AnalysisError(f"--layers {args.layers!r} is not HOOK=INDEX,...") from None
    if args.export_steering_vectors or args.export_repeng:
        sv.layer_vectors(layers=layers)  # a hook with no layer index fails before anything is written
    out = sv.save(args.out)
    if args.export_steering_vectors:
        sv.export_steering_vectors(args.export_steering_vectors, layers=layers)
    if args.export_repeng:
        sv.export_repeng(args.export_repeng, args.model_hint, layers=layers)
    drop_state(args)
    summary = {
        "out": str(out),
        "positive": pos,
        "negative": neg,
        "rows": [sv.count_pos, sv.count_neg],
        "hooks": {h: {"norm": float(sv.norms[j]), "auroc": float(sv.auroc[j])} for j, h in enumerate(sv.hooks)},
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"steering vectors {pos} - {neg} ({sv.count_pos:,} vs {sv.count_neg:,} rows) into {out}")
        for j, h in enumerate(sv.hooks):
            print(f"  {h}: norm {sv.norms[j]:.4g}, AUROC {sv.auroc[j]:.3f}")
    return 0
