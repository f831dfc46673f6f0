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

Before timing, every variant's loss and parameter gradients are checked against its eager
reference (``eager``, or ``batchtopk_eager`` for the BatchTopK variants) to within ``TOL``
(relative; float32 / bfloat16); a variant outside it stops the run with a one-line error,
so no figure is ever taken of a step that computes something else.

Timings: all variants (forward and full step), the GEMM ceiling, and then the kernels alone
are timed round-robin (``_common.interleaved``: the order rotates each round, one untimed
warm-up round first), ``--repeats`` rounds. One round of one variant is one
``triton.testing.do_bench`` (median of many synced calls) on CUDA, one call by the wall
clock on the CPU. Each figure is the median of the rounds, with the best round
(``*_best_s``) and the spread (``(max - min) / median``) beside it. Peak memory:
``torch.cuda.max_memory_allocated`` during one full step, minus what was allocated before it
(inputs and parameters), per variant on CUDA. Shapes (``--shape``): ``big`` n=8192 d=4096
m=131072 k=32, ``small`` n=4096 d=768 m=24576 k=32, ``tiny`` n=512 d=128 m=2048 k=32 (the
CPU smoke run). Results: benchmarks/results/sae_kernels_<device>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

from actstore.ops import batch_topk_encode, csr_decode, sparse_decode, topk_encode  # noqa: E402
from actstore.reference.topk_sae import (  # noqa: E402
    batch_topk_encode_reference,
    csr_decode_reference,
    sparse_decode_reference,
    topk_encode_reference,
)

# Relative tolerance of each variant against its eager reference, by the step's dtype:
# (loss, gradients as ||g - g_ref|| / ||g_ref|| per parameter). The references accumulate
# in float32 like the kernels; what is left is the rounding of bf16 outputs and gradients,
# TF32 products in a float32 Triton dot, and top-k near-ties that flip a few selections.
# A wrong index, bias or scale moves these by O(1).
TOL = {torch.float32: (2e-3, 2e-2), torch.bfloat16: (1e-2, 5e-2)}

SPREAD = "(max - min) / median of the rounds"
# The unit of every figure key in results.<shape>.figures (the harness test checks the cover).
UNITS = {
    "forward_s": "s (median of the rounds)",
    "forward_best_s": "s",
    "forward_spread": SPREAD,
    "step_s": "s (median of the rounds)",
    "step_best_s": "s",
    "step_spread": SPREAD,
    "encoder_gemm_s": "s (median of the rounds)",
    "encoder_gemm_best_s": "s",
    "encoder_gemm_spread": SPREAD,
    "s": "s (median of the rounds)",
    "best_s": "s",
    "spread": SPREAD,
    "tflops": "TFLOP/s at the median",
    "gb_s": "GB/s (1e9 B/s) at the median",
    "fraction_of_gemm_ceiling": "encoder GEMM s / kernel s",
    "peak_bytes_over_inputs": "B",
    "loss": "mean over rows of the squared error summed over d",
    "loss_rel_err": "|loss - reference| / |reference|",
    "grad_rel_err": "||g - g_ref|| / ||g_ref||",
}

SHAPES = {
    "big": (8192, 4096, 131072, 32),
    "small": (4096, 768, 24576, 32),
    "tiny": (512, 128, 2048, 32),
    "micro": (16, 32, 64, 4),
}  # micro: the harness's own test (kernels under the interpreter)


