"""Store -> loader -> fused TopK step, end to end, against the step alone.

Does I/O cost training anything? Side by side in one process:

- ``step``: ``TopKSAE.loss`` + backward + AdamW + decoder renormalization on one batch
  already on the device, repeated (the kernel-only rate; measured before and after the
  end-to-end run, the mean taken);
- ``e2e``: ``actstore.sae.train`` on a real store (loader with shuffling and
  ``mean_norm``, the same step, dead-latent tracking, metrics; checkpoints off), tokens/s
  from its log after the first ``--warmup`` steps.

``e2e / step`` is the fraction of the kernel-only rate the whole pipeline keeps (1.0 = no
loss to I/O). The store holds ``--rows`` synthetic rows of width d in bf16 with the
default codec (Gaussian data: poorly compressible, the I/O-heavy case). Shapes: on CUDA
n=8192, d=4096, m=131072, k=32 (the issue's H200 shape); on the CPU n=2048, d=384,
m=3072, k=32. Result: results/sae_pipeline_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import torch  # noqa: E402

import actstore  # noqa: E402
from actstore.sae import SAEConfig, build, train  # noqa: E402


def _make_store(path: Path, rows: int, d: int) -> None:
    g = torch.Generator().manual_seed(0)
    with actstore.create(path, {"h": d}, dtype="bf16") as w:
        for lo in range(0, rows, 16384):
            n = min(16384, rows - lo)
            w.append({"h": torch.randn(n, d, generator=g)})
            w.commit()


def _step_rate(dev, n, d, m, k, steps) -> float:
    sae = build(SAEConfig("topk", d, m, k=k)).to(dev)
    opt = torch.optim.AdamW(sae.parameters(), lr=1e-4)
    x = torch.randn(n, d, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def one():
        out = sae.loss(x)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.normalize_decoder()
    one()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        one()
    sync()
    return n * steps / (time.perf_counter() - t)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None, help="steps per measurement (default 40 CUDA, 12 CPU)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rows", type=int, default=None, help="rows in the store (default 20 batches)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    n, d, m, k = (8192, 4096, 131072, 32) if dev.type == "cuda" else (2048, 384, 3072, 32)
    steps = args.steps or (40 if dev.type == "cuda" else 12)
    rows = args.rows or n * 20
    tmp = Path(tempfile.mkdtemp(prefix="sae_pipeline_"))
    try:
        t = time.perf_counter()
        _make_store(tmp / "acts", rows, d)
        made = time.perf_counter() - t
        before = _step_rate(dev, n, d, m, k, steps)
        train(store=str(tmp / "acts"), hook="h", arch="topk", latents=m, k=k, tokens=n * (steps + args.warmup),
              out=str(tmp / "run"), batch_size=n, log_every=1, checkpoint_every=10 ** 9, device=str(dev),
              progress=False)
        log = [json.loads(ln) for ln in (tmp / "run" / "log.jsonl").read_text().splitlines()]
        e2e = statistics.median(r["tokens_per_s"] for r in log[args.warmup:])
        after = _step_rate(dev, n, d, m, k, steps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    step = (before + after) / 2
    res = {"n": n, "d": d, "m": m, "k": k, "rows_in_store": rows, "store_build_s": made,
           "step_tokens_per_s_before": before, "step_tokens_per_s_after": after, "step_tokens_per_s": step,
           "e2e_tokens_per_s_median": e2e, "e2e_over_step": e2e / step}
    print(f"TopK step n={n} d={d} m={m} k={k} on {dev}: kernel-only {step:,.0f} tokens/s "
          f"(before {before:,.0f}, after {after:,.0f}); end to end {e2e:,.0f} tokens/s = {e2e / step:.2f}x of it")
    doc = {"meta": C.metadata(), "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "results": res,
           "units": {"tokens_per_s": "rows (tokens) per second"}}
    print(f"wrote {C.write_result(f'sae_pipeline_{dev.type}', doc)}")
    return doc


if __name__ == "__main__":
    main()
