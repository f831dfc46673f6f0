"""Where a sparse decode stops paying: ``csr_decode`` against one dense GEMM
``f @ W_dec``, forward + backward, over the fraction of active latents.

The dense-encoded SAEs (relu, gated, jumprelu) pick between the two by density
(``actstore.ops.csr_decode.DENSE_DECODE_ABOVE``, where the decode's measuring dispatch does
not time). For each density the two are timed
interleaved round-robin (``_common.interleaved``, the order rotating each round) and the
medians compared (best round and spread beside them), since this machine is noisy. On
CUDA ``csr_decode`` runs the Triton kernels; elsewhere its reference (embedding_bag and a
dense-scatter GEMM for the backward). Shape: n=2048 rows, d=384, m=3072 (MiniLM-sized;
``--n/--d/--m`` to change). Result: results/sae_decode_crossover_<device>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

from actstore.ops import csr_decode  # noqa: E402
from actstore.sae.latents import Latents  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--m", type=int, default=3072)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    meta = C.metadata()  # before measuring: write_result compares it with the state at the end
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(args.m, args.d, generator=g).to(dev).requires_grad_()
    kernel = "triton" if dev.type == "cuda" else "reference"  # the sparse path itself, not the dispatch
    rows = []
    for density in (0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2):
        mask = torch.rand(args.n, args.m, generator=g) < density
        f = (torch.rand(args.n, args.m, generator=g) * mask).to(dev).requires_grad_()
        lat = Latents.from_dense(f)

        def sparse():
            csr_decode(lat.row_ptr, lat.cols, lat.vals, W, backend=kernel).sum().backward(retain_graph=True)

        def dense():
            (f @ W).sum().backward()

        def synced(fn):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - t

        times = C.interleaved({"sparse": sparse, "dense": dense}, args.repeats, warmup=1, measure=synced)
        s, d_ = C.summary(times["sparse"]), C.summary(times["dense"])
        rows.append(
            {
                "density": density,
                "nnz": int(lat.cols.numel()),
                "sparse_s": s["median_s"],
                "dense_s": d_["median_s"],
                "sparse_speedup": d_["median_s"] / s["median_s"],
                "sparse_best_s": s["min_s"],
                "dense_best_s": d_["min_s"],
                "sparse_spread": s["spread"],
                "dense_spread": d_["spread"],
            }
        )
    print(f"decode fwd+bwd, n={args.n} d={args.d} m={args.m} on {dev}")
    print(
        C.fmt_table(
            [
                [
                    f"{r['density']:.3f}",
                    f"{r['sparse_s'] * 1e3:.2f}",
                    f"{r['dense_s'] * 1e3:.2f}",
                    f"{r['sparse_speedup']:.2f}",
                ]
                for r in rows
            ],
            ["density", "sparse ms", "dense ms", "sparse speedup"],
        )
    )
    faster = [r["density"] for r in rows if r["sparse_speedup"] > 1]
    cross = max(faster) if faster else None
    print(f"sparse decode is faster up to density {cross}")
    doc = {
        "meta": meta,
        "device": str(dev),
        "shape": {"n": args.n, "d": args.d, "m": args.m},
        "rows": rows,
        "sparse_faster_up_to_density": cross,
        "units": {
            "sparse_s": "s (median)",
            "dense_s": "s (median)",
            "sparse_best_s": "s",
            "dense_best_s": "s",
            "sparse_spread": "(max - min) / median",
            "dense_spread": "(max - min) / median",
        },
    }
    if not args.no_write:
        print(f"wrote {C.write_result(f'sae_decode_crossover_{dev.type}', doc)}")
    return doc


if __name__ == "__main__":
    main()
