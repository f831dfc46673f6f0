"""One TopK SAE training step: actstore's ops against eager PyTorch, torch.compile, sparsify.

Step = encoder + top-k, sparse decode, MSE loss, backward through everything. Variants,
side by side in one process:

- ``eager``: ``actstore.reference.topk_sae`` (dense pre-activations + ``torch.topk``,
  einsum decode), autograd backward;
- ``compiled``: ``torch.compile`` of the same step (skipped where compile fails);
- ``actstore``: ``actstore.ops.topk_encode`` (fused Triton encoder+top-k on CUDA; the
  reference elsewhere) and ``actstore.ops.sparse_decode``, sparse backward;
- ``sparsify``: EleutherAI sparsify's ``fused_encoder`` + its decoder (``decoder_impl``),
  when the package is installed and a GPU is present;
- ``gemm_ceiling``: the encoder product alone, ``x @ W_enc.T`` in bf16 (cuBLAS on a GPU),
  reported as TFLOP/s.

Timings: ``triton.testing.do_bench`` on CUDA (median ms), ``time.perf_counter`` medians on
the CPU. Peak memory: ``torch.cuda.max_memory_allocated`` per variant on CUDA. Shapes
(``--shape``): ``big`` n=8192 d=4096 m=131072 k=32, ``small`` n=4096 d=768 m=24576 k=32,
``tiny`` n=512 d=128 m=2048 k=32 (the CPU smoke run). Results:
benchmarks/results/sae_kernels_<device>.json.
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

from actstore.ops import sparse_decode, topk_encode  # noqa: E402
from actstore.reference.topk_sae import sparse_decode_reference, topk_encode_reference  # noqa: E402

SHAPES = {"big": (8192, 4096, 131072, 32), "small": (4096, 768, 24576, 32), "tiny": (512, 128, 2048, 32)}


def _timer(dev: torch.device, repeats: int):
    if dev.type == "cuda":
        import triton

        return lambda fn: triton.testing.do_bench(fn, rep=max(100, 20 * repeats)) / 1e3

    def cpu(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)
    return cpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", action="append", choices=list(SHAPES), help="repeatable; default small+big on CUDA, tiny on CPU")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if dev.type == "cpu" and dt == torch.bfloat16:
        dt = torch.float32  # CPU matmuls in bf16 are not what anyone trains with
    shapes = args.shape or (["small", "big"] if dev.type == "cuda" else ["tiny"])
    timer = _timer(dev, args.repeats)
    results = {}
    for name in shapes:
        n, d, m, k = SHAPES[name]
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(n, d, generator=g).to(dev, dt)
        W_enc = (torch.randn(m, d, generator=g) / d ** 0.5).to(dev, dt).requires_grad_()
        b_enc = torch.zeros(m, device=dev).requires_grad_()
        W_dec = W_enc.detach().clone().requires_grad_()
        b_dec = torch.zeros(d, device=dev, dtype=dt).requires_grad_()
        params = (W_enc, b_enc, W_dec, b_dec)

        def zero():
            for p in params:
                p.grad = None

        def make_step(encode, decode):
            """One training step: encode, decode, MSE; backward unless ``fwd_only``."""
            def step(fwd_only=False):
                v, i = encode(x, W_enc, b_enc, k, b_dec)
                loss = (decode(v, i, W_dec, b_dec).float() - x.float()).pow(2).sum(1).mean()
                if not fwd_only:
                    zero()
                    loss.backward()
                return loss
            return step

        step_eager = make_step(topk_encode_reference, sparse_decode_reference)
        step_actstore = make_step(topk_encode, sparse_decode)

        variants = {"eager": step_eager, "actstore": step_actstore}
        notes = []
        try:
            compiled = torch.compile(step_eager)
            compiled()
            variants["compiled"] = compiled
        except Exception as e:  # noqa: BLE001 - recorded, the rest still runs
            notes.append(f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        if dev.type == "cuda":
            try:
                from sparsify.fused_encoder import fused_encoder
                from sparsify.utils import decoder_impl

                def sparsify_encode(x, W_enc, b_enc, k, pre_bias):
                    v, i, _ = fused_encoder(x - pre_bias, W_enc, b_enc, k, "topk")
                    return v, i

                def sparsify_decode(v, i, W_dec, b_dec):
                    return decoder_impl(i, v.to(W_dec.dtype), W_dec.mT) + b_dec

                step_sparsify = make_step(sparsify_encode, sparsify_decode)
                step_sparsify()
                variants["sparsify"] = step_sparsify
            except Exception as e:  # noqa: BLE001
                notes.append(f"sparsify skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        else:
            notes.append("sparsify skipped: its Triton kernels need a GPU")

        figs = {}
        for v, fn in variants.items():
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                fwd = timer(lambda: fn(fwd_only=True)) if v != "compiled" else None
            full = timer(fn)
            figs[v] = {"forward_s": fwd, "step_s": full,
                       "peak_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else None}
        xg, wg = x.detach(), W_enc.detach()
        gemm = timer(lambda: xg @ wg.t())
        figs["gemm_ceiling"] = {"encoder_gemm_s": gemm, "tflops": 2 * n * d * m / gemm / 1e12}
        base = figs["eager"]["step_s"]
        ratios = {f"{v}_step_speedup_vs_eager": base / f["step_s"] for v, f in figs.items() if "step_s" in f}
        if "sparsify" in figs:
            ratios["actstore_step_speedup_vs_sparsify"] = figs["sparsify"]["step_s"] / figs["actstore"]["step_s"]
        results[name] = {"n": n, "d": d, "m": m, "k": k, "dtype": str(dt), "figures": figs, "ratios": ratios,
                         "notes": notes}
        print(f"{name}: n={n} d={d} m={m} k={k} {dt}")
        print(C.fmt_table([[v, f"{f.get('forward_s') or float('nan'):.4f}", f"{f.get('step_s', float('nan')):.4f}",
                            f"{(f.get('peak_bytes') or 0) / 2**20:.0f}"] for v, f in figs.items() if "step_s" in f],
                          ["variant", "forward s", "step s", "peak MiB"]))
        print(f"encoder GEMM alone: {gemm:.4f} s = {figs['gemm_ceiling']['tflops']:.2f} TFLOP/s; "
              + ", ".join(f"{k_} x{r:.2f}" for k_, r in ratios.items()))
        for note in notes:
            print("note: " + note)
    doc = {"meta": C.metadata(), "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "units": {"forward_s": "s", "step_s": "s", "encoder_gemm_s": "s", "tflops": "TFLOP/s", "peak_bytes": "B"},
           "results": results}
    print(f"wrote {C.write_result(f'sae_kernels_{dev.type}', doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
