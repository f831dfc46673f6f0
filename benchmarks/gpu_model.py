"""A roofline model of every kernel on H100 and H200: FLOPs, bytes from HBM and from L2,
occupancy from the compiled registers and shared memory, and a predicted time beside the
cuBLAS GEMM floor. Every figure is **predicted**: nothing here ran on a GPU. Measured
figures will sit beside these once a GPU is lent (benchmarks/gpu_session.sh).

Peak figures (the only inputs besides the shapes and results/gpu_compile.json):

| figure                       | H100 SXM5 | H200 SXM | source |
|------------------------------|-----------|----------|--------|
| HBM bandwidth                | 3.35 TB/s | 4.8 TB/s | NVIDIA H100 / H200 datasheets (HBM3 / HBM3e) |
| dense bf16/fp16 tensor core  | 989 TFLOP/s | 989 TFLOP/s | datasheets (1979 with sparsity; H200 has H100's compute) |
| fp32 (CUDA cores, no tensor) | 67 TFLOP/s | 67 TFLOP/s | datasheets |
| L2 size                      | 50 MB     | 50 MB    | NVIDIA Hopper architecture whitepaper (H100 SXM5) |
| L2 bandwidth                 | 5.5 TB/s  | 5.5 TB/s | an ASSUMPTION: in no datasheet; third-party  |
|                              |           |          | microbenchmarks put Hopper's L2 near it      |
| SMs                          | 132       | 132      | Hopper whitepaper (H100 SXM5) |
| SM clock (boost)             | 1.98 GHz  | 1.98 GHz | Hopper whitepaper (H100 SXM5 max boost); H200 the same chip |
| warp schedulers per SM       | 4         | 4        | Hopper whitepaper (one warp instruction per clock each) |
| per SM: 65536 registers, 228 KiB smem, 2048 threads, 32 blocks | same | same | CUDA C Programming Guide, cc 9.0 |

Model, per kernel and shape: time = max(FLOPs / compute peak, HBM bytes / HBM bandwidth,
L2 bytes / L2 bandwidth), a lower bound that assumes full overlap and peak rates; the
occupancy beside it (resident warps / 64 per SM, from registers per thread, Triton's shared
memory and warps per block of the sm_90a compile) says how far from those rates the kernel
may fall. Bytes: "HBM" is what must come from memory at least once (or, for gathers over a
table far larger than L2, every gathered row); "L2" is what the programs load in all, re-reads
included. The fused TopK encoder's rows per program (``BLOCK_N``) set its re-reads of W_enc:
each of the ``n / BLOCK_N`` programs streams all of W_enc through L2.

The split encoder (``topk_encode_split``) is a tiled GEMM: each ``[BLOCK_N, BLOCK_M]`` tile
loads ``(BLOCK_N + BLOCK_M) d`` operand elements from L2, W_enc comes from HBM once per
group of ``GROUP_N`` row blocks, the dense sample ``[n, ms]`` and the candidate buffers add
HBM traffic, and the exact select (``torch.topk`` over int64 keys, ``[n, k + cap]``) runs
after the GEMM: its HBM bytes (``serial_hbm_bytes``) are added to the roofline time, not
overlapped. Beside it: ``predicted_tiled_gemm_s``, the same tiles with no epilogue (so the
gap to the cuBLAS floor that is the tiles' own L2 traffic shows apart from what the top-k
adds), and ``ratio_to_gemm`` (predicted time / the bf16 GEMM at peak). Its epilogue is
added after the roofline too (``predicted_epilogue_s``; one block per SM at its registers,
so nothing hides it): per tile, one round per survivor of its fullest row (the expected
maximum over ``BLOCK_N`` rows of a Poisson count with the row's mean survivors per tile),
each round ~6 instructions per tile element (select, min, compare, select, sum, mask),
issued by 4 schedulers at the boost clock.

    python benchmarks/gpu_model.py      # -> results/gpu_model.json and a table
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import RESULTS, fmt_table, metadata  # noqa: E402  (puts the repo on sys.path)

from actstore.kernels import (
    capture_pack,
    csr_gather_dot,
    csr_matmul,
    csr_transpose_matmul,
    dequant_normalize,
    topk_encode,
    topk_encode_split,
)
from actstore.store.format import DTYPES

LABEL = "predicted"
TB, TF = 1e12, 1e12


@dataclass(frozen=True)
class Device:
    name: str
    hbm_Bps: float
    l2_Bps: float
    tc_flops: float  # dense bf16/fp16 tensor core
    fp32_flops: float  # CUDA cores
    l2_bytes: int = 50 * 10**6
    clock_hz: float = 1.98e9
    schedulers_per_sm: int = 4
    sms: int = 132
    regs_per_sm: int = 65536
    smem_per_sm: int = 228 * 1024
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32


DEVICES = {
    "H100-SXM": Device("H100-SXM", 3.35 * TB, 5.5 * TB, 989 * TF, 67 * TF),
    "H200-SXM": Device("H200-SXM", 4.8 * TB, 5.5 * TB, 989 * TF, 67 * TF),
}
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class Shape:
    """An SAE step's shape: n rows, d inputs, m latents, k active, dtype of x and the weights."""

    n: int
    d: int
    m: int
    k: int
    dtype: str = "bf16"

    @property
    def label(self) -> str:
        return f"n{self.n}-d{self.d}-m{self.m}-k{self.k}-{self.dtype}"


