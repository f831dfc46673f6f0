"""Compile every Triton kernel for sm_80 and sm_90a on the CPU, and read ptxas's resource usage.

No GPU is needed: ``triton.compile(ASTSource(fn, signature, constexprs, attrs),
target=GPUTarget("cuda", cc, 32), options={"num_warps": w})`` runs Triton's whole pipeline to
PTX (and a cubin), and the ptxas bundled in the triton wheel, run again with ``-v`` on that
PTX with the flags Triton itself uses, prints registers per thread, spill stores/loads
(bytes) and static shared memory. Every figure is **compiled, not run**: nothing here says
how fast a kernel is.

What is compiled comes from the launchers themselves: each kernel module has a pure
``_<kernel>_config(...)`` (its constexprs and ``num_warps``) that its launcher calls, and
``launches(shape)`` below turns a shape (d, k, AuxK, dtypes) into the signature and
constexprs a launch would make. The JIT's specialisation is mirrored: pointers 16-byte
aligned, ``D`` and row strides divisible by 16 when d is (they are at every production d),
row counts not. Many shapes give the same constexprs, so configurations are deduplicated on
(kernel, constexprs, pointer dtypes, num_warps, num_stages, arch) and each is compiled once.

Sets: ``ci`` (default; every kernel at its test configuration and at one production
configuration, per arch: about a minute warm) and ``full`` (the production sweep: d up to
8192, k 16-256 and candidate widths 512/1024, AuxK 16/64/256 and d/2, bf16/fp16/fp32 and
every storage dtype; an autotuned kernel with every configuration it may pick, where the CI
set takes its first). Caches: Triton's own
(``~/.triton/cache``) holds the compilations; the ptxas ``-v`` results are kept in
``~/.cache/actstore/ptxas_v.json`` keyed by a hash of (ptxas version, arch, PTX).

Fails (exit 1) on a compile error, or on spills in a hot kernel (``HOT``) unless the
configuration is in ``KNOWN_SPILLS``, whose reasons name the figure (empty since issue 25
item 4: every hot kernel compiles spill-free). A configuration its launcher refuses on an
arch (fp8 capture below sm_89: no e4m3 conversion there) is recorded with ``unsupported``
(the launcher's one-line reason) and not compiled.

    python benchmarks/gpu_compile.py                 # the CI set -> results/gpu_compile_ci.json
    python benchmarks/gpu_compile.py --set full      # the sweep -> results/gpu_compile.json
    python benchmarks/gpu_compile.py --out PATH      # write elsewhere (the test does)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter replaces triton.jit: nothing would compile
    raise SystemExit("gpu_compile: TRITON_INTERPRET=1 is set: unset it (this script compiles for real GPUs)")

import torch
import triton
from _common import RESULTS, fmt_table, metadata  # noqa: E402  (puts the repo on sys.path)
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from actstore.kernels import (
    capture_pack,
    csr_gather_dot,
    csr_matmul,
    csr_transpose_matmul,
    dequant_normalize,
    radix_select,
    topk_encode,
    topk_encode_split,
)
from actstore.store.format import DTYPES

ARCHS = {"sm_80": 80, "sm_90a": 90}  # GPUTarget capability 90 emits sm_90a PTX
LABEL = "compiled, not run"
HOT = {"topk_encode", "topk_encode_split", "csr_matmul", "csr_gather_dot", "csr_transpose_sorted",
       "csr_transpose_atomic", "dequant_normalize", "capture_pack", "capture_row_stats"}  # fmt: skip
PTXAS_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "actstore" / "ptxas_v.json"
TORCH_TO_TRITON = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# The stored element as the kernels see it: capture writes ``DType.torch_dtype`` (fp8 as uint8
# bits); the loader hands dequant_normalize the raw bits (bf16 as int16).
CAPTURED = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "fp8": "u8", "int8": "i8", "q16": "i16"}
STORED = {"fp32": "fp32", "fp16": "fp16", "bf16": "i16", "fp8": "u8", "int8": "i8", "q16": "i16"}

# Configurations that spill, named so that nothing is hidden: (kernel, arch, predicate on the
# constexprs/dtypes, reason). None now: the fused topk_encode kernel's launcher picks its warps
# and stages per shape so that none spills, and hands k or k_aux above 256 to the split
# kernel (issue 25 item 4); any spill in a hot kernel fails the check.
KNOWN_SPILLS: list[tuple[str, str, object, str]] = []
# Configurations that do not compile today, each with the reason (checked the same way). None now:
# fp8 capture below sm_89 is refused by its launcher and recorded as "unsupported" (Launch.unsupported).
KNOWN_ERRORS: list[tuple[str, str, object, str]] = []


@dataclass(frozen=True)
class Shape:
    """What a launch's configuration depends on. ``dtype``: the SAE's / model's float dtype;
    ``store``: the storage dtype (capture and loader kernels); ``label`` names where it comes from."""

    label: str
    d: int
    k: int = 32
    k_aux: int = 0
    dtype: torch.dtype = torch.bfloat16
    store: str = "bf16"


@dataclass
class Launch:
    kernel: str
    fn: object
    ptrs: dict  # pointer argument -> Triton element type
    ints: list  # integer arguments (all i32 at these sizes)
    aligned: tuple  # integer arguments divisible by 16 at this shape
    constexprs: dict
    num_warps: int
    num_stages: int | None = None  # None: Triton's default (3)
    shapes: list = field(default_factory=list)
    # arch -> why the launcher refuses this configuration there (it is recorded, not compiled)
    unsupported: dict = field(default_factory=dict)

    def key(self, arch: str) -> str:
        fields = [self.kernel, arch, self.num_warps, self.num_stages, self.constexprs, self.ptrs, self.aligned]
        return json.dumps(fields, default=str)


def capture_pack_unsupported(spec) -> dict:
    """Per arch, why the capture launcher refuses storage ``spec`` there (fp8 below sm_89)."""
    out = {}
    for arch, cc in ARCHS.items():
        why = capture_pack._capture_pack_unsupported(spec, divmod(cc, 10))
        if why:
            out[arch] = why
    return out


def _cfg(cfg: dict) -> tuple[dict, int]:
    cfg = dict(cfg)
    return cfg, cfg.pop("num_warps")


def launches(s: Shape, every_config: bool = True) -> list[Launch]:
    """The launches each launcher makes at shape ``s``, from its pure config function. An
    autotuned kernel (topk_encode_split) contributes every configuration it may pick, or
    with ``every_config=False`` (the CI set) the first, the one it runs off CUDA."""
    dt = TORCH_TO_TRITON[s.dtype]
    al = ("D", "stride_x", "stride_w", "stride_g") if s.d % 16 == 0 else ()
    out = []
    fused = topk_encode._topk_encode_config(s.d, s.k, s.k_aux, s.dtype)
    if fused is not None:  # None: the launcher hands the shape to the split kernel (below)
        cfg, w = _cfg(fused)
        st = cfg.pop("num_stages")
        ptrs = dict(x_ptr=dt, w_ptr=dt, b_ptr="fp32", val_ptr="fp32", idx_ptr="i64",
                    dead_ptr="i8" if s.k_aux else "fp32", aval_ptr="fp32", aidx_ptr="i64")  # fmt: skip
        out.append(Launch("topk_encode", topk_encode._topk_encode_fwd_kernel, ptrs,
                          ["N", "D", "M", "stride_x", "stride_w"], al, cfg, w, st))  # fmt: skip
    # The split encoder: every autotune configuration of the dtype, in each mode a launch
    # makes (the dense sample / fallback, the threshold epilogue with and without AuxK).
    split = topk_encode_split
    ptrs = dict(x_ptr=dt, w_ptr=dt, b_ptr="fp32", thr_ptr="fp32", athr_ptr="fp32", dead_ptr="i8", cnt_ptr="i32",
                cval_ptr="fp32", ccol_ptr="i32", acnt_ptr="i32", aval_ptr="fp32", acol_ptr="i32")  # fmt: skip
    for dense, aux in ((True, False), (False, False)) + (((False, True),) if s.k_aux else ()):
        configs = split._split_configs(s.dtype, aligned=bool(al))
        for c in configs if every_config else configs[:1]:
            cfg = {**split.split_flags(s.dtype, dense, aux), **c}
            w, st = cfg.pop("num_warps"), cfg.pop("num_stages")
            ints = ["N", "D", "M0", "M", "CAP", "ACAP", "stride_x", "stride_w"]
            out.append(Launch("topk_encode_split", split._topk_encode_split_kernel, ptrs, ints, al, cfg, w, st))
    spec = DTYPES[s.store]
    # Capture: pass 1 (row statistics), pass 2 (element-wise pack); scale_ptr is the moments buffer when unscaled.
    cfg, w = _cfg(capture_pack._capture_row_stats_config(s.d, spec))
    ptrs = dict(x_ptr=dt, keep_ptr="i8", dst_ptr="i64", scale_ptr="fp32", bad_ptr="i8", norm_ptr="fp32")
    out.append(Launch("capture_row_stats", capture_pack._capture_row_stats_kernel, ptrs, ["stride_x", "N", "D"], al,
                      cfg, w))  # fmt: skip
    cfg, w = _cfg(capture_pack._capture_pack_config(s.d, spec))
    ptrs = dict(x_ptr=dt, keep_ptr="i8", dst_ptr="i64", shift_ptr="fp32", out_ptr=CAPTURED[s.store],
                scale_ptr="fp32", bad_ptr="i8", s1_ptr="fp32", s2_ptr="fp32")  # fmt: skip
    ints = ["stride_x", "N", "D", "ROWS_PER_PROG"]
    out.append(Launch("capture_pack", capture_pack._capture_pack_fwd_kernel, ptrs, ints, al, cfg, w,
                      unsupported=capture_pack_unsupported(spec)))  # fmt: skip
    # The loader: scale when the storage is scaled, shift and mul (normalisation) on, out in the model dtype.
    cfg, w = _cfg(dequant_normalize._dequant_normalize_config(s.d, spec, spec.scaled, True, True))
    x = STORED[s.store]
    ptrs = dict(x_ptr=x, scale_ptr="fp32" if spec.scaled else x, shift_ptr="fp32", mul_ptr="fp32", out_ptr=dt)
    out.append(Launch("dequant_normalize", dequant_normalize._dequant_normalize_fwd_kernel, ptrs,
                      ["stride_x", "N", "D"], al, cfg, w))  # fmt: skip
    # Sparse kernels: latent values and gradients float32 (what the ops pass), weights in the SAE dtype.
    cfg, w = _cfg(csr_matmul._csr_matmul_config(s.d))
    ptrs = dict(row_ptr="i64", col_ptr="i64", val_ptr="fp32", w_ptr=dt, out_ptr="fp32")
    out.append(Launch("csr_matmul", csr_matmul._csr_matmul_fwd_kernel, ptrs, ["D", "stride_w"], al, cfg, w))
    cfg, w = _cfg(csr_gather_dot._csr_gather_dot_config(s.d))
    ptrs = dict(row_ptr="i64", col_ptr="i64", g_ptr="fp32", w_ptr=dt, out_ptr="fp32")
    out.append(Launch("csr_gather_dot", csr_gather_dot._csr_gather_dot_fwd_kernel, ptrs,
                      ["NNZ", "D", "stride_g", "stride_w"], al, cfg, w))  # fmt: skip
    for method, fn in (("sorted", csr_transpose_matmul._csr_transpose_matmul_sorted_kernel),
                       ("atomic", csr_transpose_matmul._csr_transpose_matmul_atomic_kernel)):  # fmt: skip
        # X is the reconstruction gradient (float32) for W_dec, x (model dtype, shifted) for W_enc.
        for xdt, shift in (("fp32", False), (dt, True)):
            cfg, w = _cfg(csr_transpose_matmul._csr_transpose_matmul_config(s.d, method, shift))
            first = ("col_ptr", "row_ptr") if method == "sorted" else ("row_ptr", "col_ptr")
            ptrs = {first[0]: "i64", first[1]: "i64", "val_ptr": "fp32", "x_ptr": xdt,
                    "shift_ptr": "fp32" if shift else xdt, "gw_ptr": "fp32", "gb_ptr": "fp32"}  # fmt: skip
            ints = ["D", "stride_x"] if method == "sorted" else ["NNZ", "D", "stride_x"]
            out.append(Launch(f"csr_transpose_{method}", fn, ptrs, ints, al, cfg, w))
    for shift in radix_select.RADIX_SHIFTS:
        cfg, w = _cfg(radix_select._radix_select_config(shift))
        ptrs = dict(val_ptr="fp32", prefix_ptr="i64", hist_ptr="i32")
        out.append(Launch("radix_select", radix_select._radix_histogram_kernel, ptrs, ["N"], (), cfg, w))
    return out


# Shapes of the tests (tests/ops: small d, k=8, AuxK 6, fp32/fp16 as the interpreter needs).
TEST_SHAPES = [
    Shape("test", d=32, k=8, dtype=torch.float32, store="fp32"),
    Shape("test-auxk", d=32, k=8, k_aux=6, dtype=torch.float32, store="int8"),
    Shape("test-fp16", d=24, k=8, dtype=torch.float16, store="fp16"),
    Shape("test-fp8", d=48, k=2, dtype=torch.float32, store="fp8"),
    Shape("test-q16", d=48, k=8, dtype=torch.float32, store="q16"),
    # float32 rows whose width is no multiple of 16: unvectorised loads (the split kernel's
    # 128-row tile spilled here, found when this shape was added).
    Shape("test-unaligned-fp32", d=40, k=8, dtype=torch.float32, store="fp32"),
]
# One production configuration per kernel in CI: the target shape (n=8192, d=4096,
# m=131072, k=32, bf16; m and n are runtime arguments, so they change no configuration).
CI_PRODUCTION = [Shape("prod-d4096-k32-bf16", d=4096, k=32, dtype=torch.bfloat16, store="bf16")]


def full_shapes() -> list[Shape]:
    """The production sweep: d up to 8192, k 16-256 and the threshold ops' candidate widths
    (``cand_k`` up to ``DENSE_CAND_K`` = 1024), with and without AuxK (k_aux 16, 64, 256 and
    the SAE default d/2), three float dtypes, six storage dtypes. The fused topk_encode
    kernel runs where k and k_aux are at most 256 (``FUSED_MAX_K``); its launcher hands the
    rest (k 512/1024, k_aux = d/2 >= 384) to the split kernel, so those shapes add split
    launches only."""
    out = []
    for d in (768, 2048, 4096, 8192):
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            store = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
            for k in (16, 32, 64, 128, 256):
                for ka in (0, 16, 64, 256, d // 2):
                    out.append(Shape(f"prod-d{d}-k{k}-ka{ka}-{store}", d, k, ka, dtype, store))
            for k in (512, 1024):  # threshold-op candidates (relu=False, no AuxK)
                out.append(Shape(f"prod-d{d}-cand{k}-{store}", d, k, 0, dtype, store))
            for store in ("fp8", "int8", "q16"):
                out.append(Shape(f"prod-d{d}-{store}", d, 32, 0, dtype, store))
    # A width that is no multiple of 16 (unvectorised loads): the TopK encoders' own configurations.
    for dtype, store in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
        for k, ka in ((16, 0), (32, 256), (128, 256), (256, 0)):
            out.append(Shape(f"prod-d1000-k{k}-ka{ka}-{store}", 1000, k, ka, dtype, store))
    return out


def collect(shapes: list[Shape], every_config: bool = True) -> dict[str, Launch]:
    """Deduplicated launches over ``shapes`` (each keeps the shape labels that map to it)."""
    seen: dict[str, Launch] = {}
    for s in shapes:
        for lc in launches(s, every_config):
            k = lc.key("")
            if k not in seen:
                seen[k] = lc
            if s.label not in seen[k].shapes:
                seen[k].shapes.append(s.label)
    return seen


def ptxas_usage(ptx: str, arch: str, cache: dict) -> dict:
    """Registers, spills and static shared memory of ``ptx`` from ``ptxas -v`` (cached by a
    hash of ptxas version, arch and PTX)."""
    cc = ARCHS[arch]
    ptxas = get_ptxas(cc).path
    version = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    key = hashlib.sha256(f"{version}\0{arch}\0{ptx}".encode()).hexdigest()
    if key in cache:
        return cache[key]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        # Triton's own flags (triton/backends/nvidia/compiler.py make_cubin), so the figures are its cubin's.
        cmd = [ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}", str(src), "-o", str(src) + ".o"]
        r = subprocess.run(cmd, capture_output=True, text=True)
    log = r.stdout + r.stderr
    if r.returncode != 0:
        raise RuntimeError(f"ptxas failed for {arch}: {log.strip()[-400:]}")
    m = re.search(r"Used (\d+) registers", log)
    st = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    sm = re.search(r"(\d+) bytes smem", log)
    res = {
        "registers": int(m.group(1)) if m else None,
        "spill_store_bytes": int(st.group(1)) if st else 0,
        "spill_load_bytes": int(st.group(2)) if st else 0,
        "static_smem_bytes": int(sm.group(1)) if sm else 0,
        "ptxas_version": version,
    }
    cache[key] = res
    return res


def compile_one(lc: Launch, arch: str) -> tuple[str, dict]:
    """Compile ``lc`` for ``arch``; returns (PTX, record)."""
    fn = lc.fn
    sig = {a: ("*" + lc.ptrs[a] if a in lc.ptrs else "i32") for a in fn.arg_names if a not in lc.constexprs}
    sig.update({a: "constexpr" for a in lc.constexprs})
    missing = [a for a in sig if a not in lc.ptrs and a not in lc.ints and a not in lc.constexprs]
    if missing:
        raise RuntimeError(f"{lc.kernel}: arguments {missing} have no type: update launches() in gpu_compile.py")
    div16 = [["tt.divisibility", 16]]
    attrs = {(fn.arg_names.index(a),): div16 for a in lc.ptrs}
    attrs.update({(fn.arg_names.index(a),): div16 for a in lc.aligned if a in lc.ints})
    t = time.perf_counter()
    opts = {"num_warps": lc.num_warps, **({"num_stages": lc.num_stages} if lc.num_stages else {})}
    ck = triton.compile(ASTSource(fn, sig, lc.constexprs, attrs), target=GPUTarget("cuda", ARCHS[arch], 32),
                        options=opts)  # fmt: skip
    return ck.asm["ptx"], {
        "compile_s": round(time.perf_counter() - t, 3),
        "num_warps": ck.metadata.num_warps,
        "num_stages": ck.metadata.num_stages,
        "triton_shared_bytes": ck.metadata.shared,  # Triton's allocation (dynamic smem at launch)
    }


def _known(table: list, kernel: str, arch: str, rec: dict) -> str | None:
    """The reason of the first ``table`` entry that matches this record, or None."""
    for k, a, pred, reason in table:
        if k == kernel and a in (arch, "*") and pred(rec):
            return reason
    return None


def run(shapes: list[Shape], verbose: bool = True, every_config: bool = True) -> dict:
    cache = json.loads(PTXAS_CACHE.read_text()) if PTXAS_CACHE.exists() else {}
    records, failures = [], []
    launches_ = collect(shapes, every_config)
    t0 = time.perf_counter()
    for arch in ARCHS:
        for lc in launches_.values():
            rec = {"kernel": lc.kernel, "function": lc.fn.__name__, "arch": arch, "num_warps": lc.num_warps,
                   "num_stages": lc.num_stages,
                   "constexprs": lc.constexprs, "pointer_dtypes": lc.ptrs, "divisible_by_16": list(lc.aligned),
                   "shapes": lc.shapes, "hot": lc.kernel in HOT, "label": LABEL}  # fmt: skip
            if arch in lc.unsupported:  # the launcher refuses it there with this one-line error
                rec["unsupported"] = lc.unsupported[arch]
                records.append(rec)
                if verbose:
                    print(f"{arch:7s} {lc.kernel:22s} unsupported: {rec['unsupported']}", flush=True)
                continue
            try:
                ptx, info = compile_one(lc, arch)
                rec.update(info)
                rec.update(ptxas_usage(ptx, arch, cache))
            except Exception as e:  # noqa: BLE001  (any compile error is a finding, reported per configuration)
                rec["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}"
                rec["known_error"] = _known(KNOWN_ERRORS, lc.kernel, arch, rec)
                if rec["known_error"] is None:
                    failures.append(f"{lc.kernel} {arch} {lc.constexprs}: compile error: {rec['error']}")
            spills = rec.get("spill_store_bytes", 0) + rec.get("spill_load_bytes", 0)
            if spills and lc.kernel in HOT:
                reason = _known(KNOWN_SPILLS, lc.kernel, arch, rec)
                rec["known_spill"] = reason
                if reason is None:
                    failures.append(
                        f"{lc.kernel} {arch} {lc.constexprs} {lc.ptrs}: spills {rec['spill_store_bytes']} B stores"
                        f" / {rec['spill_load_bytes']} B loads in a hot kernel: fix it or add a KNOWN_SPILLS entry"
                    )
            records.append(rec)
            if verbose:
                regs, smem, el = rec.get("registers"), rec.get("triton_shared_bytes"), time.perf_counter() - t0
                print(f"{arch:7s} {lc.kernel:22s} regs={regs} spill={spills} smem={smem} {el:6.1f}s", flush=True)
    PTXAS_CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = PTXAS_CACHE.with_suffix(f".tmp-{os.getpid()}")  # per process: test workers may write it at once
    tmp.write_text(json.dumps(cache))
    os.replace(tmp, PTXAS_CACHE)
    return {"records": records, "failures": failures, "wall_s": round(time.perf_counter() - t0, 1)}


def table(records: list[dict], arch: str = "sm_90a") -> str:
    """Per kernel at ``arch``: configurations, registers (min-max), most spill bytes, most smem."""
    rows = []
    for k in dict.fromkeys(r["kernel"] for r in records):
        rs = [r for r in records if r["kernel"] == k and r["arch"] == arch and "registers" in r]
        if not rs:
            continue
        regs = sorted(r["registers"] for r in rs)
        spill = max(r["spill_store_bytes"] + r["spill_load_bytes"] for r in rs)
        rows.append([k, len(rs), f"{regs[0]}-{regs[-1]}", spill, max(r["triton_shared_bytes"] for r in rs)])
    return fmt_table(rows, ["kernel", "configs", "registers", "max spill B", "max smem B"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", choices=("ci", "full"), default="ci")
    ap.add_argument("--out", type=Path, help="result path (default: results/gpu_compile[_ci].json)")
    args = ap.parse_args(argv)
    shapes = TEST_SHAPES + (CI_PRODUCTION if args.set == "ci" else full_shapes())
    meta = metadata()  # before the compile run (its wall_s): the load and the commit at the start
    res = run(shapes, every_config=args.set == "full")
    ptxas = {a: subprocess.run([get_ptxas(c).path, "--version"], capture_output=True, text=True).stdout.split("\n")[-2]
             for a, c in ARCHS.items()}  # fmt: skip
    meta.update({"label": LABEL, "set": args.set, "triton": triton.__version__, "ptxas": ptxas,
                 "wall_s": res["wall_s"]})  # fmt: skip
    doc = {"meta": meta, "failures": res["failures"], "records": res["records"]}
    out = args.out or RESULTS / ("gpu_compile.json" if args.set == "full" else "gpu_compile_ci.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(table(res["records"]))
    print(f"{len(res['records'])} configurations ({LABEL}) in {res['wall_s']} s -> {out}")
    for f in res["failures"]:
        print("FAIL", f, file=sys.stderr)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