def _measure(dev: torch.device, repeats: int):
    """Seconds of one round of one variant: on CUDA ``do_bench`` (median of the synced calls
    that fit in its window), elsewhere one call by the wall clock."""
    if dev.type == "cuda":
        import triton

        rep_ms = max(25, 100 // max(repeats, 1))
        return lambda fn: triton.testing.do_bench(fn, rep=rep_ms) / 1e3
    return C.wall_time


def _fig(prefix: str, secs: list[float]) -> dict:
    """``{prefix}_s`` (median of the rounds), ``{prefix}_best_s`` and ``{prefix}_spread``."""
    sm = C.summary(secs)
    return {f"{prefix}_s": sm["median_s"], f"{prefix}_best_s": sm["min_s"], f"{prefix}_spread": sm["spread"]}


def _rel_err(got: torch.Tensor | None, want: torch.Tensor | None) -> float:
    if got is None or want is None:
        return 0.0 if got is None and want is None else float("inf")
    want = want.detach().float()
    return ((got.detach().float() - want).norm() / want.norm().clamp_min(1e-30)).item()


def _check_variants(variants: dict, reference_of: dict, params: dict, zero, tol) -> dict:
    """Run each variant's full step once and compare its loss and every parameter gradient
    with its reference's (relative errors). Only the references' gradients are kept (a
    variant's are compared and dropped: at the big shape each copy is GBs). Raises
    RuntimeError naming the first variant outside ``tol`` = (loss, gradient) tolerance."""

    def run(fn):
        zero()
        loss = fn()
        out = (
            float(loss.detach().float()),
            {p: (t.grad.detach().clone() if t.grad is not None else None) for p, t in params.items()},
        )
        zero()
        return out

    refs = {r: run(variants[r]) for r in dict.fromkeys(reference_of.values())}
    checks = {}
    for v, ref in reference_of.items():
        (loss, grads), (ref_loss, ref_grads) = refs[v] if v in refs else run(variants[v]), refs[ref]
        loss_err = abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)
        grad_err = {p: _rel_err(grads[p], ref_grads[p]) for p in params}
        del grads
        checks[v] = {
            "reference": ref,
            "loss": loss,
            "reference_loss": ref_loss,
            "loss_rel_err": loss_err,
            "grad_rel_err": grad_err,
            "tolerance": {"loss": tol[0], "grad": tol[1]},
        }
        worst = max(grad_err, key=grad_err.get)
        if not (loss_err <= tol[0] and grad_err[worst] <= tol[1]):
            raise RuntimeError(
                f"variant {v} disagrees with {ref}: loss rel err {loss_err:.2e} (tol {tol[0]:.0e}), "
                f"grad {worst} rel err {grad_err[worst]:.2e} (tol {tol[1]:.0e}); fix it before timing"
            )
    return checks