SHAPES = [
    Shape(4096, 768, 24576, 32),
    Shape(8192, 4096, 131072, 32),  # the target shape
    Shape(8192, 8192, 262144, 64),
    Shape(8192, 4096, 131072, 32, "fp32"),
]


def occupancy(registers: int, num_warps: int, smem_bytes: int, dev: Device) -> dict:
    """Resident blocks and warps per SM. Registers are allocated per warp in units of 256
    (so ``registers * 32`` rounded up to 256); each block also reserves 1 KiB of shared
    memory (CUDA C Programming Guide, compute capability 9.0)."""
    regs_per_warp = math.ceil(registers * 32 / 256) * 256
    by_regs = dev.regs_per_sm // (regs_per_warp * num_warps)
    by_smem = dev.smem_per_sm // (smem_bytes + 1024)
    by_threads = dev.threads_per_sm // (num_warps * 32)
    blocks = min(by_regs, by_smem, by_threads, dev.blocks_per_sm)
    limit = {by_regs: "registers", by_smem: "shared memory", by_threads: "threads"}.get(blocks, "blocks")
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * num_warps, "occupancy": blocks * num_warps / 64,
            "limited_by": limit}  # fmt: skip


def kernel_work(kernel: str, s: Shape, cfg: dict) -> dict:
    """FLOPs, HBM bytes and L2 bytes of one kernel at shape ``s`` with launch config ``cfg``."""
    e = BYTES[s.dtype]
    n, d, m, k = s.n, s.d, s.m, s.k
    nnz = n * k
    if kernel == "topk_encode":
        progs = math.ceil(n / cfg["BLOCK_N"])
        out = nnz * (4 + 8)  # values float32 + indices int64
        return {"flops": 2 * n * m * d, "hbm_bytes": m * d * e + n * d * e + m * 4 + out,
                "l2_bytes": progs * (m * d * e + m * 4) + n * d * e + out,
                "tensor_core": s.dtype != "fp32"}  # fmt: skip
    if kernel == "topk_encode_split":
        return split_work(s, cfg)
    if kernel == "csr_matmul":  # decode: gathers k rows of W_dec per row, W_dec far larger than L2
        return {"flops": 2 * nnz * d, "hbm_bytes": nnz * d * e + nnz * 12 + n * d * 4,
                "l2_bytes": nnz * d * e + nnz * 12 + n * d * 4, "tensor_core": False}  # fmt: skip
    if kernel == "csr_gather_dot":  # G [n, d] float32 read once from HBM, its rows re-read k times from L2
        return {"flops": 2 * nnz * d, "hbm_bytes": n * d * 4 + nnz * d * e + nnz * 20,
                "l2_bytes": nnz * d * (4 + e) + nnz * 20, "tensor_core": False}  # fmt: skip
    if kernel == "csr_transpose_sorted":  # grad_W [m, d] float32 written in full, X rows gathered
        return {"flops": 2 * nnz * d, "hbm_bytes": m * d * 4 + n * d * 4 + nnz * 20 + m * 4,
                "l2_bytes": m * d * 4 + nnz * d * 4 + nnz * 20 + m * 4, "tensor_core": False}  # fmt: skip
    if kernel == "dequant_normalize":  # stored bf16 in, model dtype out
        return {"flops": 3 * n * d, "hbm_bytes": n * d * (2 + e), "l2_bytes": n * d * (2 + e), "tensor_core": False}
    if kernel == "capture_pack":  # activations in, bf16 storage out; walk 2 re-reads x (from L2 at best)
        return {"flops": 8 * n * d, "hbm_bytes": n * d * (e + 2), "l2_bytes": n * d * (2 * e + 2),
                "tensor_core": False}  # fmt: skip
    raise KeyError(kernel)


