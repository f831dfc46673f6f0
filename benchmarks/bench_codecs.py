"""Codec benchmark on real bf16 activations (all-MiniLM-L6-v2, layers 1, 3, 5).

    python benchmarks/bench_codecs.py [--quick] [--repeats N]

For every lossless codec: compression ratio and single-thread encode / decode throughput
(GB/s of uncompressed bytes, decimal GB) on the store's own inner chunks (2048 rows x 384
bf16 = 1.5 MiB, what ``format.chunk_rows_for`` picks for a ~2 MiB target). For the lossy
fp8 e4m3 / int8 per-row options: size against bf16 and the error against the fp32
activations. Then every preset through the real store (``Store.info()``). Results go to
benchmarks/results/codecs.json (or codecs_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import numcodecs  # noqa: E402
import numcodecs.blosc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from numcodecs import Blosc, Zstd  # noqa: E402

import actstore  # noqa: E402
from actstore.store import quantize as Q  # noqa: E402
from actstore.store.codecs import PRESETS, ChunkCodec  # noqa: E402
from actstore.store.format import chunk_rows_for  # noqa: E402

# actstore sets this on import (each call gets its own blosc context, one thread); set it
# again so that the single-thread figures do not depend on import order.
numcodecs.blosc.use_threads = False

TARGET_LOSSLESS_RATIO = 1.40  # the target for lossless bf16
MiB = 1 << 20


class _None:
    """Uncompressed: encode is a copy to bytes, decode a copy into the output."""

    def encode(self, a):
        return a.tobytes()

    def decode(self, buf, out):
        out.view(np.uint8).reshape(-1)[:] = np.frombuffer(buf, dtype=np.uint8)
        return out


class _Chunk:
    """A store preset exactly as the store runs it: ChunkCodec (codec + crc32c + checks)."""

    def __init__(self, cc: ChunkCodec):
        self.cc = cc

    def encode(self, a):
        return self.cc.encode(a)

    def decode(self, buf, out):
        self.cc.decode_into(buf, out)
        return out


def lossless_codecs() -> list[dict]:
    bl = lambda cname, clevel, shuf, bs: Blosc(cname, clevel, shuf, blocksize=bs, typesize=2)  # noqa: E731
    return [
        {
            "name": "blosc-zstd1-shuffle-1MiB",
            "preset": "zstd",
            "description": "Blosc zstd clevel 1, byte shuffle, typesize 2, blocksize 1 MiB (actstore default "
            "preset 'zstd')",
            "codec": bl("zstd", 1, Blosc.SHUFFLE, MiB),
        },
        {
            "name": "blosc-zstd1-bitshuffle-1MiB",
            "preset": None,
            "description": "Blosc zstd clevel 1, bit shuffle, blocksize 1 MiB",
            "codec": bl("zstd", 1, Blosc.BITSHUFFLE, MiB),
        },
        {
            "name": "blosc-lz4-1-bitshuffle-1MiB",
            "preset": "lz4",
            "description": "Blosc lz4 clevel 1, bit shuffle, blocksize 1 MiB (actstore preset 'lz4')",
            "codec": bl("lz4", 1, Blosc.BITSHUFFLE, MiB),
        },
        {
            "name": "blosc-lz4-5-bitshuffle-1MiB",
            "preset": None,
            "description": "Blosc lz4 clevel 5, bit shuffle, blocksize 1 MiB",
            "codec": bl("lz4", 5, Blosc.BITSHUFFLE, MiB),
        },
        {
            "name": "blosc-zstd1-shuffle-autoblock",
            "preset": None,
            "description": "Blosc zstd clevel 1, byte shuffle, blosc's automatic (default) blocksize",
            "codec": bl("zstd", 1, Blosc.SHUFFLE, 0),
        },
        {
            "name": "zstd-1",
            "preset": None,
            "description": "plain zstd level 1 (numcodecs.Zstd), no shuffle",
            "codec": Zstd(level=1),
        },
        {"name": "none", "preset": "none", "description": "no compression (a memory copy each way)", "codec": _None()},
        # The presets as the store runs them, with the crc32c that every stored chunk carries.
        {
            "name": "store-preset-zstd",
            "preset": "zstd",
            "description": "ChunkCodec preset 'zstd' (+crc32c, header checks)",
            "codec": _Chunk(PRESETS["zstd"]),
        },
        {
            "name": "store-preset-lz4",
            "preset": "lz4",
            "description": "ChunkCodec preset 'lz4' (+crc32c, header checks)",
            "codec": _Chunk(PRESETS["lz4"]),
        },
        {
            "name": "store-preset-none",
            "preset": "none",
            "description": "ChunkCodec preset 'none' (crc32c + copy)",
            "codec": _Chunk(PRESETS["none"]),
        },
    ]


def blosc_header(buf) -> dict | None:
    b = np.frombuffer(memoryview(buf)[:16], dtype=np.uint8)
    if len(b) < 16 or b[0] not in (1, 2):
        return None
    nbytes, blocksize, cbytes = np.frombuffer(b[4:16].tobytes(), dtype="<u4")
    return {"typesize": int(b[3]), "blocksize_bytes": int(blocksize), "flags": int(b[2])}


# --- lossless ---------------------------------------------------------------------------


def bench_lossless(bf16: dict[str, np.ndarray], chunk_rows: int, max_chunks: int | None, repeats: int) -> list[dict]:
    specs = lossless_codecs()
    chunks = {h: C.chunks_of(a, chunk_rows, max_chunks) for h, a in bf16.items()}
    results = []
    variants, encoded = {}, {}
    outs = {h: np.empty((chunk_rows, a.shape[1]), dtype=np.uint16) for h, a in bf16.items()}
    for spec in specs:
        codec = spec["codec"]
        for h, cs in chunks.items():
            enc = [codec.encode(c) for c in cs]
            encoded[spec["name"], h] = enc
            for c, e in zip(cs, enc):  # round trip, once, untimed
                out = np.empty_like(c)
                codec.decode(e, out)
                if not np.array_equal(out, c):
                    raise SystemExit(f"{spec['name']}: round trip differs on {h}")

            def enc_fn(codec=codec, cs=cs):
                for c in cs:
                    codec.encode(c)

            def dec_fn(codec=codec, enc=enc, out=outs[h]):
                for e in enc:  # numcodecs' decode(buf, out) and ours take out positionally
                    codec.decode(e, out)

            variants[f"{spec['name']}|{h}|encode"] = enc_fn
            variants[f"{spec['name']}|{h}|decode"] = dec_fn
    print(f"timing {len(variants)} codec x layer x direction variants, {repeats} interleaved repeats ...", flush=True)
    times = C.interleaved(variants, repeats)
    for spec in specs:
        per_layer = {}
        raw_total = enc_total = 0
        t_enc = t_dec = 0.0
        for h, cs in chunks.items():
            raw = sum(c.nbytes for c in cs)
            comp = sum(len(e) for e in encoded[spec["name"], h])
            te = statistics.median(times[f"{spec['name']}|{h}|encode"])
            td = statistics.median(times[f"{spec['name']}|{h}|decode"])
            per_layer[h] = {
                "chunks": len(cs),
                "raw_bytes": raw,
                "compressed_bytes": comp,
                "ratio_x": raw / comp,
                "encode_GBps": C.gbps(raw, te),
                "decode_GBps": C.gbps(raw, td),
                "encode_s": C.summary(times[f"{spec['name']}|{h}|encode"]),
                "decode_s": C.summary(times[f"{spec['name']}|{h}|decode"]),
            }
            raw_total += raw
            enc_total += comp
            t_enc += te
            t_dec += td
        first = encoded[spec["name"], next(iter(chunks))][0]
        hdr = (
            blosc_header(first if not isinstance(spec["codec"], _Chunk) else first[:-4])
            if isinstance(spec["codec"], (Blosc, _Chunk))
            else None
        )
        results.append(
            {
                "name": spec["name"],
                "description": spec["description"],
                "preset": spec["preset"],
                "config": spec["codec"].get_config()
                if hasattr(spec["codec"], "get_config")
                else (repr(spec["codec"].cc) if isinstance(spec["codec"], _Chunk) else "none"),
                "blosc_header": hdr,
                "raw_bytes": raw_total,
                "compressed_bytes": enc_total,
                "ratio_x": raw_total / enc_total,
                "encode_GBps": C.gbps(raw_total, t_enc),
                "decode_GBps": C.gbps(raw_total, t_dec),
                "per_layer": per_layer,
            }
        )
    return results


# --- lossy ------------------------------------------------------------------------------


def _errors(x: torch.Tensor, xh: torch.Tensor) -> dict:
    x64, e = x.double(), (xh.double() - x.double())
    err2 = float((e**2).sum())
    tot2 = float((x64**2).sum())
    cen2 = float(((x64 - x64.mean(0)) ** 2).sum())
    row_rel = e.norm(dim=1) / x64.norm(dim=1).clamp_min(1e-30)
    return {
        "rel_error": (err2 / tot2) ** 0.5,  # ||x - x_hat||_F / ||x||_F
        "median_row_rel_error": float(row_rel.median()),
        "noise_frac_of_second_moment": err2 / tot2,  # ||e||^2 / ||x||^2 (= rel_error^2)
        "noise_frac_of_variance": err2 / cen2,  # ||e||^2 / sum ||x - mean||^2: compare with SAE FVU
        "max_abs_error": float(e.abs().max()),
    }


def bench_lossy(fp32: dict[str, np.ndarray], max_rows: int | None) -> list[dict]:
    """fp8 e4m3 / int8 with a per-row absmax scale (actstore.reference.quantize), and bf16 as
    the reference. Sizes: the stored bytes (values + float32 scale per row), raw and after the
    store's default codec, each compared with bf16."""
    zstd = PRESETS["zstd"]
    out = []
    bf16_comp_by_hook: dict[str, int] = {}  # filled by the first (bf16) pass
    for kind in ("bf16", "fp8", "int8"):
        per_layer = {}
        tot = {"n": 0, "raw": 0, "comp": 0, "bf16_raw": 0, "bf16_comp": 0, "err2": 0.0, "x2": 0.0, "c2": 0.0}
        for h, a in fp32.items():
            x = torch.from_numpy(np.array(a[:max_rows] if max_rows else a))
            n, d = x.shape
            if kind == "bf16":
                xh = x.to(torch.bfloat16).float()
                vals, scale = xh.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16), None
            elif kind == "fp8":
                q, scale = Q.quantize_fp8(x)
                xh = Q.dequantize_fp8(q, scale)
                vals, scale = q.numpy(), scale.numpy()
            else:
                q, scale = Q.quantize_int8(x)
                xh = Q.dequantize_int8(q, scale)
                vals, scale = q.numpy(), scale.numpy()
            raw = vals.nbytes + (scale.nbytes if scale is not None else 0)
            # Compress as the store does: values in ~2 MiB-target chunks (typesize = itemsize),
            # the scale column in chunks of one shard of rows (typesize 4).
            cr = chunk_rows_for(d * vals.itemsize)
            cc = zstd.with_typesize(vals.itemsize)
            comp = sum(len(cc.encode(vals[i : i + cr])) for i in range(0, n, cr))
            if scale is not None:
                sc = zstd.with_typesize(4)
                comp += sum(len(sc.encode(scale[i : i + 131072])) for i in range(0, n, 131072))
            bf16_raw = n * d * 2
            if kind == "bf16":
                bf16_comp_by_hook[h] = comp
            bf16_comp = bf16_comp_by_hook[h]
            e = _errors(x, xh)
            per_layer[h] = {
                "rows": n,
                "stored_bytes": raw,
                "compressed_bytes": comp,
                "ratio_vs_bf16_raw_x": bf16_raw / raw,
                "ratio_vs_bf16_raw_after_zstd_preset_x": bf16_raw / comp,
                "ratio_vs_bf16_zstd_preset_x": bf16_comp / comp,
                **e,
            }
            x64, err = x.double(), (xh.double() - x.double())
            tot["n"] += n
            tot["raw"] += raw
            tot["comp"] += comp
            tot["bf16_raw"] += bf16_raw
            tot["bf16_comp"] += bf16_comp
            tot["err2"] += float((err**2).sum())
            tot["x2"] += float((x64**2).sum())
            tot["c2"] += float(((x64 - x64.mean(0)) ** 2).sum())
        out.append(
            {
                "name": kind,
                "description": {
                    "bf16": "bf16 round to nearest even (the lossless-for-bf16-models default; reference)",
                    "fp8": "fp8 e4m3fn with a per-row absmax/448 float32 scale",
                    "int8": "int8 with a per-row absmax/127 float32 scale",
                }[kind],
                "ratio_vs_bf16_raw_x": tot["bf16_raw"] / tot["raw"],
                "ratio_vs_bf16_raw_after_zstd_preset_x": tot["bf16_raw"] / tot["comp"],
                "ratio_vs_bf16_zstd_preset_x": tot["bf16_comp"] / tot["comp"],
                "rel_error": (tot["err2"] / tot["x2"]) ** 0.5,
                "noise_frac_of_second_moment": tot["err2"] / tot["x2"],
                "noise_frac_of_variance": tot["err2"] / tot["c2"],
                "per_layer": per_layer,
            }
        )
    return out


