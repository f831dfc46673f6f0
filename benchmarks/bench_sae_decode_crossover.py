"""Where a sparse decode stops paying: ``csr_decode`` against one dense GEMM
``f @ W_dec``, forward + backward, over the fraction of active latents.

The dense-encoded SAEs (relu, gated, jumprelu) pick between the two by density
(``actstore.sae.base.DENSE_DECODE_ABOVE``). For each density the two are timed
interleaved (A, B, A, B...) and the medians compared, since this machine is noisy. On
CUDA ``csr_decode`` runs the Triton kernels; elsewhere its reference (embedding_bag and a
dense-scatter GEMM for the backward). Shape: n=2048 rows, d=384, m=3072 (MiniLM-sized;
``--n/--d/--m`` to change). Result: results/sae_decode_crossover_<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import torch  # noqa: E402

from actstore.sae.latents import Latents  # noqa: E402
from actstore.ops import csr_decode  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--m", type=int, default=3072)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(args.m, args.d, generator=g).to(dev).requires_grad_()
    rows = []
    for density in (0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2):
        mask = torch.rand(args.n, args.m, generator=g) < density
        f = (torch.rand(args.n, args.m, generator=g) * mask).to(dev).requires_grad_()
        lat = Latents.from_dense(f)

        def sparse():
            csr_decode(lat.row_ptr, lat.cols, lat.vals, W).sum().backward(retain_graph=True)

        def dense():
            (f @ W).sum().backward()

        times = {"sparse": [], "dense": []}
        for fn in (sparse, dense):
            fn()
        for _ in range(args.repeats):
            for name, fn in (("sparse", sparse), ("dense", dense)):
                sync()
                t = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t)
        s, d_ = statistics.median(times["sparse"]), statistics.median(times["dense"])
        rows.append({"density": density, "nnz": int(lat.cols.numel()), "sparse_s": s, "dense_s": d_,
                     "sparse_speedup": d_ / s})
    print(f"decode fwd+bwd, n={args.n} d={args.d} m={args.m} on {dev}")
    print(C.fmt_table([[f"{r['density']:.3f}", f"{r['sparse_s'] * 1e3:.2f}", f"{r['dense_s'] * 1e3:.2f}",
                        f"{r['sparse_speedup']:.2f}"] for r in rows],
                      ["density", "sparse ms", "dense ms", "sparse speedup"]))
    faster = [r["density"] for r in rows if r["sparse_speedup"] > 1]
    cross = max(faster) if faster else None
    print(f"sparse decode is faster up to density {cross}")
    doc = {"meta": C.metadata(), "device": str(dev), "shape": {"n": args.n, "d": args.d, "m": args.m},
           "rows": rows, "sparse_faster_up_to_density": cross, "units": {"sparse_s": "s", "dense_s": "s"}}
    if not args.no_write:
        print(f"wrote {C.write_result(f'sae_decode_crossover_{dev.type}', doc)}")
    return doc


if __name__ == "__main__":
    main()