def split_work(s: Shape, cfg: dict) -> dict:
    """The split encoder's work at ``s`` with tiles ``cfg`` (its launcher's sample and
    capacity rules, ``topk_encode_split.sample_m`` / ``capacity``)."""
    e = BYTES[s.dtype]
    n, d, m, k = s.n, s.d, s.m, s.k
    ms = topk_encode_split.sample_m(m, k)
    cap = topk_encode_split.capacity(m, ms, k)
    survivors = k * (m - ms) / ms  # expected per row outside the sample
    bn, bm = cfg["BLOCK_N"], cfg["BLOCK_M"]
    row_blocks = math.ceil(n / bn)
    tiles = row_blocks * (math.ceil(ms / bm) + math.ceil((m - ms) / bm))
    w_reads = math.ceil(row_blocks / cfg["GROUP_N"])  # W_enc from HBM once per group of row blocks
    out = n * k * 12
    # Sample: [n, ms] float32 written by the kernel, read into int64 keys, top-k'd (4+4+8+8 B).
    sample = n * ms * 24
    # Candidates: each survivor a scattered 4 B value + 4 B column (a 32 B sector each, at worst).
    cand = n * survivors * 64
    # Select (after the GEMM): [n, cap] values + columns read, keys made, masked, joined, top-k'd.
    select = n * (cap + k) * 64
    hbm = w_reads * (m * d * e + m * 4) + n * d * e + sample + cand + out
    l2 = tiles * (bn + bm) * d * e + hbm
    split_tiles = row_blocks * math.ceil((m - ms) / bm)
    rounds = expected_max_poisson(survivors * bm / (m - ms), bn) if m > ms else 0.0
    return {"flops": 2 * n * m * d, "hbm_bytes": hbm, "l2_bytes": l2, "serial_hbm_bytes": select,
            "tensor_core": s.dtype != "fp32", "sample_m": ms, "cap": cap, "expected_survivors_per_row": survivors,
            "tile_l2_bytes": tiles * (bn + bm) * d * e, "epilogue_rounds_per_tile": rounds,
            "epilogue_warp_instructions": split_tiles * rounds * 6 * bn * bm / 32}  # fmt: skip


def expected_max_poisson(lam: float, rows: int) -> float:
    """E[max of ``rows`` independent Poisson(``lam``) counts] = sum_r (1 - F(r)^rows)."""
    total, cdf, pmf, r = 0.0, 0.0, math.exp(-lam), 0
    while True:
        cdf += pmf
        tail = 1.0 - cdf**rows
        if tail < 1e-9:
            return total
        total += tail
        r += 1
        pmf *= lam / r


