"""One TopK SAE training step: actstore's ops against eager PyTorch, torch.compile, sparsify.

Step = encoder + top-k, sparse decode, MSE loss, backward through everything. Variants,
side by side in one process:

- ``eager``: ``actstore.reference.topk_sae`` (dense pre-activations + ``torch.topk``,
  einsum decode), autograd backward;
- ``compiled``: ``torch.compile`` of the same step (skipped where compile fails);
- ``actstore``: ``actstore.ops.topk_encode`` (fused Triton encoder+top-k on CUDA; the
  reference elsewhere) and ``actstore.ops.sparse_decode``, sparse backward with sorted
  (deterministic) weight-gradient accumulation; ``actstore_atomic``: the same with
  float32 atomics (the sorted-vs-atomic measurement);
- ``batchtopk_eager`` / ``batchtopk_actstore``: the BatchTopK step (reference: dense
  pre-activations + a flat ``topk``; actstore: candidates from the fused kernel + radix
  select threshold, CSR decode);
- ``sparsify``: EleutherAI sparsify's ``fused_encoder`` + its decoder (``decoder_impl``),
  when the package is installed and a GPU is present;
- ``gemm_ceiling``: the encoder product alone, ``x @ W_enc.T`` in bf16 (cuBLAS on a GPU),
  reported as TFLOP/s.

On CUDA it also times each actstore kernel alone: the fused encoder (TFLOP/s of its
``2 n d m`` product, against the bf16 GEMM ceiling), and the sparse kernels in GB/s of the
bytes they must move (decode and gather-dot: ``nnz`` rows of d gathered; transposed
product: ``nnz`` rows of d read plus the ``[m, d]`` float32 gradient written).

Timings: ``triton.testing.do_bench`` on CUDA (median ms), ``time.perf_counter`` medians on
the CPU. Peak memory: ``torch.cuda.max_memory_allocated`` during one full step, minus what was
allocated before it (inputs and parameters), per variant on CUDA. Shapes
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

from actstore.ops import batch_topk_encode, csr_decode, sparse_decode, topk_encode  # noqa: E402
from actstore.reference.topk_sae import (batch_topk_encode_reference, csr_decode_reference,  # noqa: E402
                                         sparse_decode_reference, topk_encode_reference)

SHAPES = {"big": (8192, 4096, 131072, 32), "small": (4096, 768, 24576, 32), "tiny": (512, 128, 2048, 32),
          "micro": (16, 32, 64, 4)}  # micro: the harness's own test (kernels under the interpreter)


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


def _kernel_figures(timer, x, W_enc, b_enc, W_dec, k, figs) -> dict:
    """Each actstore kernel alone on CUDA: seconds, TFLOP/s (encoder), GB/s (sparse)."""
    from actstore.kernels.csr_gather_dot import csr_gather_dot_fwd
    from actstore.kernels.csr_matmul import csr_matmul_fwd
    from actstore.kernels.csr_transpose_matmul import csr_transpose_matmul_fwd
    from actstore.kernels.topk_encode import topk_encode_fwd

    n, d = x.shape
    m = W_enc.shape[0]
    out = {}
    t = timer(lambda: topk_encode_fwd(x, W_enc, b_enc, k))
    out["topk_encode_fused"] = {"s": t, "tflops": 2 * n * d * m / t / 1e12,
                                "fraction_of_gemm_ceiling": figs["gemm_ceiling"]["encoder_gemm_s"] / t}
    v, i, _, _ = topk_encode_fwd(x, W_enc, b_enc, k)
    row_ptr = torch.arange(n + 1, device=x.device) * k
    cols, vals = i.reshape(-1), v.reshape(-1)
    rows = torch.arange(n, device=x.device).repeat_interleave(k)
    es = W_dec.element_size()
    nnz = n * k
    g = torch.randn(n, d, device=x.device)
    t = timer(lambda: csr_matmul_fwd(row_ptr, cols, vals, W_dec))
    out["csr_matmul (decode)"] = {"s": t, "gb_s": (nnz * (d * es + 12) + n * d * 4) / t / 1e9}
    t = timer(lambda: csr_gather_dot_fwd(rows, cols, g, W_dec))
    out["csr_gather_dot (grad values)"] = {"s": t, "gb_s": (nnz * (d * es + d * 4 + 20)) / t / 1e9}
    for method in ("sorted", "atomic"):
        t = timer(lambda: csr_transpose_matmul_fwd(rows, cols, vals, g, m, None, method))
        out[f"csr_transpose_matmul {method} (grad W_dec)"] = {"s": t, "gb_s": (nnz * (d * 4 + 20) + m * d * 4) / t / 1e9}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", action="append", choices=list(SHAPES), help="repeatable; default small+big on CUDA, tiny on CPU")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kernels", action="store_true",
                    help="time each kernel alone even off CUDA (under TRITON_INTERPRET=1: a check, not a timing)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave results/ alone")
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
        step_atomic = make_step(lambda *a: topk_encode(*a, accumulate="atomic"),
                                lambda *a: sparse_decode(*a, accumulate="atomic"))

        def make_batch_step(encode, decode):
            def step(fwd_only=False):
                rp, c, v, _ = encode(x, W_enc, b_enc, k, b_dec)
                loss = (decode(rp, c, v, W_dec, b_dec).float() - x.float()).pow(2).sum(1).mean()
                if not fwd_only:
                    zero()
                    loss.backward()
                return loss
            return step

        variants = {"eager": step_eager, "actstore": step_actstore, "actstore_atomic": step_atomic,
                    "batchtopk_eager": make_batch_step(batch_topk_encode_reference, csr_decode_reference),
                    "batchtopk_actstore": make_batch_step(batch_topk_encode, csr_decode)}
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
            notes.append("off CUDA every actstore variant runs the reference backend (the kernels need a GPU; "
                         "the interpreter is no timing): these figures say nothing about the Triton kernels")

        figs = {}
        for v, fn in variants.items():
            with torch.no_grad():
                fwd = timer(lambda: fn(fwd_only=True)) if v != "compiled" else None
            full = timer(fn)
            peak = None
            if dev.type == "cuda":
                zero()
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                fn()
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - before
            figs[v] = {"forward_s": fwd, "step_s": full, "peak_bytes_over_inputs": peak}
        xg, wg = x.detach(), W_enc.detach()
        gemm = timer(lambda: xg @ wg.t())
        figs["gemm_ceiling"] = {"encoder_gemm_s": gemm, "tflops": 2 * n * d * m / gemm / 1e12}
        if dev.type == "cuda" or args.kernels:
            figs["kernels"] = _kernel_figures(timer, xg, wg, b_enc.detach(), W_dec.detach(), k, figs)
        base = figs["eager"]["step_s"]
        ratios = {f"{v}_step_speedup_vs_eager": base / f["step_s"] for v, f in figs.items()
                  if "step_s" in f and not v.startswith("batchtopk")}
        ratios["batchtopk_actstore_step_speedup_vs_eager"] = (figs["batchtopk_eager"]["step_s"]
                                                              / figs["batchtopk_actstore"]["step_s"])
        if dev.type == "cuda":
            ratios["actstore_peak_memory_vs_eager"] = (figs["actstore"]["peak_bytes_over_inputs"]
                                                       / figs["eager"]["peak_bytes_over_inputs"])
        if "sparsify" in figs:
            ratios["actstore_step_speedup_vs_sparsify"] = figs["sparsify"]["step_s"] / figs["actstore"]["step_s"]
        results[name] = {"n": n, "d": d, "m": m, "k": k, "dtype": str(dt), "figures": figs, "ratios": ratios,
                         "notes": notes}
        print(f"{name}: n={n} d={d} m={m} k={k} {dt}")
        print(C.fmt_table([[v, f"{f.get('forward_s') or float('nan'):.4f}", f"{f.get('step_s', float('nan')):.4f}",
                            f"{(f.get('peak_bytes_over_inputs') or 0) / 2**20:.0f}"] for v, f in figs.items() if "step_s" in f],
                          ["variant", "forward s", "step s", "peak MiB over inputs"]))
        if "kernels" in figs:
            print(C.fmt_table([[kn, f"{kf['s'] * 1e3:.3f}", f"{kf.get('tflops', float('nan')):.1f}",
                                f"{kf.get('gb_s', float('nan')):.0f}"] for kn, kf in figs["kernels"].items()],
                              ["kernel", "ms", "TFLOP/s", "GB/s"]))
        print(f"encoder GEMM alone: {gemm:.4f} s = {figs['gemm_ceiling']['tflops']:.2f} TFLOP/s; "
              + ", ".join(f"{k_} x{r:.2f}" for k_, r in ratios.items()))
        for note in notes:
            print("note: " + note)
    doc = {"meta": C.metadata(), "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "units": {"forward_s": "s", "step_s": "s", "encoder_gemm_s": "s", "tflops": "TFLOP/s",
                     "peak_bytes_over_inputs": "B", "gb_s": "GB/s (1e9 B/s)"},
           "results": results}
    if not args.no_write:
        print(f"wrote {C.write_result(f'sae_kernels_{dev.type}', doc)}")
    return results


if __name__ == "__main__":
    main()
