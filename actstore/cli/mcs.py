"""``actstore mcs``: compare two SAEs by the maximum cosine similarity of their decoder
directions, both ways, and list each direction's nearest neighbours within the first SAE
(``actstore.analysis.dictionary``; tiled, never an m x m matrix)."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("mcs", help="maximum cosine similarity between two SAEs' decoders (+ nearest neighbours)")
    p.add_argument("--sae-a", required=True, help="SAE folder (actstore train OUT/sae or actstore.sae.save)")
    p.add_argument("--sae-b", required=True, help="the other SAE folder")
    p.add_argument("--out", required=True, help="output folder (a Zarr v3 group)")
    p.add_argument("--neighbours", type=int, default=10, help="nearest neighbours kept within SAE A (0: none)")
    p.add_argument("--tile", type=int, default=4096, help="directions per tile")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(fn=run)


def run(args) -> int:
    # Deferred: they import torch, which building the parser (actstore --help) must not.
    import numpy as np

    from ..analysis.dictionary import mcs, neighbours

    res = mcs(args.sae_a, args.sae_b, tile=args.tile)
    extra = {}
    if args.neighbours > 0:
        cos, idx = neighbours(args.sae_a, args.neighbours, tile=args.tile)
        extra = {"dictionary/neighbours_cos": cos, "dictionary/neighbours_index": idx}
    res.save(args.out, extra)
    summary = {
        "out": str(args.out),
        "mean_mcs_ab": float(res.ab.mean()),
        "mean_mcs_ba": float(res.ba.mean()),
        "frac_ab_above_0.9": float((res.ab > 0.9).mean()),
        "frac_ba_above_0.9": float((res.ba > 0.9).mean()),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"MCS A->B mean {summary['mean_mcs_ab']:.3f} ({100 * summary['frac_ab_above_0.9']:.1f}% > 0.9), "
            f"B->A mean {summary['mean_mcs_ba']:.3f} ({100 * summary['frac_ba_above_0.9']:.1f}% > 0.9); "
            f"median A->B {np.median(res.ab):.3f}; into {args.out}"
        )
    return 0