def launch_config(kernel: str, s: Shape) -> dict:
    """The launcher's own choice at ``s`` (its pure config function)."""
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[s.dtype]
    spec = DTYPES["bf16"]
    return {
        "topk_encode": lambda: topk_encode._topk_encode_config(s.d, s.k, 0, dt),
        # The threshold-epilogue launch (the hot one), at the first autotune configuration:
        # the one used off CUDA; the autotuner may pick another on a GPU.
        "topk_encode_split": lambda: {
            **topk_encode_split.split_flags(dt, False, False),
            **topk_encode_split._split_configs(dt)[0],
        },  # fmt: skip
        "csr_matmul": lambda: csr_matmul._csr_matmul_config(s.d),
        "csr_gather_dot": lambda: csr_gather_dot._csr_gather_dot_config(s.d),
        "csr_transpose_sorted": lambda: csr_transpose_matmul._csr_transpose_matmul_config(s.d, "sorted", False),
        "dequant_normalize": lambda: dequant_normalize._dequant_normalize_config(s.d, spec, False, True, True),
        "capture_pack": lambda: capture_pack._capture_pack_config(s.d, spec),
    }[kernel]()


def compiled(records: list[dict], kernel: str, cfg: dict, arch: str = "sm_90a") -> dict | None:
    """The gpu_compile.json record of ``kernel`` at these constexprs and warps (the first of
    several pointer-dtype variants), or None when that configuration was not compiled."""
    want = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
    for r in records:
        if r["kernel"] == kernel and r["arch"] == arch and r["constexprs"] == want and "registers" in r:
            return r
    return None


def predict(work: dict, dev: Device) -> dict:
    """Roofline lower bound in seconds, and which resource sets it."""
    rate = dev.tc_flops if work["tensor_core"] else dev.fp32_flops
    parts = {
        "compute": work["flops"] / rate,
        "hbm": work["hbm_bytes"] / dev.hbm_Bps,
        "l2": work["l2_bytes"] / dev.l2_Bps,
    }
    bound = max(parts, key=parts.get)
    serial = work.get("serial_hbm_bytes", 0) / dev.hbm_Bps  # phases after the kernel (not overlapped)
    epi = work.get("epilogue_warp_instructions", 0) / (dev.sms * dev.schedulers_per_sm * dev.clock_hz)
    out = {
        "predicted_s": parts[bound] + serial + epi,
        "bound_by": bound,
        **{f"predicted_{k}_s": v for k, v in parts.items()},
    }
    if serial:
        out["predicted_serial_s"] = serial
    if epi:
        out["predicted_epilogue_s"] = epi
    if "tile_l2_bytes" in work:
        rate = dev.tc_flops if work["tensor_core"] else dev.fp32_flops
        out["predicted_tiled_gemm_s"] = max(work["flops"] / rate, work["tile_l2_bytes"] / dev.l2_Bps)
    return out


def gemm_floor(s: Shape, dev: Device) -> dict:
    """cuBLAS at peak for the encoder GEMM (n*m*d*2 FLOP), and with a torch.topk that writes
    and reads the [n, m] pre-activations once through HBM."""
    gemm = 2 * s.n * s.m * s.d / (dev.tc_flops if s.dtype != "fp32" else dev.fp32_flops)
    pre = s.n * s.m * BYTES[s.dtype]
    return {"predicted_gemm_s": gemm, "predicted_gemm_plus_topk_s": gemm + 2 * pre / dev.hbm_Bps}


TOPK = ("topk_encode", "topk_encode_split")
TARGET = Shape(8192, 4096, 131072, 32)  # issue 14 item 3: within 1.3x of the bf16 GEMM alone, by the model