# --- through the real store -------------------------------------------------------------


def bench_store(fp32: dict[str, np.ndarray], bf16: dict[str, np.ndarray], max_rows: int | None) -> list[dict]:
    combos = [("bf16", "zstd"), ("bf16", "lz4"), ("bf16", "none"), ("fp8", "zstd"), ("int8", "zstd")]
    hooks = {h: a.shape[1] for h, a in fp32.items()}
    n = min(a.shape[0] for a in fp32.values())
    if max_rows:
        n = min(n, max_rows)
    out = []
    tmp = Path(tempfile.mkdtemp(prefix="actstore-bench-codecs-"))
    try:
        for dtype, codec in combos:
            path = tmp / f"{dtype}-{codec}"
            with actstore.create(path, hooks, dtype=dtype, codec=codec, segment="r0", durable=False) as w:
                for lo in range(0, n, 4096):
                    w.append({h: torch.from_numpy(np.array(a[lo : min(n, lo + 4096)])) for h, a in fp32.items()})
            with actstore.open(path) as s:
                info = s.info()
                check = {}
                for h in hooks:
                    got = s.read(
                        h, rows=slice(0, min(n, 20000)), dtype=torch.bfloat16 if dtype == "bf16" else torch.float32
                    )
                    if dtype == "bf16":
                        check[h] = bool(
                            np.array_equal(got.view(torch.int16).numpy().view(np.uint16), bf16[h][: got.shape[0]])
                        )
                    else:
                        x = torch.from_numpy(np.array(fp32[h][: got.shape[0]]))
                        qf, dq = (
                            (Q.quantize_fp8, Q.dequantize_fp8)
                            if dtype == "fp8"
                            else (Q.quantize_int8, Q.dequantize_int8)
                        )
                        check[h] = bool(torch.equal(dq(*qf(x)), got))
            per_hook = {}
            for h, hi in info["hooks"].items():
                per_hook[h] = {
                    "compression_ratio_x": hi["compression_ratio"],
                    "stored_bytes": hi["stored_bytes"],
                    "bytes_on_disk": hi["bytes_on_disk"],
                    "ratio_vs_bf16_raw_x": n * hi["d"] * 2 / hi["bytes_on_disk"],
                    "read_back_matches_reference": check[h],
                }
            raw = sum(v["stored_bytes"] for v in per_hook.values())
            disk = sum(v["bytes_on_disk"] for v in per_hook.values())
            out.append(
                {
                    "dtype": dtype,
                    "codec": codec,
                    "codec_description": info["codec_description"],
                    "rows": n,
                    "compression_ratio_x": raw / disk,
                    "ratio_vs_bf16_raw_x": sum(n * hi["d"] * 2 for hi in info["hooks"].values()) / disk,
                    "store_bytes_on_disk_total": info["bytes_on_disk"],
                    "per_hook": per_hook,
                }
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 chunks per layer, 3 repeats, 20k rows through the store")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 5, quick 3)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    max_chunks = 8 if args.quick else None
    max_rows = 20000 if args.quick else None

    meta = C.metadata()
    fp32 = C.load_activations()
    bf16 = {h: C.to_bf16_bits(a) for h, a in fp32.items()}
    chunk_rows = C.store_chunk_rows(384, 2)
    rows = {h: int(a.shape[0]) for h, a in fp32.items()}
    print(
        f"activations: {rows} rows x 384; chunk {chunk_rows} rows = {chunk_rows * 384 * 2 / MiB:.2f} MiB bf16",
        flush=True,
    )

    lossless = bench_lossless(bf16, chunk_rows, max_chunks, repeats)
    lossy = bench_lossy(fp32, max_rows)
    store = bench_store(fp32, bf16, max_rows)

    default = next(r for r in lossless if r["name"] == "blosc-zstd1-shuffle-1MiB")
    store_default = next(r for r in store if r["dtype"] == "bf16" and r["codec"] == "zstd")
    best = max((r for r in lossless if r["name"] != "none"), key=lambda r: r["ratio_x"])
    targets = {
        "lossless_bf16_ratio": {
            "target_x": TARGET_LOSSLESS_RATIO,
            "direction": "at least",
            "measured_codec_x": default["ratio_x"],
            "measured_store_x": store_default["compression_ratio_x"],
            "met": bool(min(default["ratio_x"], store_default["compression_ratio_x"]) >= TARGET_LOSSLESS_RATIO),
            "best_lossless_codec": best["name"],
            "best_lossless_ratio_x": best["ratio_x"],
        }
    }
    doc = {
        "benchmark": "codecs",
        "meta": meta,
        "config": {
            "quick": args.quick,
            "repeats": repeats,
            "statistic": "median of interleaved repeats",
            "threads": 1,
            "numcodecs_blosc_use_threads": numcodecs.blosc.use_threads,
            "data": "all-MiniLM-L6-v2 residual stream (encoder.layer.{1,3,5} outputs), pydoc_data.topics, context 128, "
            "pad rows dropped; fp32 -> bf16 round to nearest even",
            "rows_per_layer": rows,
            "d": 384,
            "chunk_rows": chunk_rows,
            "chunk_bytes": chunk_rows * 384 * 2,
            "chunks_per_layer": len(C.chunks_of(bf16[next(iter(bf16))], chunk_rows, max_chunks)),
            "lossy_rows_per_layer": max_rows or rows,
        },
        "units": {
            "ratio_x": "uncompressed bytes / compressed bytes",
            "encode_GBps": "uncompressed bytes per second, 1e9 B/s, one thread",
            "decode_GBps": "uncompressed bytes per second, 1e9 B/s, one thread",
            "*_bytes": "bytes",
            "*_s": "seconds per pass over all chunks of one layer",
            "rel_error": "||x - x_hat||_F / ||x||_F against the fp32 activations",
            "median_row_rel_error": "median over rows of ||x_r - x_hat_r|| / ||x_r||",
            "noise_frac_of_second_moment": "||x - x_hat||^2 / ||x||^2",
            "noise_frac_of_variance": "||x - x_hat||^2 / sum_r ||x_r - mean||^2 (same scale as an SAE's FVU)",
            "ratio_vs_bf16_*": "bf16 bytes (raw, or after the zstd preset) / bytes of this option (values + scales)",
            "compression_ratio_x": "Store.info(): stored bytes / bytes on disk (incl. shard indexes)",
        },
        "lossless": lossless,
        "lossy": lossy,
        "store": store,
        "targets": targets,
    }
    path = C.write_result("codecs_quick" if args.quick else "codecs", doc)

    print()
    print(
        "Lossless codecs on bf16 activations (single thread, %d x %.2f MiB chunks per layer, median of %d)"
        % (doc["config"]["chunks_per_layer"], chunk_rows * 768 / MiB, repeats)
    )
    tab = []
    for r in lossless:
        pl = r["per_layer"]
        tab.append(
            [
                r["name"],
                f"{r['ratio_x']:.3f}x",
                f"{r['encode_GBps']:.2f}",
                f"{r['decode_GBps']:.2f}",
                " / ".join(f"{pl[h]['ratio_x']:.3f}" for h in pl),
                f"{min(pl[h]['encode_GBps'] for h in pl):.2f}-{max(pl[h]['encode_GBps'] for h in pl):.2f}",
                f"{min(pl[h]['decode_GBps'] for h in pl):.2f}-{max(pl[h]['decode_GBps'] for h in pl):.2f}",
                (r["blosc_header"] or {}).get("blocksize_bytes", ""),
            ]
        )
    print(
        C.fmt_table(
            tab, ["codec", "ratio", "enc GB/s", "dec GB/s", "ratio L1/L3/L5", "enc range", "dec range", "blosc block B"]
        )
    )
    print()
    print("Lossy per-row options (vs fp32 activations; sizes vs bf16)")
    tab = [
        [
            r["name"],
            f"{r['ratio_vs_bf16_raw_x']:.3f}x",
            f"{r['ratio_vs_bf16_raw_after_zstd_preset_x']:.3f}x",
            f"{r['ratio_vs_bf16_zstd_preset_x']:.3f}x",
            f"{100 * r['rel_error']:.3f}%",
            f"{100 * r['noise_frac_of_second_moment']:.4f}%",
            f"{100 * r['noise_frac_of_variance']:.4f}%",
        ]
        for r in lossy
    ]
    print(
        C.fmt_table(
            tab,
            ["dtype", "vs bf16 raw", "+zstd vs bf16 raw", "+zstd vs bf16+zstd", "rel err", "noise/E[x^2]", "noise/var"],
        )
    )
    print()
    print("Through the real store (Store.info compression_ratio; read-back checked against the reference)")
    tab = [
        [
            f"{r['dtype']}/{r['codec']}",
            r["rows"],
            f"{r['compression_ratio_x']:.3f}x",
            f"{r['ratio_vs_bf16_raw_x']:.3f}x",
            " / ".join(f"{v['compression_ratio_x']:.3f}" for v in r["per_hook"].values()),
            all(v["read_back_matches_reference"] for v in r["per_hook"].values()),
        ]
        for r in store
    ]
    print(C.fmt_table(tab, ["dtype/codec", "rows", "ratio", "vs bf16 raw", "per hook", "read-back ok"]))
    t = targets["lossless_bf16_ratio"]
    print()
    print(
        f"TARGET lossless bf16 >= {t['target_x']:.2f}x: default preset measured {t['measured_codec_x']:.3f}x on "
        f"chunks, "
        f"{t['measured_store_x']:.3f}x through the store -> {'MET' if t['met'] else 'NOT MET'} "
        f"(best lossless: {t['best_lossless_codec']} {t['best_lossless_ratio_x']:.3f}x)"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
