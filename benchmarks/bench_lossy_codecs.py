"""Lossy codec study for all-layer stores (issue 25, item 3): which per-element quantizer plus
which byte codec reaches >= 4x against raw bf16 at <= 1% relative RMS error per row, and
whether SAEs and transcoders trained on such rows match those trained on lossless rows.

Data: SmolLM2-135M-Instruct (``python:actstore.models.smollm2:load_smollm2``, fp32 on the
CPU) over Python's ``pydoc_data.topics`` (the demo's English text), captured with
``actstore.capture`` in **fp32** (so that every error is measured against what the model
computed), BOS and special rows dropped, context ``--context``:

- the table capture, ``--table-tokens`` rows of 63 hooks: every ``model.layers.*.mlp:input``
  (30), every ``model.layers.*.mlp`` output (30) and the residual stream after layers 5, 15
  and 25 (``model.layers.{5,15,25}``);
- the training capture, ``--train-tokens`` rows of ``model.layers.15.mlp:input`` and
  ``model.layers.15.mlp`` (the FVU part).

Both are cached under ``$ACTSTORE_BENCH_CACHE/lossy_codecs`` (default
``/tmp/actstore-bench-cache``): a rerun reads them back instead of running the model.

Every candidate runs on the store's own inner chunks: ``format.chunk_rows_for(d * itemsize)``
rows of the stored dtype (2048 rows for 2-byte codes at d = 576, 4096 for 1-byte codes), each
chunk encoded with a byte codec (the store's ``ChunkCodec``, so blosc + crc32c as written to
disk, or plain zstd + crc32c where said), its per-row scales as a second array of the same
chunking through the same codec (typesize 4), per-hook calibration vectors (d floats) counted
once per hook. The quantizers (numpy/torch on one thread: a study, not the kernels):

- ``bf16``: round to nearest even from fp32 (the store's lossless default; its error is bf16
  rounding); ``bf16_keepK``: bf16 with only K of its 7 mantissa bits kept (round to nearest
  even), the dropped bits zero, so byte/bit shuffle + zstd see constant low bits.
  Bound: ``|x - x_hat| <= 2^-(K+1) |x|``.
- ``int8_row`` / ``fp8_row``: today's storage dtypes (``store/quantize.py``: per-row absmax
  scale, ``absmax/127`` and ``absmax/448``). Bounds as documented there.
- ``q16_row``: the storage dtype this study led to, through actstore's own quantizer
  (``store/quantize.py``): ``uniform`` at ``c = 1/32`` with zigzag codes; ``store`` (the
  preset's byte shuffle) is the codec its arrays are written with.
- ``clt_forge``: CLT-Forge's int8 + zstd (``src/clt/training/compressed_activations_store.py``
  at 52d380e, read for this study): symmetric int8 with one absmax/127 scale per layer over the
  whole file (``per_layer_scale``), codes of ``[tokens, layers, d]`` compressed as one zstd
  frame at level 3. Modelled as one file per 4096 tokens for the 30 MLP inputs, one for the 30
  outputs and one for the 3 residual hooks. Bound: ``|x - x_hat| <= scale_layer / 2``.
- ``int8_chan_row``: per-channel prescale ``s_c`` (the channel's RMS over the hook's first
  ``CAL_ROWS`` rows: a calibration prefix, stored per hook), then today's per-row absmax int8
  on ``x / s_c``; ``x_hat = q * r_i * s_c``. Bound: ``|x - x_hat| <= r_i s_c / 2``.
- ``int8_chan``: per-channel absmax/127 from the calibration prefix only (no row factor),
  codes clipped to +-127: the bound ``s_c / 2`` fails where later rows exceed the prefix's
  absmax (reported as violations).
- ``uniform``: the error-bounded uniform quantizer, ``delta_i = c * rms(x_i)`` (fp32, the
  per-row scale), ``q = round_half_even(x / delta_i)`` as int16 (|q| <= sqrt(d)/c + 1/2, so
  no clipping for c >= 0.001 at d = 576), ``x_hat = q * delta_i``. Bound per element
  ``delta_i / 2``, so per row ``||x - x_hat|| / ||x|| <= c / 2``; expected ``c / sqrt(12)``.
  Codes stored as int16 (byte shuffle) or zigzag-mapped to uint16 (``zz``: ``2q`` for
  ``q >= 0``, ``-2q - 1`` below: small magnitudes keep high bits zero) with bit shuffle.
- ``uniform_mean``: as ``uniform`` on ``x - mu_c`` (``mu_c``: the channel mean over the
  calibration prefix, stored per hook), ``delta_i`` still ``c * rms(x_i)``: same bound.
- ``chanstd_uniform``: per-channel standardization ``z = (x - mu_c) / sigma_c`` (prefix
  statistics), then ``uniform`` on z (``delta_i = c * rms(z_i)``), ``x_hat = q delta_i
  sigma_c + mu_c``. Bound ``sigma_c delta_i / 2``.

Measured per candidate, per hook family (``mlp_input``, ``mlp_output``, ``residual``) and
pooled (``mlp_all``: the 60 MLP hooks a cross-layer transcoder reads; ``all``: the 63):
the compression ratio against raw bf16 (2 bytes per value) of everything stored (codes,
scales, calibration, crc32c); the relative RMS error per row ``||x - x_hat|| / ||x||``
against the fp32 activations (median, p99, max over rows); the largest absolute error, also
over the row's RMS; the fraction of elements outside the stated bound; single-thread encode
(fp32 rows -> stored bytes) and decode (stored bytes -> fp32 rows) throughput in GB/s of raw
bf16 bytes (noisy: 2 shared cores; the load average is recorded). For the integer quantizers
the empirical order-0 entropy of the codes (bits per value, per hook) and the entropy given
the channel: what an ideal per-element entropy coder would reach with a global or a
per-channel model (computed bounds, not codecs).

FVU parity (``--fvu``): for the reference and the chosen candidates, layer 15's rows of the
training capture are round-tripped chunk by chunk and written as an fp32 store (same token
columns, same order); actstore's trainer (``actstore.sae.train.train``) fits a TopK SAE on
``model.layers.15.mlp:input`` and a TopK transcoder ``mlp:input -> mlp`` with the same seed and
config on each; each dictionary (saved, scale folded) is then evaluated on the **fp32**
held-out rows (the trainer's own split: the last 5% of rows): the FVU the issue asks about.
The fp32 reference is trained with a second seed too, to show the seed-to-seed spread.

    python benchmarks/bench_lossy_codecs.py            # ~30-40 min on 2 shared cores (captures cached)
    python benchmarks/bench_lossy_codecs.py --quick    # smoke run, writes lossy_codecs_quick.json
    python benchmarks/bench_lossy_codecs.py --no-fvu   # the table only

Writes ``benchmarks/results/lossy_codecs.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import numcodecs  # noqa: E402
import numcodecs.blosc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from numcodecs import Zstd  # noqa: E402

import actstore  # noqa: E402
from actstore.store import quantize as Q  # noqa: E402
from actstore.store.codecs import ChunkCodec, crc32c_append, crc32c_strip  # noqa: E402
from actstore.store.format import DTYPES, chunk_rows_for  # noqa: E402
from actstore.store.quantize import unzigzag, zigzag  # noqa: E402  (q16's own, the one the store writes)

numcodecs.blosc.use_threads = False  # single-thread figures, whatever the import order

MODEL = "python:actstore.models.smollm2:load_smollm2"
N_LAYERS, D = 30, 576
RESID_LAYERS = (5, 15, 25)
TABLE_HOOKS = "model.layers.*.mlp:input,model.layers.*.mlp," + ",".join(f"model.layers.{i}" for i in RESID_LAYERS)
FVU_LAYER = 15
FVU_SRC, FVU_TGT = f"model.layers.{FVU_LAYER}.mlp:input", f"model.layers.{FVU_LAYER}.mlp"
CAL_ROWS = 512  # calibration prefix of every hook for the per-channel statistics
KLT_CAL_ROWS = 2048  # the KLT's basis needs more rows than d = 576
GOAL_RATIO, GOAL_ERR = 4.0, 0.01
CACHE = Path(os.environ.get("ACTSTORE_BENCH_CACHE", "/tmp/actstore-bench-cache")) / "lossy_codecs"


def family(hook: str) -> str:
    if hook.endswith(".mlp:input"):
        return "mlp_input"
    if hook.endswith(".mlp"):
        return "mlp_output"
    return "residual"


GROUPS = {
    "mlp_input": ("mlp_input",),
    "mlp_output": ("mlp_output",),
    "residual": ("residual",),
    "mlp_all": ("mlp_input", "mlp_output"),
    "all": ("mlp_input", "mlp_output", "residual"),
}


# -- capture (cached) ----------------------------------------------------------------------------


def cached_capture(name: str, hooks: str, tokens: int, context: int, batch_size: int) -> Path:
    """An fp32 store of ``hooks`` over ``tokens`` rows, captured once and reused."""
    path = CACHE / f"{name}_{tokens}_ctx{context}"
    try:
        if actstore.open(path).rows >= tokens:
            return path
    except Exception:  # noqa: BLE001 - absent or torn: capture again
        pass
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    from actstore.demo import english_documents
    from actstore.models.smollm2 import load_smollm2

    model, tok = load_smollm2()
    tok.model_max_length = 1 << 30  # whole documents tokenized once; capture cuts the windows
    docs = [tok(text, add_special_tokens=False)["input_ids"] for _, text in english_documents()]
    t = time.perf_counter()
    actstore.capture(
        model, hooks, docs, str(path), tokenizer=tok, tokens=tokens, context=context, batch_size=batch_size,
        drop="bos,special", dtype="fp32", codec="none", progress=False, durable=False,
    )  # fmt: skip
    print(f"captured {name}: {tokens} rows of {hooks} in {time.perf_counter() - t:.0f} s -> {path}", flush=True)
    del model
    return path


# -- byte codecs -----------------------------------------------------------------------------------


class PlainZstd:
    """One zstd frame per chunk (numcodecs.Zstd, single thread) + crc32c: zarr v3's own
    ``zstd`` codec in place of blosc; no shuffle."""

    def __init__(self, level: int):
        self.level, self.z = level, Zstd(level=level)

    def encode(self, raw: np.ndarray) -> bytes:
        return crc32c_append(self.z.encode(np.ascontiguousarray(raw).view(np.uint8).reshape(-1)))

    def decode_into(self, stored: bytes, out: np.ndarray) -> None:
        body = crc32c_strip(stored)
        out.view(np.uint8).reshape(-1)[:] = np.frombuffer(self.z.decode(body.tobytes()), dtype=np.uint8)

    def describe(self) -> str:
        return f"zstd level {self.level} (one frame per chunk, no shuffle)"


def blosc(clevel: int = 1, shuffle: str = "shuffle", cname: str = "zstd") -> ChunkCodec:
    return ChunkCodec(cname, clevel, shuffle)


CODECS = {
    "store": blosc(1, "shuffle"),  # the store's default preset, zstd
    "bitshuf": blosc(1, "bitshuffle"),
    "shuf_zstd3": blosc(2, "shuffle"),  # blosc clevel 2 runs zstd level 3 (c-blosc: 2 * clevel - 1)
    "shuf_zstd9": blosc(5, "shuffle"),  # blosc clevel 5: zstd level 9
    "bitshuf_zstd9": blosc(5, "bitshuffle"),
    "zstd3": PlainZstd(3),
    "zstd9": PlainZstd(9),
    "zstd19": PlainZstd(19),
}


def codec_with_typesize(codec, itemsize: int):
    return codec.with_typesize(itemsize) if isinstance(codec, ChunkCodec) else codec


# -- quantizers --------------------------------------------------------------------------------------


def bf16_bits(x: torch.Tensor, keep: int = 7) -> torch.Tensor:
    """fp32 -> bf16 bits (uint16 as int16 tensor) with ``keep`` of the 7 mantissa bits kept,
    round to nearest even in one step from fp32 (finite inputs)."""
    u = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    drop = 23 - keep
    lsb = (u >> drop) & 1
    u = (u + ((1 << (drop - 1)) - 1) + lsb) >> drop << drop
    return (u >> 16).to(torch.int32).to(torch.int16)  # keeps the low 16 bits (two's complement wrap)


def from_bf16_bits(b: torch.Tensor) -> torch.Tensor:
    return ((b.to(torch.int32) & 0xFFFF) << 16).view(torch.float32)


def row_rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(dim=1).sqrt()


@dataclass
class Quantizer:
    """A per-element quantizer with per-row scales and per-hook calibration vectors.

    ``quant(x, cal) -> (codes np [n, d], scales np [n] float32 | None)``;
    ``dequant(codes, scales, cal) -> x_hat torch fp32``; ``bound(x, scales, cal)`` the
    per-element error bound (torch [n, d] or [n, 1]); ``calib(x_prefix) -> dict`` of numpy
    vectors (stored per hook)."""

    name: str
    family: str
    knob: dict
    itemsize: int
    bound_text: str
    quant: object
    dequant: object
    bound: object
    calib: object = None
    codecs: tuple = ("store",)
    int_codes: bool = False  # codes are integers of modest range: entropy per channel too
    extra: dict = field(default_factory=dict)


def _bf16(keep: int, codecs) -> Quantizer:
    def quant(x, cal):
        return bf16_bits(x, keep).numpy(), None

    def dequant(codes, scales, cal):
        return from_bf16_bits(torch.from_numpy(codes))

    def bound(x, scales, cal):
        return x.abs() * 2.0 ** -(keep + 1)

    name = "bf16" if keep == 7 else f"bf16_keep{keep}"
    text = f"|e| <= 2^-{keep + 1} |x| (round to nearest even, {keep} mantissa bits)"
    return Quantizer(name, "bf16_mantissa", {"mantissa_bits": keep}, 2, text, quant, dequant, bound, None, codecs)


def _today(dtype: str, codecs) -> Quantizer:
    dt = DTYPES[dtype]

    def quant(x, cal):
        q, s = Q.quantize(x, dt)
        return q.numpy(), s.numpy()

    def dequant(codes, scales, cal):
        return Q.dequantize(torch.from_numpy(codes), torch.from_numpy(scales), dt)

    if dtype == "int8":

        def bound(x, scales, cal):
            return torch.from_numpy(scales)[:, None] / 2

        text = "|e| <= absmax_i / 254 (half a step, scale absmax_i/127)"
    elif dtype == "q16":  # actstore's own dtype (store/quantize.py): the uniform quantizer at c = 1/32, zigzag

        def bound(x, scales, cal):
            return torch.from_numpy(scales)[:, None] / 2

        text = "|e| <= rms_i / 64 (half a step, scale rms_i/32); row error <= 1/64"
    else:

        def bound(x, scales, cal):
            s = torch.from_numpy(scales)[:, None]
            return x.abs() * 2.0**-4 + s * 2.0**-10

        text = "|e| <= 2^-4 |x| + 2^-10 absmax_i/448 (e4m3, scale absmax_i/448)"
    size = DTYPES[dtype].torch_dtype.itemsize
    return Quantizer(
        f"{dtype}_row", f"{dtype}_row", {}, size, text, quant, dequant, bound, None, codecs, dtype in ("int8", "q16")
    )


def _cal_stats(x: torch.Tensor) -> dict:
    xd = x.double()
    return {
        "mean": xd.mean(0).float().numpy(),
        "std": xd.std(0).clamp_min(1e-12).float().numpy(),
        "rms": xd.pow(2).mean(0).sqrt().clamp_min(1e-12).float().numpy(),
        "absmax": xd.abs().amax(0).clamp_min(1e-12).float().numpy(),
    }


def _int8_chan_row(codecs) -> Quantizer:
    dt = DTYPES["int8"]

    def quant(x, cal):
        q, s = Q.quantize(x / torch.from_numpy(cal["rms"]), dt)
        return q.numpy(), s.numpy()

    def dequant(codes, scales, cal):
        return Q.dequantize(torch.from_numpy(codes), torch.from_numpy(scales), dt) * torch.from_numpy(cal["rms"])

    def bound(x, scales, cal):
        return torch.from_numpy(scales)[:, None] * torch.from_numpy(cal["rms"]) / 2

    text = "|e| <= r_i s_c / 2 (s_c channel RMS of the prefix, r_i = max|x_i / s| / 127)"
    return Quantizer("int8_chan_row", "int8_chan_row", {}, 1, text, quant, dequant, bound, _cal_stats, codecs, True)


def _int8_chan(codecs) -> Quantizer:
    def quant(x, cal):
        s = torch.from_numpy(cal["absmax"]) / 127
        return torch.round(x / s).clamp(-127, 127).to(torch.int8).numpy(), None

    def dequant(codes, scales, cal):
        return torch.from_numpy(codes).to(torch.float32) * (torch.from_numpy(cal["absmax"]) / 127)

    def bound(x, scales, cal):
        return (torch.from_numpy(cal["absmax"]) / 254).expand_as(x)

    text = "|e| <= s_c / 2 with s_c = prefix absmax_c / 127; clipped (bound fails) beyond the prefix's range"
    return Quantizer("int8_chan", "int8_chan", {}, 1, text, quant, dequant, bound, _cal_stats, codecs, True)


def _uniform(c: float, codecs, center: str | None = None, zz: bool = False) -> Quantizer:
    """``uniform`` (center None), ``uniform_mean`` (center "mean"), ``chanstd_uniform`` ("std")."""

    def fwd(x, cal):
        if center == "mean":
            return x - torch.from_numpy(cal["mean"])
        if center == "std":
            return (x - torch.from_numpy(cal["mean"])) / torch.from_numpy(cal["std"])
        return x

    def quant(x, cal):
        z = fwd(x, cal)
        delta = (c * row_rms(z if center == "std" else x)).to(torch.float32)
        safe = torch.where(delta > 0, delta, torch.ones_like(delta))[:, None]
        q = torch.round(z / safe).clamp(-32767, 32767).to(torch.int16)
        return (zigzag(q) if zz else q).numpy(), delta.numpy()

    def dequant(codes, scales, cal):
        q = torch.from_numpy(codes)
        q = unzigzag(q) if zz else q.to(torch.int32)
        y = q.to(torch.float32) * torch.from_numpy(scales)[:, None]
        if center == "mean":
            return y + torch.from_numpy(cal["mean"])
        if center == "std":
            return y * torch.from_numpy(cal["std"]) + torch.from_numpy(cal["mean"])
        return y

    def bound(x, scales, cal):
        b = torch.from_numpy(scales)[:, None] / 2
        return b * torch.from_numpy(cal["std"]) if center == "std" else b

    name = {None: "uniform", "mean": "uniform_mean", "std": "chanstd_uniform"}[center] + ("_zz" if zz else "")
    if center == "std":
        text = "|e| <= sigma_c delta_i / 2, delta_i = c rms(z_i), z = (x - mu_c) / sigma_c"
    else:
        text = "|e| <= delta_i / 2 = c rms(x_i) / 2, so row rel RMS error <= c / 2"
    fam = name.removesuffix("_zz")
    cal = _cal_stats if center else None
    return Quantizer(f"{name}_c{c:g}", fam, {"c": c, "zigzag": zz}, 2, text, quant, dequant, bound, cal, codecs, True)


def _klt_stats(x: torch.Tensor) -> dict:
    xd = x.double()
    mu = xd.mean(0)
    cov = (xd - mu).T @ (xd - mu) / max(1, xd.shape[0] - 1)
    _, vec = torch.linalg.eigh(cov)
    return {"mean": mu.float().numpy(), "basis": vec.flip(1).float().contiguous().numpy()}


def _klt(c: float, codecs) -> Quantizer:
    """Not per-element: a per-hook orthonormal basis V (the prefix's principal axes) turns each
    row into ``y = (x - mu) V``, quantized as ``uniform`` (same ``delta_i = c rms(x_i)``)."""

    def quant(x, cal):
        y = (x - torch.from_numpy(cal["mean"])) @ torch.from_numpy(cal["basis"])
        delta = (c * row_rms(x)).to(torch.float32)
        safe = torch.where(delta > 0, delta, torch.ones_like(delta))[:, None]
        return zigzag(torch.round(y / safe).clamp(-32767, 32767)).numpy(), delta.numpy()

    def dequant(codes, scales, cal):
        y = unzigzag(torch.from_numpy(codes)).to(torch.float32) * torch.from_numpy(scales)[:, None]
        return y @ torch.from_numpy(cal["basis"]).T + torch.from_numpy(cal["mean"])

    def bound(x, scales, cal):
        return (torch.from_numpy(scales)[:, None] * (x.shape[1] ** 0.5 / 2)).expand_as(x)

    text = "||e|| <= sqrt(d) delta_i / 2 per row (V orthonormal), so row rel RMS error <= c / 2; per element only that"
    return Quantizer(f"klt_uniform_zz_c{c:g}", "klt_uniform", {"c": c, "zigzag": True}, 2, text, quant, dequant, bound,
                     _klt_stats, codecs, True, {"calibration_rows": KLT_CAL_ROWS})  # fmt: skip


def candidates(quick: bool) -> list[Quantizer]:
    cs = [0.01, 0.035, 0.1, 0.2] if quick else [0.01, 0.02, 0.03, 0.033, 0.04, 0.05, 0.07, 0.1, 0.14, 0.2, 0.3, 0.4]
    out = [_bf16(7, ("store", "bitshuf"))]
    for k in (6, 5, 4, 3, 2):
        out.append(_bf16(k, ("store", "bitshuf")))
    out.append(_today("fp8", ("store", "bitshuf")))
    out.append(_today("int8", ("store", "bitshuf", "zstd3", "zstd9", *(() if quick else ("zstd19",)))))
    out.append(_today("q16", ("store", "bitshuf")))  # the storage dtype this study led to; "store" is its codec
    out.append(_int8_chan_row(("store", "bitshuf")))
    out.append(_int8_chan(("store", "bitshuf")))
    slow = {0.033, 0.1}  # the higher zstd levels cost minutes: two points only
    for c in cs:
        more = ("shuf_zstd3", "shuf_zstd9", "zstd3") if c in slow and not quick else ()
        out.append(_uniform(c, ("store", *more)))
        out.append(_uniform(c, ("bitshuf", *(("bitshuf_zstd9",) if c in slow and not quick else ())), zz=True))
    for c in [c for c in cs if c in (0.01, 0.033, 0.05, 0.1, 0.2)]:
        out.append(_uniform(c, ("bitshuf",), center="mean", zz=True))
        out.append(_uniform(c, ("bitshuf",), center="std", zz=True))
    for c in [c for c in cs if c in (0.02, 0.033, 0.05, 0.1, 0.2)]:
        out.append(_klt(c, ("bitshuf", "zstd3")))
    return out


# -- running one quantizer on one hook's chunks --------------------------------------------------------


def entropy_bits(codes: np.ndarray, per_channel: bool) -> float | None:
    """Empirical order-0 entropy of ``codes [n, d]`` in bits per value; with ``per_channel``
    the entropy given the column (a model per channel). None where the alphabet is too wide."""
    v = codes.astype(np.int64)
    lo, hi = int(v.min()), int(v.max())
    width = hi - lo + 1
    if per_channel:
        if width * codes.shape[1] > 1 << 24:
            return None
        idx = (v - lo) + np.arange(codes.shape[1], dtype=np.int64)[None, :] * width
        cnt = np.bincount(idx.reshape(-1), minlength=width * codes.shape[1]).reshape(codes.shape[1], width)
        tot = cnt.sum(1, keepdims=True)
        p = cnt / tot
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(cnt > 0, p * np.log2(p), 0.0).sum(1)
        return float((h * tot[:, 0]).sum() / tot.sum())
    if width > 1 << 24:
        return None
    cnt = np.bincount((v - lo).reshape(-1))
    p = cnt[cnt > 0] / v.size
    return float(-(p * np.log2(p)).sum())


class Acc:
    """Per (quantizer, codec): bytes, per-row errors and timings, per family."""

    def __init__(self):
        self.raw = {}
        self.stored = {}
        self.rel = {}
        self.maxabs = {}
        self.maxabs_rms = {}
        self.viol = {}
        self.elems = {}
        self.enc_s = 0.0
        self.dec_s = 0.0
        self.codec_enc_s = 0.0
        self.codec_dec_s = 0.0
        self.raw_total = 0
        self.cal = {}  # family -> per-hook calibration bytes (amortized: not in the ratio)
        self.entropy = {}  # family -> [(values, bits0, bits_chan)]

    def add(self, fam, raw, stored, rel, maxabs, maxabs_rms, viol, elems):
        for k, v in (("raw", raw), ("stored", stored), ("viol", viol), ("elems", elems)):
            d = getattr(self, k)
            d[fam] = d.get(fam, 0) + v
        self.rel.setdefault(fam, []).append(rel)
        self.maxabs[fam] = max(self.maxabs.get(fam, 0.0), maxabs)
        self.maxabs_rms[fam] = max(self.maxabs_rms.get(fam, 0.0), maxabs_rms)


def run_hook(qz: Quantizer, x: torch.Tensor, accs: dict, fam: str, want_entropy: bool) -> None:
    """Encode ``x`` (one hook, fp32 [n, d]) chunk by chunk with ``qz`` and each of its codecs."""
    n, d = x.shape
    cal = qz.calib(x[: qz.extra.get("calibration_rows", CAL_ROWS)]) if qz.calib else None
    cal_bytes = sum(v.nbytes for v in cal.values()) if cal else 0
    rows = chunk_rows_for(d * qz.itemsize)
    scale_codec = {k: codec_with_typesize(CODECS[k], 4) for k in qz.codecs}
    codes_codec = {k: codec_with_typesize(CODECS[k], qz.itemsize) for k in qz.codecs}
    xh = torch.empty_like(x)
    stored = dict.fromkeys(qz.codecs, 0)
    t_enc = dict.fromkeys(qz.codecs, 0.0)
    t_dec = dict.fromkeys(qz.codecs, 0.0)
    t_cenc = dict.fromkeys(qz.codecs, 0.0)  # the byte codec alone (codes + scales), no (de)quantize
    t_cdec = dict.fromkeys(qz.codecs, 0.0)
    all_codes = []
    viol = 0
    for lo in range(0, n, rows):
        xc = x[lo : lo + rows]
        t0 = time.perf_counter()
        codes, scales = qz.quant(xc, cal)
        t_q = time.perf_counter() - t0
        if want_entropy:
            all_codes.append(codes)
        first = None
        for k in qz.codecs:
            t0 = time.perf_counter()
            blob = codes_codec[k].encode(codes)
            sblob = scale_codec[k].encode(scales) if scales is not None else b""
            t_enc[k] += t_q + time.perf_counter() - t0
            t_cenc[k] += time.perf_counter() - t0
            stored[k] += len(blob) + len(sblob)
            t0 = time.perf_counter()
            back = np.empty_like(codes)
            codes_codec[k].decode_into(blob, back)
            sback = None
            if scales is not None:
                sback = np.empty_like(scales)
                scale_codec[k].decode_into(sblob, sback)
            t_cdec[k] += time.perf_counter() - t0
            out = qz.dequant(back, sback, cal)
            t_dec[k] += time.perf_counter() - t0
            if first is None:
                first = out
                xh[lo : lo + rows] = out
            elif not torch.equal(first, out):
                raise AssertionError(f"{qz.name}: codec {k} did not round-trip")
        # the bound, on this chunk's scales
        b = qz.bound(xc, scales, cal)
        err = (xh[lo : lo + rows] - xc).abs()
        tol = 1e-6 * b.abs() + 1e-30 + 2e-7 * xc.abs()  # fp32 rounding of the scale products
        viol += int((err > b + tol).sum())
    e = xh - x
    norm = x.norm(dim=1)
    rel = (e.norm(dim=1) / torch.where(norm > 0, norm, torch.ones_like(norm))).numpy()
    maxabs = float(e.abs().max())
    maxabs_rms = float((e.abs().amax(dim=1) / row_rms(x).clamp_min(1e-30)).max())
    ent = None
    if all_codes:
        codes = np.concatenate(all_codes)
        if codes.dtype == np.int16 and qz.family == "bf16_mantissa":
            codes = codes.view(np.uint16)
        # a bijection of the codes (zigzag) leaves the entropy unchanged
        ent = (codes.size, entropy_bits(codes, False), entropy_bits(codes, True) if qz.int_codes else None)
    for k in qz.codecs:
        a = accs[k]
        a.add(fam, n * d * 2, stored[k], rel, maxabs, maxabs_rms, viol, n * d)
        a.cal[fam] = a.cal.get(fam, 0) + cal_bytes
        a.enc_s += t_enc[k]
        a.dec_s += t_dec[k]
        a.codec_enc_s += t_cenc[k]
        a.codec_dec_s += t_cdec[k]
        a.raw_total += n * d * 2
        if ent is not None:
            a.entropy.setdefault(fam, []).append(ent)


def clt_forge(store, hooks: list[str], file_tokens: int = 4096) -> Acc:
    """CLT-Forge's scheme: per file ([tokens, layers, d], one per family), int8 with one absmax/127
    scale per layer over the file, one zstd level-3 frame per file (zstandard in CLT-Forge;
    numcodecs.Zstd here, the same library)."""
    acc = Acc()
    z = Zstd(level=3)
    n = store.rows
    for fam in ("mlp_input", "mlp_output", "residual"):
        hs = [h for h in hooks if family(h) == fam]
        for lo in range(0, n, file_tokens):
            xs = [store.read(h, slice(lo, min(n, lo + file_tokens))) for h in hs]
            t0 = time.perf_counter()
            scales = [float(x.abs().max()) / 127.0 for x in xs]
            q = torch.stack([torch.round(x / s).clamp(-127, 127).to(torch.int8) for x, s in zip(xs, scales)], 1)
            blob = z.encode(np.ascontiguousarray(q.numpy()))
            acc.enc_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            back = torch.from_numpy(np.frombuffer(z.decode(blob), dtype=np.int8).reshape(q.shape).copy())
            xhs = [back[:, j].to(torch.float32) * s for j, s in enumerate(scales)]
            acc.dec_s += time.perf_counter() - t0
            nbytes = len(blob) + 4 * len(hs)  # + the scales
            for x, xh, s in zip(xs, xhs, scales):
                e = xh - x
                rel = (e.norm(dim=1) / x.norm(dim=1).clamp_min(1e-30)).numpy()
                viol = int((e.abs() > s / 2 * (1 + 1e-6) + 2e-7 * x.abs()).sum())
                share = nbytes / len(hs)
                acc.add(fam, x.numel() * 2, share, rel, float(e.abs().max()),
                        float((e.abs().amax(1) / row_rms(x).clamp_min(1e-30)).max()), viol, x.numel())  # fmt: skip
                acc.raw_total += x.numel() * 2
            ent_codes = q.reshape(-1, q.shape[-1]).numpy()
            acc.entropy.setdefault(fam, []).append((ent_codes.size, entropy_bits(ent_codes, False), None))
    return acc


def summarize(acc: Acc) -> dict:
    out = {}
    for g, fams in GROUPS.items():
        fams = [f for f in fams if f in acc.raw]
        if not fams:
            continue
        raw = sum(acc.raw[f] for f in fams)
        st = sum(acc.stored[f] for f in fams)
        rel = np.concatenate([r for f in fams for r in acc.rel[f]])
        ent = [e for f in fams for e in acc.entropy.get(f, [])]
        row = {
            "ratio": raw / st,
            "calibration_bytes": sum(acc.cal.get(f, 0) for f in fams),
            "ratio_incl_calibration_at_these_rows": raw / (st + sum(acc.cal.get(f, 0) for f in fams)),
            "bits_per_value": 8 * st / (raw / 2),
            "rel_err_median": float(np.median(rel)),
            "rel_err_p99": float(np.quantile(rel, 0.99)),
            "rel_err_max": float(rel.max()),
            "rel_err_mean_sq_root": float(np.sqrt(np.mean(rel**2))),
            "max_abs_err": max(acc.maxabs[f] for f in fams),
            "max_abs_err_over_row_rms": max(acc.maxabs_rms[f] for f in fams),
            "bound_violation_frac": sum(acc.viol[f] for f in fams) / sum(acc.elems[f] for f in fams),
            "rows": int(rel.size),
        }
        if ent and all(e[1] is not None for e in ent):
            vals = sum(e[0] for e in ent)
            h0 = sum(e[0] * e[1] for e in ent) / vals
            row["entropy_bits_order0"] = h0
            row["ideal_ratio_order0"] = 16 / h0
            if all(e[2] is not None for e in ent):
                hc = sum(e[0] * e[2] for e in ent) / vals
                row["entropy_bits_per_channel"] = hc
                row["ideal_ratio_per_channel"] = 16 / hc
        out[g] = row
    out["encode_GBps"] = acc.raw_total / acc.enc_s / 1e9 if acc.enc_s else None
    out["decode_GBps"] = acc.raw_total / acc.dec_s / 1e9 if acc.dec_s else None
    out["codec_only_encode_GBps"] = acc.raw_total / acc.codec_enc_s / 1e9 if acc.codec_enc_s else None
    out["codec_only_decode_GBps"] = acc.raw_total / acc.codec_dec_s / 1e9 if acc.codec_dec_s else None
    return out


def interp_at(points: list[tuple[float, float]], x_at: float, logx: bool = True) -> float | None:
    """Linear interpolation of y at x = x_at in (log x, log y) over sorted points; None outside."""
    pts = sorted(p for p in points if p[0] > 0 and p[1] > 0)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x_at <= x1 and x1 > x0:
            t = (math.log(x_at) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    return None


def frontier(table: dict, group: str) -> dict:
    """Per quantizer family with a knob: every (knob, codec) point, and, per codec, the ratio
    at 1% p99 error and the p99 error at 4x (interpolated between measured points)."""
    fams: dict[str, dict[str, list]] = {}
    for r in table.values():
        if group not in r:
            continue
        fams.setdefault(r["family"], {}).setdefault(r["codec"], []).append(r)
    out = {}
    for fam, by_codec in fams.items():
        out[fam] = {}
        for codec, rs in by_codec.items():
            pts_err_ratio = [(x[group]["rel_err_p99"], x[group]["ratio"]) for x in rs]
            pts_ratio_err = [(x[group]["ratio"], x[group]["rel_err_p99"]) for x in rs]
            pts_ratio_med = [(x[group]["ratio"], x[group]["rel_err_median"]) for x in rs]
            at1 = [x[group]["ratio"] for x in rs if x[group]["rel_err_p99"] <= GOAL_ERR]
            out[fam][codec] = {
                "points": len(rs),
                "best_measured_ratio_at_p99_le_1pct": max(at1) if at1 else None,
                "ratio_at_p99_1pct_interpolated": interp_at(pts_err_ratio, GOAL_ERR),
                "p99_err_at_4x_interpolated": interp_at(pts_ratio_err, GOAL_RATIO),
                "median_err_at_4x_interpolated": interp_at(pts_ratio_med, GOAL_RATIO),
            }
    return out


def run_table(store_path: Path, quick: bool) -> tuple[dict, dict]:
    store = actstore.open(store_path)
    hooks = list(store.hooks)
    qzs = candidates(quick)
    accs = {q.name: {k: Acc() for k in q.codecs} for q in qzs}
    t0 = time.perf_counter()
    for i, h in enumerate(hooks):
        x = store.read(h).contiguous()
        for q in qzs:
            run_hook(q, x, accs[q.name], family(h), want_entropy=True)
        print(f"  hook {i + 1}/{len(hooks)} {h} ({time.perf_counter() - t0:.0f} s)", flush=True)
    table = {}
    for q in qzs:
        for k, a in accs[q.name].items():
            table[f"{q.name}|{k}"] = {
                "quantizer": q.name,
                "family": q.family,
                "knob": q.knob,
                "codec": k,
                "codec_desc": codec_with_typesize(CODECS[k], q.itemsize).describe(),
                "stored_itemsize": q.itemsize,
                "chunk_rows": chunk_rows_for(D * q.itemsize),
                "bound": q.bound_text,
                **summarize(a),
            }
    print("  clt_forge ...", flush=True)
    table["clt_forge|zstd3_file"] = {
        "quantizer": "clt_forge",
        "family": "clt_forge",
        "knob": {},
        "codec": "zstd3_file",
        "codec_desc": "zstd level 3, one frame per [4096 tokens, layers, d] file (CLT-Forge)",
        "stored_itemsize": 1,
        "chunk_rows": 4096,
        "bound": "|e| <= scale_layer / 2 (scale_layer = absmax over the file's rows of the layer / 127)",
        **summarize(clt_forge(store, hooks)),
    }
    return table, {"hooks": hooks, "rows_per_hook": store.rows}


# -- FVU parity -------------------------------------------------------------------------------------------


def roundtrip(qz: Quantizer | None, x: torch.Tensor) -> torch.Tensor:
    """Rows through ``qz`` chunk by chunk (store codec; the codec is lossless, so only the
    quantizer matters); None: unchanged."""
    if qz is None:
        return x
    n, d = x.shape
    cal = qz.calib(x[: qz.extra.get("calibration_rows", CAL_ROWS)]) if qz.calib else None
    rows = chunk_rows_for(d * qz.itemsize)
    out = torch.empty_like(x)
    for lo in range(0, n, rows):
        codes, scales = qz.quant(x[lo : lo + rows], cal)
        out[lo : lo + rows] = qz.dequant(codes, scales, cal)
    return out


COLS = {"token": "tokens"}  # Store.tokens() names -> SegmentWriter.append keywords


def write_store(path: Path, src, hooks: list[str], xs: dict) -> None:
    shutil.rmtree(path, ignore_errors=True)
    cols = src.tokens()
    with actstore.create(str(path), {h: xs[h].shape[1] for h in hooks}, dtype="fp32", codec="none", durable=False) as w:
        step = 8192
        for lo in range(0, src.rows, step):
            sl = slice(lo, lo + step)
            w.append({h: xs[h][sl] for h in hooks}, **{COLS.get(k, k): v[sl] for k, v in cols.items()})
        w.commit()


def eval_on(sae_dir: Path, ref, src: str, tgt: str | None, rows: slice) -> dict:
    from actstore.sae.io import load
    from actstore.sae.train import evaluate

    sae = load(sae_dir)
    x = ref.read(src, rows)
    y = ref.read(tgt, rows) if tgt else None
    bs = 4096
    batches = [(x[i : i + bs], None if y is None else y[i : i + bs]) for i in range(0, x.shape[0], bs)]
    with torch.no_grad():
        return evaluate(sae, batches)


def run_fvu(train_path: Path, variants: dict, a, scratch: Path) -> dict:
    from actstore.sae.train import TrainConfig, split, train

    ref = actstore.open(train_path)
    hooks = [FVU_SRC, FVU_TGT]
    xs = {h: ref.read(h).contiguous() for h in hooks}
    n = ref.rows
    probe = TrainConfig(store=str(train_path), arch="topk", latents=1, out="-", tokens=1, hook=FVU_SRC)
    held_all = split(probe, ref)[1]
    results = {}
    for vname, qz in variants.items():
        seeds = (0, 1) if vname == "fp32" and not a.quick else (0,)
        path = scratch / f"fvu_{vname}"
        if qz is None:
            path = train_path
            errs = {h: 0.0 for h in hooks}
        else:
            rt = {h: roundtrip(qz, xs[h]) for h in hooks}
            errs = {}
            for h in hooks:
                rel = ((rt[h] - xs[h]).norm(dim=1) / xs[h].norm(dim=1)).numpy()
                errs[h] = {"median": float(np.median(rel)), "p99": float(np.quantile(rel, 0.99))}
            write_store(path, ref, hooks, rt)
            del rt
        res = {"quantizer": None if qz is None else qz.name, "rel_err_of_training_rows": errs, "runs": {}}
        for arch in ("topk", "transcoder"):
            for seed in seeds:
                out = scratch / f"run_{vname}_{arch}_s{seed}"
                shutil.rmtree(out, ignore_errors=True)
                kw = dict(
                    store=str(path), arch=arch, latents=a.latents, k=a.k, tokens=a.fvu_tokens, out=str(out),
                    batch_size=a.fvu_batch, seed=seed, device="cpu", checkpoint_every=10**9, log_every=50,
                )  # fmt: skip
                if arch == "topk":
                    kw["hook"] = FVU_SRC
                else:
                    kw.update(source=FVU_SRC, target=FVU_TGT, activation="topk")
                cfg = TrainConfig(**kw)
                t0 = time.perf_counter()
                summ = train(cfg, progress=False)
                secs = time.perf_counter() - t0
                _, held, _ = split(cfg, ref)
                r0, r1 = held["rows"]
                ev = eval_on(out / "sae", ref, FVU_SRC, None if arch == "topk" else FVU_TGT, slice(r0, r1))
                res["runs"][f"{arch}_s{seed}"] = {
                    "fvu_on_fp32_heldout": ev["fvu"],
                    "l0_on_fp32_heldout": ev["l0"],
                    "dead_frac_on_fp32_heldout": ev["dead_frac"],
                    "fvu_on_own_heldout": summ["eval"].get("fvu"),
                    "heldout_rows": [r0, r1],
                    "steps": summ["steps"],
                    "tokens": summ["tokens"],
                    "lr": summ["lr"],
                    "seconds": secs,
                }
                print(
                    f"  {vname:>22} {arch:>10} seed {seed}: FVU on fp32 held-out {ev['fvu']:.4f} "
                    f"(own {summ['eval'].get('fvu', float('nan')):.4f}), {summ['steps']} steps, {secs:.0f} s",
                    flush=True,
                )
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
        if qz is not None:
            shutil.rmtree(path, ignore_errors=True)
        results[vname] = res
    base = results["fp32"]["runs"]
    for v in results.values():
        for k, r in v["runs"].items():
            arch = k.rsplit("_s", 1)[0]
            r["fvu_minus_fp32_seed0"] = r["fvu_on_fp32_heldout"] - base[f"{arch}_s0"]["fvu_on_fp32_heldout"]
    return {
        "rows": n,
        "heldout_rows": list(held_all["rows"]),
        "config": {
            "latents": a.latents,
            "k": a.k,
            "tokens": a.fvu_tokens,
            "batch_size": a.fvu_batch,
            "seed": 0,
            "normalize": "mean_norm (trainer default)",
            "lr": "trainer default (LR_BASE / sqrt(m / 2^14))",
            "transcoder_activation": "topk",
            "source": FVU_SRC,
            "target": FVU_TGT,
            "device": "cpu",
        },  # fmt: skip
        "variants": results,
    }


# -- main -------------------------------------------------------------------------------------------------


def pick(table: dict, group: str, rule: str) -> str | None:
    """The uniform quantizer's (knob, best codec) key: ``p99`` the largest c whose p99 error
    is <= 1%; ``4x`` the smallest c whose ratio is >= 4."""
    rows = [(k, r) for k, r in table.items() if r["family"] == "uniform" and group in r]
    best: dict[float, tuple[str, dict]] = {}
    for k, r in rows:
        c = r["knob"]["c"]
        if c not in best or r[group]["ratio"] > best[c][1][group]["ratio"]:
            best[c] = (k, r)
    if rule == "p99":
        ok = [c for c, (_, r) in best.items() if r[group]["rel_err_p99"] <= GOAL_ERR]
        return best[max(ok)][0] if ok else None
    ok = [c for c, (_, r) in best.items() if r[group]["ratio"] >= GOAL_RATIO]
    return best[min(ok)][0] if ok else None


def print_table(table: dict, group: str) -> None:
    rows = []
    for k, r in sorted(table.items(), key=lambda kv: -kv[1].get(group, {}).get("ratio", 0)):
        g = r.get(group)
        if not g:
            continue
        rows.append(
            [k, f"{g['ratio']:.2f}", f"{g['rel_err_median']:.2e}", f"{g['rel_err_p99']:.2e}",
             f"{g['max_abs_err_over_row_rms']:.3f}", f"{g['bound_violation_frac']:.1e}",
             f"{g.get('entropy_bits_order0', float('nan')):.2f}", f"{r['encode_GBps']:.2f}", f"{r['decode_GBps']:.2f}"]
        )  # fmt: skip
    print(f"\n[{group}]")
    print(C.fmt_table(rows, ["candidate|codec", "ratio", "err med", "err p99", "max|e|/rms", "viol", "H0 bits",
                             "enc GB/s", "dec GB/s"]))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table-tokens", type=int, default=4096, help="rows per hook of the table capture")
    ap.add_argument("--train-tokens", type=int, default=65536, help="rows of the FVU capture (layer 15)")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4, help="windows per forward in the captures")
    ap.add_argument("--fvu", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--latents", type=int, default=2304)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--fvu-tokens", type=int, default=163840, help="training tokens per run")
    ap.add_argument("--fvu-batch", type=int, default=2048)
    ap.add_argument("--fvu-extra", default="", help="more table keys (quantizer|codec) to train on, comma-separated")
    ap.add_argument("--quick", action="store_true", help="smoke run: small captures, short training")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.table_tokens, a.train_tokens, a.fvu_tokens, a.latents = 2048, 16384, 16384, 1152
    torch.set_num_threads(1)  # single-thread codec figures (the training sets its own threads)
    meta = C.metadata()
    meta["loadavg_1_5_15_at_start"] = [round(x, 2) for x in os.getloadavg()]
    t_all = time.perf_counter()

    table_path = cached_capture("table", TABLE_HOOKS, a.table_tokens, a.context, a.batch_size)
    print(f"table: {table_path}", flush=True)
    t0 = time.perf_counter()
    table, info = run_table(table_path, a.quick)
    table_s = time.perf_counter() - t0
    for g in ("mlp_all", "residual"):
        print_table(table, g)
    front = {g: frontier(table, g) for g in GROUPS}
    picks = {"uniform_p99_le_1pct": pick(table, "mlp_all", "p99"), "uniform_ge_4x": pick(table, "mlp_all", "4x")}
    print("picks (mlp_all):", picks, flush=True)
    meta["loadavg_1_5_15_after_table"] = [round(x, 2) for x in os.getloadavg()]

    fvu = None
    if a.fvu:
        torch.set_num_threads(os.cpu_count() or 1)
        train_path = cached_capture("train", f"{FVU_SRC},{FVU_TGT}", a.train_tokens, a.context, a.batch_size)
        by_name = {q.name: q for q in candidates(a.quick)}
        variants = {"fp32": None, "bf16": by_name["bf16"], "int8_row": by_name["int8_row"]}
        keys = [picks["uniform_p99_le_1pct"], picks["uniform_ge_4x"], *filter(None, a.fvu_extra.split(","))]
        for key in dict.fromkeys(k for k in keys if k):
            qn = key.split("|")[0]
            variants[qn] = by_name[qn]
        scratch = Path(tempfile.mkdtemp(prefix="actstore-lossy-fvu-"))
        try:
            fvu = run_fvu(train_path, variants, a, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        fvu["capture"] = str(train_path)
        meta["loadavg_1_5_15_after_fvu"] = [round(x, 2) for x in os.getloadavg()]

    gauss = {
        "bits_per_value_at_1pct": math.log2(1 / GOAL_ERR),
        "ratio_vs_bf16_at_1pct": 16 / math.log2(1 / GOAL_ERR),
        "rel_rms_err_at_4x": 2.0**-4,
        "uniform_scalar_entropy_coded_bits_at_1pct": 0.5 * math.log2(2 * math.pi * math.e / 12)
        + math.log2(1 / GOAL_ERR),
        "note": (
            "Shannon rate-distortion of an i.i.d. Gaussian source under MSE: R = log2(sigma / rms error) bits per "
            "value; an entropy-coded uniform scalar quantizer needs 0.254 bits more. Computed, not measured; the "
            "activations are not Gaussian (heavier tails lower the entropy at a given step)."
        ),
    }  # fmt: skip
    doc = {
        "meta": meta,
        "benchmark": "lossy_codecs",
        "device": "cpu",
        "model": {"spec": MODEL, "layers": N_LAYERS, "d_model": D, "dtype": "float32"},
        "settings": {
            "table_hooks": TABLE_HOOKS,
            "table_tokens": a.table_tokens,
            "context": a.context,
            "batch_size": a.batch_size,
            "drop": "bos,special",
            "capture_dtype": "fp32",
            "data": "pydoc_data.topics (english_documents), tokenized once, in the demo's order",
            "calibration_rows": CAL_ROWS,
            "threads": "1 for the codec figures (torch.set_num_threads(1), blosc use_threads False)",
            "implementation": "numpy/torch on the CPU (a study): throughputs are not kernel figures",
            "table_capture": str(table_path),
        },
        "goal": {"ratio_vs_raw_bf16": GOAL_RATIO, "rel_rms_err_per_row": GOAL_ERR, "fvu_delta": 0.005},
        "units": {
            "ratio": "raw bf16 bytes (2 per value) / everything stored (codes, per-row scales, per-hook calibration, "
            "crc32c)",
            "bits_per_value": "stored bits per activation value",
            "rel_err": "||x - x_hat|| / ||x|| per row against the fp32 capture; median / p99 / max over the rows",
            "max_abs_err_over_row_rms": "max over rows of max_j |x_j - x_hat_j| / rms(x)",
            "bound_violation_frac": "fraction of elements with |x - x_hat| above the stated bound (fp32 tolerance)",
            "entropy_bits_order0": "empirical entropy of the codes (16-bit bf16 symbols / integers) per value, "
            "pooled over the hooks of the group: an ideal order-0 coder (computed bound, not a codec)",
            "entropy_bits_per_channel": "the same given the channel (a model per column): computed bound",
            "GBps": "decimal GB/s of raw bf16 bytes, one thread, quantize + encode (fp32 in) / decode + dequantize "
            "(fp32 out), summed over every chunk; codec_only_*: the byte codec alone (codes and scales), what a "
            "GPU (de)quantize kernel would leave to the CPU",
        },  # fmt: skip
        "info": info,
        "table": table,
        "frontier": front,
        "picks_for_fvu": picks,
        "gaussian_reference": gauss,
        "fvu": fvu,
        "table_seconds": table_s,
        "wall_seconds": time.perf_counter() - t_all,
    }
    if not a.no_write:
        path = C.write_result("lossy_codecs" + ("_quick" if a.quick else ""), doc)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