def l2_needed(work: dict, p: dict, dev: Device, target: float = 1.3) -> float | None:
    """The L2 bandwidth (B/s) at which the prediction ``p`` would come within ``target`` x
    the GEMM floor, the other terms unchanged (None: compute or HBM alone exceed it). The
    model's 5.5 TB/s L2 figure is an assumption; this says how much hangs on it."""
    budget = target * p["predicted_gemm_s"] - p.get("predicted_serial_s", 0.0) - p.get("predicted_epilogue_s", 0.0)
    if budget <= max(p["predicted_compute_s"], p["predicted_hbm_s"]):
        return None
    return work["l2_bytes"] / budget


KERNELS = [
    "topk_encode",
    "topk_encode_split",
    "csr_matmul",
    "csr_gather_dot",
    "csr_transpose_sorted",
    "dequant_normalize",
    "capture_pack",
]


def model(records: list[dict]) -> list[dict]:
    rows = []
    for s in SHAPES:
        for kernel in KERNELS:
            cfg = launch_config(kernel, s)
            work = kernel_work(kernel, s, cfg)
            rec = compiled(records, kernel, cfg)
            occ, comp = None, None
            if rec:
                occ = occupancy(rec["registers"], cfg["num_warps"], rec["triton_shared_bytes"], DEVICES["H200-SXM"])
                comp = {k: rec[k] for k in ("registers", "spill_store_bytes", "triton_shared_bytes")}
            row = {"kernel": kernel, "shape": s.label,
                   "constexprs": {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")},
                   "num_warps": cfg["num_warps"], "num_stages": cfg.get("num_stages"), **work, "label": LABEL,
                   "compiled_sm90a": comp, "occupancy_sm90a": occ, "devices": {}}  # fmt: skip
            for name, dev in DEVICES.items():
                p = predict(work, dev)
                if kernel in TOPK:
                    p.update(gemm_floor(s, dev))
                    p["ratio_to_gemm"] = p["predicted_s"] / p["predicted_gemm_s"]
                row["devices"][name] = p
            if kernel in TOPK and s == TARGET:
                row["target_within_1_3x_of_gemm"] = {n: d["ratio_to_gemm"] <= 1.3 for n, d in row["devices"].items()}
                row["l2_Bps_needed_for_1_3x"] = {n: l2_needed(work, d, DEVICES[n]) for n, d in row["devices"].items()}
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        h = r["devices"]["H200-SXM"]
        occ = r["occupancy_sm90a"]
        out.append([r["kernel"], r["shape"], f"{r['flops'] / 1e12:.3g}", f"{r['hbm_bytes'] / 1e9:.3g}",
                    f"{r['l2_bytes'] / 1e9:.3g}", f"{occ['occupancy']:.2f}" if occ else "-",
                    f"{r['devices']['H100-SXM']['predicted_s'] * 1e3:.3g}", f"{h['predicted_s'] * 1e3:.3g}",
                    h["bound_by"],
                    f"{h['predicted_gemm_s'] * 1e3:.3g}" if "predicted_gemm_s" in h else "",
                    f"{h['ratio_to_gemm']:.2f}" if "ratio_to_gemm" in h else ""])  # fmt: skip
    return fmt_table(out, ["kernel", "shape", "TFLOP", "HBM GB", "L2 GB", "occ sm90a", "H100 ms (pred)",
                           "H200 ms (pred)", "bound", "GEMM floor H200 ms", "x GEMM H200"])  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compile-json", type=Path, default=RESULTS / "gpu_compile.json")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_model.json")
    args = ap.parse_args(argv)
    records = json.loads(args.compile_json.read_text())["records"] if args.compile_json.exists() else []
    rows = model(records)
    meta = metadata()
    meta.update({"label": LABEL, "compile_json": str(args.compile_json.name),
                 "devices": {k: vars(v) for k, v in DEVICES.items()}})  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(table(rows))
    print(f"all figures {LABEL} (roofline lower bounds, nothing ran on a GPU) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
