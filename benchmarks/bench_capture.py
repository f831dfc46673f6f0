"""Capture overhead: ``actstore.capture`` wall time against the model's forward alone, on
the same model and the same tokens, in one process, interleaved round-robin.

Model: a GPT-2-shaped HF model built from config with random weights (CPU default: 12
layers, d=768, 85M non-embedding parameters: big enough that its forward dominates, as
the issue asks). Tokens: fixed random ids, ``--seqs`` windows of ``--context``.

Variants (each one a full pass over the same tokens):

- ``forward_full``: ``model(input_ids)``, every layer, no hooks: the baseline;
- ``forward_to_L``: the forward stopped after block L with a plain raising hook, the
  fair baseline for a capture whose deepest hook is block L;
- ``capture_last``: actstore.capture at the last block's output (bf16, zstd, durable);
- ``capture_mid``: actstore.capture at block L (the forward stops there);
- ``capture_mid_nostop``: the same with ``stop_early=False``: what stopping saves;
- ``capture_3hooks``: three blocks at once, one forward.

Reported: seconds (median of 5 repeats), tokens/s, and the ratios capture / forward for
the same depth, both as a ratio of medians and as the median of per-round ratios. With a
GPU (``--device cuda``) the same runs use a larger model, and the capture kernel's GB/s
is timed against a device-to-device copy of the same bytes.

    python benchmarks/bench_capture.py            # ~10 min on 2 CPU cores
    python benchmarks/bench_capture.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import fmt_table, interleaved, metadata, summary, write_result  # noqa: E402

import actstore  # noqa: E402


class _Stop(Exception):
    pass


def build_model(n_layer, d, device, dtype):
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layer, n_embd=d, n_head=max(1, d // 64), vocab_size=8192, n_positions=1024)
    return GPT2Model(cfg).to(device=device, dtype=dtype).eval(), cfg


def kernel_bandwidth(d: int, rows: int, device) -> dict:
    """GPU only: capture kernel (bf16 out, stats) against a device copy of the same bytes."""
    from triton.testing import do_bench

    from actstore.ops import capture_pack

    x = torch.randn(rows, d, device=device, dtype=torch.bfloat16)
    keep = torch.rand(rows, device=device) > 0.05
    dst = torch.cumsum(keep.to(torch.int64), 0) - 1
    n = int(keep.sum())
    shift = x[0].float()
    out = {}
    for dt in ("bf16", "fp8", "int8"):
        ms = do_bench(lambda: capture_pack(x, keep, shift, dt, dst=dst, n_keep=n))
        moved = x.numel() * 2 + n * d * (2 if dt == "bf16" else 1)
        out[f"kernel_{dt}_GBps"] = moved / ms / 1e6
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x))
    out["device_copy_GBps"] = 2 * x.numel() * 2 / ms / 1e6
    out["rows"], out["d"] = rows, d
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seqs", type=int, default=None)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    meta = metadata()  # before measuring: write_result compares it with the state at the end
    dev = torch.device(a.device)
    gpu = dev.type == "cuda"
    n_layer, d = (24, 2048) if gpu else (12, 768)  # GPU: ~1.2B non-embedding parameters
    mdtype = torch.bfloat16 if gpu else torch.float32
    seqs = a.seqs or (4096 if gpu else 64)
    bs = a.batch_size if not gpu else 64
    repeats = 1 if a.quick else a.repeats
    if a.quick:
        n_layer, d, seqs = 4, 256, 16
    model, cfg = build_model(n_layer, d, dev, mdtype)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(seqs, a.context)).astype(np.int64)
    tokens = ids.size
    mid = n_layer // 2 - 1
    scratch = a.dir or tempfile.mkdtemp(prefix="actstore-bench-capture-")

    def sync():
        if gpu:
            torch.cuda.synchronize()

    def forward(stop_at=None):
        def run():
            h = None
            if stop_at is not None:

                def raise_(*_):
                    raise _Stop

                h = model.h[stop_at].register_forward_hook(raise_)
            try:
                with torch.inference_mode():
                    for i in range(0, seqs, bs):
                        x = torch.from_numpy(ids[i : i + bs]).to(dev)
                        try:
                            model(input_ids=x)
                        except _Stop:
                            pass
                sync()
            finally:
                if h is not None:
                    h.remove()

        return run

    summaries = {}

    def capture(name, hooks, **kw):
        path = os.path.join(scratch, name)

        def run():
            summaries[name] = actstore.capture(
                model,
                hooks,
                ids,
                path,
                context=a.context,
                batch_size=bs,
                bos="none",
                eos="none",
                progress=False,
                device=dev,
                **kw,
            )
            sync()

        return run, lambda: shutil.rmtree(path, ignore_errors=True)

    variants = {"forward_full": forward(), f"forward_to_{mid}": forward(mid)}
    setup = {}
    for name, hooks, kw in [
        ("capture_last", f"h.{n_layer - 1}", {}),
        ("capture_mid", f"h.{mid}", {}),
        ("capture_mid_nostop", f"h.{mid}", {"stop_early": False}),
        ("capture_3hooks", f"h.{mid // 2},h.{mid},h.{n_layer - 1}", {}),
    ]:
        run, clean = capture(name, hooks, **kw)
        variants[name] = run
        setup[name] = clean
    t0 = time.perf_counter()
    times = interleaved(variants, repeats, setup=setup, warmup=1)
    shutil.rmtree(scratch, ignore_errors=True) if a.dir is None else None
    res = {k: {**summary(v), "tokens_per_s": tokens / summary(v)["median_s"]} for k, v in times.items()}
    med = {k: v["median_s"] for k, v in res.items()}
    pairs = {
        "capture_last_over_forward_full": ("capture_last", "forward_full"),
        "capture_3hooks_over_forward_full": ("capture_3hooks", "forward_full"),
        f"capture_mid_over_forward_to_{mid}": ("capture_mid", f"forward_to_{mid}"),
        "capture_mid_over_forward_full": ("capture_mid", "forward_full"),
        "capture_mid_over_capture_mid_nostop": ("capture_mid", "capture_mid_nostop"),
    }
    ratios = {k: med[a] / med[b] for k, (a, b) in pairs.items()}
    # The median of per-round ratios: the two variants of a pair ran seconds apart in every
    # round, so this moves less when another job takes a core for part of the run.
    paired = {k: float(np.median([x / y for x, y in zip(times[a], times[b])])) for k, (a, b) in pairs.items()}
    rows = [[k, f"{v['median_s']:.2f}", f"{v['tokens_per_s']:,.0f}"] for k, v in res.items()]
    print(fmt_table(rows, ["variant", "median s", "tokens/s"]))
    print(f"{'ratio':<40} {'of medians':>10} {'paired median':>14}")
    for k, v in ratios.items():
        print(f"{k:<40} {v:>10.3f} {paired[k]:>14.3f}")
    doc = {
        "meta": meta,
        "benchmark": "capture_overhead",
        "device": str(dev),
        "model": {
            "arch": "GPT2Model (random weights, from config)",
            "n_layer": n_layer,
            "d_model": d,
            "dtype": str(mdtype),
            "non_embedding_params": sum(
                p.numel() for n, p in model.named_parameters() if "wte" not in n and "wpe" not in n
            ),
        },
        "tokens": tokens,
        "context": a.context,
        "batch_size": bs,
        "hook_mid": f"h.{mid}",
        "store": {"dtype": "bf16", "codec": "zstd", "durable": True},
        "results_seconds_and_tokens_per_s": res,
        "ratios": ratios,
        "ratios_paired_median": paired,
        "seconds_per_round": times,
        "capture_summaries": {
            k: {
                kk: v[kk]
                for kk in ("rows_this_run", "bytes_written", "store_wait_seconds", "forward_seconds", "capture_seconds")
            }
            for k, v in summaries.items()
        },
        "wall_s": time.perf_counter() - t0,
    }
    if gpu:
        doc["kernel"] = kernel_bandwidth(d, bs * a.context, dev)
        print(doc["kernel"])
    name = "capture_overhead" + ("_gpu" if gpu else "") + ("_quick" if a.quick else "")
    print("wrote", write_result(name, doc))


if __name__ == "__main__":
    main()