def _kernel_figures(run, x, W_enc, b_enc, W_dec, k, figs) -> dict:
    """Each actstore kernel alone, interleaved: seconds, TFLOP/s (encoder), GB/s (sparse),
    from the median of the rounds."""
    from actstore.kernels.csr_gather_dot import csr_gather_dot_fwd
    from actstore.kernels.csr_matmul import csr_matmul_fwd
    from actstore.kernels.csr_transpose_matmul import csr_transpose_matmul_fwd
    from actstore.kernels.topk_encode import topk_encode_fwd
    from actstore.kernels.topk_encode_split import topk_encode_split_fwd
    from actstore.ops.topk_encode_chunked import topk_encode_chunked

    n, d = x.shape
    m = W_enc.shape[0]
    v, i, _, _ = topk_encode_fwd(x, W_enc, b_enc, k)
    row_ptr = torch.arange(n + 1, device=x.device) * k
    cols, vals = i.reshape(-1), v.reshape(-1)
    rows = torch.arange(n, device=x.device).repeat_interleave(k)
    es = W_dec.element_size()
    nnz = n * k
    g = torch.randn(n, d, device=x.device)
    kernels = {
        "topk_encode_fused": lambda: topk_encode_fwd(x, W_enc, b_enc, k),
        # The other encoder candidates of the op's dispatch, on the same inputs: the split
        # kernel (tiled GEMM + threshold epilogue; autotuned on its first call, in the
        # warm-up round), the chunked cuBLAS path and eager ([n, m] + torch.topk).
        "topk_encode_split": lambda: topk_encode_split_fwd(x, W_enc, b_enc, k),
        "topk_encode_chunked": lambda: topk_encode_chunked(x, W_enc, b_enc, k),
        "topk_encode_eager": lambda: topk_encode_reference(x, W_enc, b_enc, k),
        "csr_matmul (decode)": lambda: csr_matmul_fwd(row_ptr, cols, vals, W_dec),
        "csr_gather_dot (grad values)": lambda: csr_gather_dot_fwd(rows, cols, g, W_dec),
    }
    moved = {
        "csr_matmul (decode)": nnz * (d * es + 12) + n * d * 4,
        "csr_gather_dot (grad values)": nnz * (d * es + d * 4 + 20),
    }
    for method in ("sorted", "atomic"):
        name = f"csr_transpose_matmul {method} (grad W_dec)"
        kernels[name] = lambda method=method: csr_transpose_matmul_fwd(rows, cols, vals, g, m, None, method)
        moved[name] = nnz * (d * 4 + 20) + m * d * 4
    out = {}
    for name, secs in run(kernels).items():
        sm = C.summary(secs)
        t = sm["median_s"]
        out[name] = {"s": t, "best_s": sm["min_s"], "spread": sm["spread"]}
        if name.startswith("topk_encode_"):
            out[name].update(
                tflops=2 * n * d * m / t / 1e12, fraction_of_gemm_ceiling=figs["gemm_ceiling"]["encoder_gemm_s"] / t
            )
        else:
            out[name]["gb_s"] = moved[name] / t / 1e9
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--shape", action="append", choices=list(SHAPES), help="repeatable; default small+big on CUDA, tiny on CPU"
    )
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--kernels",
        action="store_true",
        help="time each kernel alone even off CUDA (under TRITON_INTERPRET=1: a check, not a timing)",
    )
    ap.add_argument("--no-write", action="store_true", help="print only; leave results/ alone")
    args = ap.parse_args(argv)
    meta = C.metadata()  # before measuring: write_result compares it with the state at the end
    dev = torch.device(args.device)
    dt = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if dev.type == "cpu" and dt == torch.bfloat16:
        dt = torch.float32  # CPU matmuls in bf16 are not what anyone trains with
    shapes = args.shape or (["small", "big"] if dev.type == "cuda" else ["tiny"])
    measure = _measure(dev, args.repeats)

    def run(callables: dict) -> dict[str, list[float]]:
        return C.interleaved(callables, args.repeats, warmup=1, measure=measure)

    results = {}
    for name in shapes:
        n, d, m, k = SHAPES[name]
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(n, d, generator=g).to(dev, dt)
        W_enc = (torch.randn(m, d, generator=g) / d**0.5).to(dev, dt).requires_grad_()
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
        step_atomic = make_step(
            lambda *a: topk_encode(*a, accumulate="atomic"), lambda *a: sparse_decode(*a, accumulate="atomic")
        )

        def make_batch_step(encode, decode):
            def step(fwd_only=False):
                rp, c, v, _ = encode(x, W_enc, b_enc, k, b_dec)
                loss = (decode(rp, c, v, W_dec, b_dec).float() - x.float()).pow(2).sum(1).mean()
                if not fwd_only:
                    zero()
                    loss.backward()
                return loss

            return step

        variants = {
            "eager": step_eager,
            "actstore": step_actstore,
            "actstore_atomic": step_atomic,
            "batchtopk_eager": make_batch_step(batch_topk_encode_reference, csr_decode_reference),
            "batchtopk_actstore": make_batch_step(batch_topk_encode, csr_decode),
        }
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
            notes.append(
                "off CUDA every actstore variant runs the reference backend (the kernels need a GPU; "
                "the interpreter is no timing): these figures say nothing about the Triton kernels"
            )

        checks = _check_variants(
            variants,
            {v: ("batchtopk_eager" if v.startswith("batchtopk") else "eager") for v in variants},
            dict(zip(("W_enc", "b_enc", "W_dec", "b_dec"), params)),
            zero,
            TOL[dt],
        )

        def forward(fn):
            def fwd():
                with torch.no_grad():
                    fn(fwd_only=True)

            return fwd

        xg, wg = x.detach(), W_enc.detach()
        timed = {"gemm_ceiling": lambda: xg @ wg.t()}
        for v, fn in variants.items():
            if v != "compiled":
                timed[f"{v}|forward"] = forward(fn)
            timed[f"{v}|step"] = fn
        secs = run(timed)
        figs = {}
        for v in variants:
            figs[v] = {
                **(
                    _fig("forward", secs[f"{v}|forward"])
                    if v != "compiled"
                    else {"forward_s": None, "forward_best_s": None, "forward_spread": None}
                ),
                **_fig("step", secs[f"{v}|step"]),
                "peak_bytes_over_inputs": None,
            }
            if dev.type == "cuda":
                zero()
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                variants[v]()
                torch.cuda.synchronize()
                figs[v]["peak_bytes_over_inputs"] = torch.cuda.max_memory_allocated() - before
        gemm_fig = _fig("encoder_gemm", secs["gemm_ceiling"])
        gemm = gemm_fig["encoder_gemm_s"]
        figs["gemm_ceiling"] = {**gemm_fig, "tflops": 2 * n * d * m / gemm / 1e12}
        if dev.type == "cuda" or args.kernels:
            figs["kernels"] = _kernel_figures(run, xg, wg, b_enc.detach(), W_dec.detach(), k, figs)
        base = figs["eager"]["step_s"]
        ratios = {
            f"{v}_step_speedup_vs_eager": base / f["step_s"]
            for v, f in figs.items()
            if "step_s" in f and not v.startswith("batchtopk")
        }
        ratios["batchtopk_actstore_step_speedup_vs_eager"] = (
            figs["batchtopk_eager"]["step_s"] / figs["batchtopk_actstore"]["step_s"]
        )
        if dev.type == "cuda":
            ratios["actstore_peak_memory_vs_eager"] = (
                figs["actstore"]["peak_bytes_over_inputs"] / figs["eager"]["peak_bytes_over_inputs"]
            )
        if "sparsify" in figs:
            ratios["actstore_step_speedup_vs_sparsify"] = figs["sparsify"]["step_s"] / figs["actstore"]["step_s"]
        results[name] = {
            "n": n,
            "d": d,
            "m": m,
            "k": k,
            "dtype": str(dt),
            "repeats": args.repeats,
            "figures": figs,
            "ratios": ratios,
            "checks": checks,
            "notes": notes,
        }
        print(f"{name}: n={n} d={d} m={m} k={k} {dt}; {args.repeats} interleaved rounds, medians")
        nan = float("nan")
        print(
            C.fmt_table(
                [
                    [
                        v,
                        f"{f['forward_s'] or nan:.4f}",
                        f"{f['step_s']:.4f}",
                        f"{f['step_best_s']:.4f}",
                        f"{f['step_spread']:.2f}",
                        f"{(f['peak_bytes_over_inputs'] or 0) / 2**20:.0f}",
                        f"{checks[v]['loss_rel_err']:.1e}",
                        f"{max(checks[v]['grad_rel_err'].values()):.1e}",
                    ]
                    for v, f in figs.items()
                    if "step_s" in f
                ],
                ["variant", "forward s", "step s", "best", "spread", "peak MiB over inputs", "loss err", "grad err"],
            )
        )
        if "kernels" in figs:
            print(
                C.fmt_table(
                    [
                        [
                            kn,
                            f"{kf['s'] * 1e3:.3f}",
                            f"{kf['best_s'] * 1e3:.3f}",
                            f"{kf['spread']:.2f}",
                            f"{kf.get('tflops', nan):.1f}",
                            f"{kf.get('gb_s', nan):.0f}",
                        ]
                        for kn, kf in figs["kernels"].items()
                    ],
                    ["kernel", "ms", "best ms", "spread", "TFLOP/s", "GB/s"],
                )
            )
        print(
            f"encoder GEMM alone: {gemm:.4f} s = {figs['gemm_ceiling']['tflops']:.2f} TFLOP/s; "
            + ", ".join(f"{k_} x{r:.2f}" for k_, r in ratios.items())
        )
        for note in notes:
            print("note: " + note)
    doc = {
        "meta": meta,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "units": UNITS,
        "results": results,
    }
    if not args.no_write:
        print(f"wrote {C.write_result(f'sae_kernels_{dev.type}', doc)}")
    return doc


if __name__ == "__main__":
    main()
