"""Does the loader keep a TopK SAE training step fed? Loader rate against the step's rate.

On the device given (``--device cuda`` on a GPU machine; ``cpu`` here), side by side in
one process, interleaved round-robin (``_common.interleaved``: the order rotates each round,
after one untimed warm-up round), each the median of ``--repeats`` rounds with the best
round and the spread beside it:

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
        self.W_enc = torch.nn.Parameter(torch.randn(d, m) / d**0.5)
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
    ap.add_argument("--no-write", action="store_true", help="print only; leave results/ alone")
    args = ap.parse_args(argv)
    meta = C.metadata()  # before measuring: write_result compares it with the state at the end
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    acts = C.load_activations()
    x = np.concatenate([np.asarray(a) for a in acts.values()])
    if args.max_rows:
        x = x[: args.max_rows]
    n, d = x.shape
    scratch = Path(tempfile.mkdtemp(prefix="actstore-bench-feed-"))
    with actstore.create(scratch / "store", {HOOK: d}, segment="rank00000", durable=False) as w:
        for lo in range(0, n, 65536):
            w.append({HOOK: torch.from_numpy(x[lo : lo + 65536])})
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
        ld = actstore.ActivationLoader(
            store,
            HOOK,
            args.batch_size,
            seed=epoch,
            device=dev,
            dtype=torch.float32,
            normalize="mean_norm",
            threads=args.threads,
        )
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

    epochs = {"loader": 0, "step": 0, "fed": 0}  # each variant's next epoch: a fresh shuffle per round
    rows = {}

    def counted(name, fn):
        def call():
            rows[name] = fn(epochs[name])
            epochs[name] += 1

        return call

    def measure(call):
        sync()
        return C.wall_time(call)  # each variant syncs before it returns

    variants = {"loader": run_loader, "step": run_step, "fed": run_fed}
    times = C.interleaved({k: counted(k, fn) for k, fn in variants.items()}, args.repeats, warmup=1, measure=measure)
    figures = {
        k: {"rows_per_s": rows[k] / statistics.median(v), **C.summary(v), "rows": rows[k]} for k, v in times.items()
    }
    ratios = {
        "fed_over_step": figures["fed"]["rows_per_s"] / figures["step"]["rows_per_s"],
        "loader_over_step": figures["loader"]["rows_per_s"] / figures["step"]["rows_per_s"],
    }
    # The median of the per-round ratios: the variants of a round ran seconds apart.
    ratios["fed_over_step_paired_median"] = statistics.median(
        rows["fed"] / f_ / (rows["step"] / s_) for s_, f_ in zip(times["step"], times["fed"])
    )
    doc = {
        "meta": meta,
        "config": {
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "rows": n,
            "d": d,
            "m": args.expansion * d,
            "k": args.k,
            "batch_size": args.batch_size,
            "loader_threads": args.threads,
            "repeats": args.repeats,
            "sae": "eager TopK reference + Adam",
        },
        "units": {
            "rows_per_s": "rows/s (at the median)",
            "median_s": "s",
            "min_s": "s (best round)",
            "max_s": "s",
            "spread": "(max - min) / median of the rounds",
            "repeats": "rounds",
            "rows": "rows per round",
        },
        "figures": figures,
        "ratios": ratios,
    }
    print(
        C.fmt_table(
            [
                [k, f"{f['rows_per_s']:,.0f}", f"{f['median_s']:.3f}", f"{f['min_s']:.3f}", f"{f['spread']:.2f}"]
                for k, f in figures.items()
            ],
            ["variant", "rows/s", "median s", "best s", "spread"],
        )
    )
    print(
        f"fed/step x{ratios['fed_over_step']:.2f} (paired x{ratios['fed_over_step_paired_median']:.2f}), "
        f"loader/step x{ratios['loader_over_step']:.2f}"
    )
    if not args.no_write:
        print(f"wrote {C.write_result(f'loader_feed_{dev.type}', doc)}")
    store.close()
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
