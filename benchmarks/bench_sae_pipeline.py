"""Store -> loader -> fused TopK step, end to end, against the step alone.

Does I/O cost training anything? Side by side in one process, interleaved round-robin
(``_common.interleaved``: the order rotates each round, after one untimed warm-up round),
``--repeats`` rounds:

- ``step``: ``TopKSAE.loss`` + backward + AdamW + decoder renormalization on one batch
  already on the device, ``--steps`` times (the kernel-only rate);
- ``e2e``: ``actstore.sae.train`` on a real store (loader with shuffling and
  ``mean_norm``, the same step, dead-latent tracking, metrics; checkpoints off), tokens/s
  from its log after the first ``--warmup`` steps (their median).

Each rate is the median of the rounds, with the best round and the spread beside it.
``e2e / step`` is the fraction of the kernel-only rate the whole pipeline keeps (1.0 = no
loss to I/O); ``e2e_over_step_paired_median`` is the median of the per-round ratios. The
store holds ``--rows`` synthetic rows of width d in bf16 with the default codec (Gaussian
data: poorly compressible, the I/O-heavy case). Shapes: on CUDA n=8192, d=4096, m=131072,
k=32 (the issue's H200 shape); on the CPU n=2048, d=384, m=3072, k=32. Result: results/sae_pipeline_<device>.json.
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
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument(
        "--shape",
        type=int,
        nargs=4,
        metavar=("N", "D", "M", "K"),
        default=None,
        help="batch rows, width, latents, k (default: the device's shape above)",
    )
    ap.add_argument("--no-write", action="store_true", help="print only; leave results/ alone")
    args = ap.parse_args(argv)
    meta = C.metadata()  # before measuring: write_result compares it with the state at the end
    dev = torch.device(args.device)
    n, d, m, k = args.shape or ((8192, 4096, 131072, 32) if dev.type == "cuda" else (2048, 384, 3072, 32))
    steps = args.steps or (40 if dev.type == "cuda" else 12)
    rows = args.rows or n * 20
    tmp = Path(tempfile.mkdtemp(prefix="sae_pipeline_"))
    try:
        t = time.perf_counter()
        _make_store(tmp / "acts", rows, d)
        made = time.perf_counter() - t
        rates = {"step": [], "e2e": []}
        rounds = iter(range(10**9))

        def run_step():
            rates["step"].append(_step_rate(dev, n, d, m, k, steps))

        def run_e2e():
            out = tmp / f"run{next(rounds)}"
            train(
                store=str(tmp / "acts"),
                hook="h",
                arch="topk",
                latents=m,
                k=k,
                tokens=n * (steps + args.warmup),
                out=str(out),
                batch_size=n,
                log_every=1,
                checkpoint_every=10**9,
                device=str(dev),
                progress=False,
            )
            log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
            rates["e2e"].append(statistics.median(r["tokens_per_s"] for r in log[args.warmup :]))
            shutil.rmtree(out, ignore_errors=True)

        C.interleaved({"step": run_step, "e2e": run_e2e}, args.repeats, warmup=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # rates[*][0] is the warm-up round; rates are tokens/s, so the best round is the highest.
    step_r, e2e_r = rates["step"][1:], rates["e2e"][1:]
    step, e2e = statistics.median(step_r), statistics.median(e2e_r)
    res = {
        "n": n,
        "d": d,
        "m": m,
        "k": k,
        "rows_in_store": rows,
        "store_build_s": made,
        "repeats": args.repeats,
        "step_tokens_per_s": step,
        "step_tokens_per_s_best": max(step_r),
        "step_tokens_per_s_spread": (max(step_r) - min(step_r)) / step,
        "e2e_tokens_per_s_median": e2e,
        "e2e_tokens_per_s_best": max(e2e_r),
        "e2e_tokens_per_s_spread": (max(e2e_r) - min(e2e_r)) / e2e,
        "e2e_over_step": e2e / step,
        "e2e_over_step_paired_median": statistics.median(e / s_ for e, s_ in zip(e2e_r, step_r)),
        "step_tokens_per_s_rounds": step_r,
        "e2e_tokens_per_s_rounds": e2e_r,
    }
    print(
        f"TopK step n={n} d={d} m={m} k={k} on {dev}, medians of {args.repeats} interleaved rounds: kernel-only "
        f"{step:,.0f} tokens/s (best {max(step_r):,.0f}, spread {res['step_tokens_per_s_spread']:.2f}); end to end "
        f"{e2e:,.0f} tokens/s (best {max(e2e_r):,.0f}, spread {res['e2e_tokens_per_s_spread']:.2f}) "
        f"= {e2e / step:.2f}x of it (paired {res['e2e_over_step_paired_median']:.2f}x)"
    )
    doc = {
        "meta": meta,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "results": res,
        "units": {
            "tokens_per_s": "rows (tokens) per second",
            "spread": "(max - min) / median of the rounds",
            "store_build_s": "s",
            "e2e_over_step": "ratio of the medians",
        },
    }
    if not args.no_write:
        print(f"wrote {C.write_result(f'sae_pipeline_{dev.type}', doc)}")
    return doc


if __name__ == "__main__":
    main()
