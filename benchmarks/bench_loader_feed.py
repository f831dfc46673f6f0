"""Does the loader keep a TopK SAE training step fed? Loader rate against the step's rate.

On the device given (``--device cuda`` on a GPU machine; ``cpu`` here), side by side in
one process, each the median of ``--repeats`` runs:

- ``loader``: one epoch of ``actstore.ActivationLoader(..., device=DEV, dtype=float32,
  normalize="mean_norm")`` with nothing else (rows/s delivered on the device);
- ``step``: a TopK SAE training step (PyTorch eager: encoder GEMM + ``torch.topk`` +
  dense decoder + backward + Adam) on one batch already on the device, repeated for as
  many rows as an epoch (rows/s it can consume);
- ``fed``: the same steps, each on the next loader batch (rows/s of real training).

``fed / step`` is the fraction of the step's rate the loader sustains (1.0 = fully fed);
``loader / step`` says how much headroom the loader has. The SAE is the eager reference,
so on a GPU it is slower than actstore's fused kernels will be: a loader that keeps up
with it must also be checked against the fused step once it lands.

Data: all-MiniLM-L6-v2 residual streams (d = 384) at the three captured layers, stacked as
rows (~390k rows), stored as bf16 with the default codec. Results:
benchmarks/results/loader_feed_<device>.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import actstore  # noqa: E402

HOOK = "resid"


class TopKSAE(torch.nn.Module):
    """The eager reference TopK SAE: ``x [n, d] -> x_hat [n, d]`` with ``k`` latents of ``m``."""

    def __init__(self, d: int, m: int, k: int):
        super().__init__()
        self.k = k
        self.W_enc = torch.nn.Parameter(torch.randn(d, m) / d ** 0.5)
        self.b_enc = torch.nn.Parameter(torch.zeros(m))
        self.W_dec = torch.nn.Parameter(self.W_enc.detach().t().clone())
        self.b_dec = torch.nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        v, i = pre.topk(self.k, dim=1)
        z = torch.zeros_like(pre).scatter_(1, i, torch.relu(v))
        return z @ self.W_dec + self.b_dec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--expansion", type=int, default=32, help="latents m = expansion * d (default 32)")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="loader decode threads (default: the loader's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-rows", type=int, default=None, help="rows of the epoch (default: all; CPU runs cap it)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    acts = C.load_activations()
    x = np.concatenate([np.asarray(a) for a in acts.values()])
    if args.max_rows:
        x = x[:args.max_rows]
    n, d = x.shape
    scratch = Path(tempfile.mkdtemp(prefix="actstore-bench-feed-"))
    with actstore.create(scratch / "store", {HOOK: d}, segment="rank00000", durable=False) as w:
        for lo in range(0, n, 65536):
            w.append({HOOK: torch.from_numpy(x[lo:lo + 65536])})
    store = actstore.open(scratch / "store")

    torch.manual_seed(0)
    sae = TopKSAE(d, args.expansion * d, args.k).to(dev)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)

    def step(batch: torch.Tensor) -> None:
        loss = (sae(batch) - batch).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def loader(epoch: int):
        ld = actstore.ActivationLoader(store, HOOK, args.batch_size, seed=epoch, device=dev, dtype=torch.float32,
                                       normalize="mean_norm", threads=args.threads)
        return ld

    fixed = next(iter(loader(0)))
    batches = len(loader(0))

    def run_loader(e):
        rows = 0
        for b in loader(e):
            rows += b.shape[0]
        sync()
        return rows

    def run_step(_):
        for _ in range(batches):
            step(fixed)
        sync()
        return batches * fixed.shape[0]

    def run_fed(e):
        rows = 0
        for b in loader(e):
            step(b)
            rows += b.shape[0]
        sync()
        return rows

    variants = {"loader": run_loader, "step": run_step, "fed": run_fed}
    times = {k: [] for k in variants}
    rows = {}
    for r in range(args.repeats + 1):  # round 0 is an untimed warm-up
        for name, fn in variants.items():
            sync()
            t = time.perf_counter()
            rows[name] = fn(r)
            dt = time.perf_counter() - t
            if r:
                times[name].append(dt)
    figures = {k: {"rows_per_s": rows[k] / statistics.median(v), "median_s": statistics.median(v),
                   "min_s": min(v), "max_s": max(v), "rows": rows[k]} for k, v in times.items()}
    ratios = {"fed_over_step": figures["fed"]["rows_per_s"] / figures["step"]["rows_per_s"],
              "loader_over_step": figures["loader"]["rows_per_s"] / figures["step"]["rows_per_s"]}
    doc = {"meta": C.metadata(),
           "config": {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                      "rows": n, "d": d, "m": args.expansion * d, "k": args.k, "batch_size": args.batch_size,
                      "loader_threads": args.threads, "repeats": args.repeats, "sae": "eager TopK reference + Adam"},
           "units": {"rows_per_s": "rows/s", "median_s": "s", "min_s": "s", "max_s": "s"},
           "figures": figures, "ratios": ratios}
    path = C.write_result(f"loader_feed_{dev.type}", doc)
    print(C.fmt_table([[k, f"{f['rows_per_s']:,.0f}", f"{f['median_s']:.3f}"] for k, f in figures.items()],
                      ["variant", "rows/s", "median s"]))
    print(f"fed/step x{ratios['fed_over_step']:.2f}, loader/step x{ratios['loader_over_step']:.2f}")
    print(f"wrote {path}")
    store.close()
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
