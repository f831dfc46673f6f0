"""The SAE kernel benchmark's harness runs end to end on a micro shape (kernels under the
interpreter off a GPU), so the GPU run is not its first run. Checks the figures it
produces are there and positive; no timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_sae_kernels  # noqa: E402


def test_sae_kernel_bench_harness_runs_every_variant_and_kernel():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    res = bench_sae_kernels.main(["--device", dev, "--shape", "micro", "--kernels", "--repeats", "1", "--no-write"])
    figs = res["micro"]["figures"]
    for v in ("eager", "actstore", "actstore_atomic", "batchtopk_eager", "batchtopk_actstore"):
        assert figs[v]["step_s"] > 0 and figs[v]["forward_s"] > 0, v
    kern = figs["kernels"]
    assert set(kern) >= {"topk_encode_fused", "csr_matmul (decode)", "csr_gather_dot (grad values)",
                         "csr_transpose_matmul sorted (grad W_dec)", "csr_transpose_matmul atomic (grad W_dec)"}
    assert all(f["s"] > 0 for f in kern.values()) and kern["topk_encode_fused"]["tflops"] > 0
    assert res["micro"]["ratios"]["actstore_step_speedup_vs_eager"] > 0
