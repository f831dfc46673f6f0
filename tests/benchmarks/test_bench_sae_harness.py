"""The SAE kernel benchmark's harness runs end to end on a micro shape (kernels under the
interpreter off a GPU), so the GPU run is not its first run. Checks that every variant
agreed with its eager reference before it was timed, that the result document holds every
variant, kernel and figure with its unit and survives JSON, and that the agreement check
itself refuses a step that computes something else; no timing is asserted."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from helpers.paths import BENCHMARKS

sys.path.insert(0, str(BENCHMARKS))
import _common as C  # noqa: E402
import bench_sae_kernels  # noqa: E402

VARIANTS = {"eager", "actstore", "actstore_atomic", "batchtopk_eager", "batchtopk_actstore"}
KERNELS = {
    "topk_encode_fused",
    "topk_encode_split",
    "topk_encode_chunked",
    "topk_encode_eager",
    "csr_matmul (decode)",
    "csr_gather_dot (grad values)",
    "csr_transpose_matmul sorted (grad W_dec)",
    "csr_transpose_matmul atomic (grad W_dec)",
}


@pytest.mark.slow
@pytest.mark.gpu
def test_sae_kernel_bench_harness_checks_every_variant_and_reports_units(device):
    doc = bench_sae_kernels.main(["--device", device, "--shape", "micro", "--kernels", "--repeats", "2", "--no-write"])
    doc = json.loads(json.dumps(doc, default=C._json_default))  # what write_result would store
    res = doc["results"]["micro"]
    figs, checks = res["figures"], res["checks"]
    variants = set(figs) - {"gemm_ceiling", "kernels"}
    assert variants >= VARIANTS and variants - VARIANTS <= {"compiled", "sparsify"}
    # every timed variant was checked against its reference, and agreed within the stated tolerance
    assert set(checks) == variants
    for v, c in checks.items():
        assert c["reference"] == ("batchtopk_eager" if v.startswith("batchtopk") else "eager"), v
        assert math.isfinite(c["loss"]) and c["loss"] > 0, v
        assert c["loss_rel_err"] <= c["tolerance"]["loss"], v
        assert set(c["grad_rel_err"]) == {"W_enc", "b_enc", "W_dec", "b_dec"}, v
        assert max(c["grad_rel_err"].values()) <= c["tolerance"]["grad"], v
    assert checks["eager"]["loss_rel_err"] == 0 and checks["eager"]["reference_loss"] == checks["eager"]["loss"]
    assert set(figs["kernels"]) == KERNELS
    # every figure has a unit; medians, best rounds and spreads are consistent
    units = doc["units"]
    for v in variants | {"gemm_ceiling"}:
        assert set(figs[v]) <= set(units), (v, set(figs[v]) - set(units))
    for kf in figs["kernels"].values():
        assert set(kf) <= set(units), set(kf) - set(units)
        assert 0 < kf["best_s"] <= kf["s"] and kf["spread"] >= 0
    for v in variants:
        f = figs[v]
        assert 0 < f["step_best_s"] <= f["step_s"] and f["step_spread"] >= 0, v
        if v != "compiled":
            assert 0 < f["forward_best_s"] <= f["forward_s"], v
    assert set(checks["eager"]) - {"grad_rel_err", "tolerance", "reference", "reference_loss"} <= set(units)
    assert res["ratios"]["actstore_step_speedup_vs_eager"] > 0
    assert doc["meta"]["git"]["commit"] is not None and "loadavg_1_5_15_at_start" in doc["meta"]["machine"]


def test_agreement_check_refuses_a_variant_that_computes_something_else():
    g = torch.Generator().manual_seed(0)
    x, W = torch.randn(8, 4, generator=g), torch.randn(4, 4, generator=g).requires_grad_()

    def zero():
        W.grad = None

    def step(scale):
        def fn():
            loss = (x @ W * scale - x).pow(2).sum(1).mean()
            loss.backward()
            return loss

        return fn

    variants = {"eager": step(1.0), "close": step(1.0 + 1e-6), "wrong": step(1.1)}
    tol = bench_sae_kernels.TOL[torch.float32]
    ok = bench_sae_kernels._check_variants(
        {k: variants[k] for k in ("eager", "close")}, {"eager": "eager", "close": "eager"}, {"W": W}, zero, tol
    )
    assert ok["close"]["loss_rel_err"] < tol[0]
    with pytest.raises(RuntimeError, match="variant wrong disagrees with eager"):
        bench_sae_kernels._check_variants(variants, {v: "eager" for v in variants}, {"W": W}, zero, tol)


def test_interleaved_rotates_the_order_and_summary_reports_median_best_spread():
    calls = []
    times = C.interleaved(
        {n: (lambda n=n: calls.append(n)) for n in "abc"},
        repeats=3,
        warmup=1,
        measure=lambda fn: (fn(), 1.0 + len(calls))[1],
    )
    assert calls == list("abcbcacababc")  # round 0 is the untimed warm-up
    # measure() returns 1 + the calls so far: each figure says when its call ran
    assert times == {"a": [7.0, 9.0, 11.0], "b": [5.0, 10.0, 12.0], "c": [6.0, 8.0, 13.0]}
    s = C.summary(times["a"])
    assert (s["median_s"], s["min_s"], s["max_s"], s["repeats"]) == (9.0, 7.0, 11.0, 3)
    assert s["spread"] == pytest.approx(4 / 9)
