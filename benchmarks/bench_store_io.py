"""Store write / read throughput on real bf16 activations, side by side with baselines.

    python benchmarks/bench_store_io.py [--quick] [--repeats N] [--dir DIR]

Data: all-MiniLM-L6-v2 residual streams at encoder.layer.{1,3,5} over pydoc_data.topics
(~130k rows x 384 per hook, ~300 MB as bf16). Every variant is timed in the same process,
interleaved round-robin, median of the repeats; figures are GB/s of uncompressed bf16
bytes (decimal GB). Compared:

- codec alone (the ceiling): the store's ChunkCodec on the store's own chunks, in memory,
  with 1 thread and with the store's thread count;
- actstore: create + append + close (durable and not, fp32 and bf16 input), and reads of
  all rows (as bf16 and fp32), of a random permutation of all rows, and of 4096 random rows;
- raw NumPy: ``tofile`` / ``np.fromfile`` / ``np.memmap`` of an uncompressed copy;
- zarr-python 3 (naive ``arr[:] = x`` / ``arr[:]`` on an equivalent sharded array), and
  zarr-python reading actstore's own arrays;
- tensorstore reading both, when it is installed.

Reads come from the page cache (each store is read once before timing; dropping the cache
needs root). Results: benchmarks/results/store_io.json (store_io_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import zarr  # noqa: E402
from zarr.codecs import BloscCodec  # noqa: E402

import actstore  # noqa: E402
from actstore import _native  # noqa: E402
from actstore._native import default_threads  # noqa: E402
from actstore.store.codecs import PRESETS  # noqa: E402
from actstore.store.stats import RunningStats  # noqa: E402

try:
    import tensorstore as ts
except ImportError:  # optional baseline
    ts = None

TARGET_WRITE_OVERHEAD = 1.25  # store write time / codec-alone encode time, at most
TARGET_READ_SPEEDUP = 2.0  # naive zarr-python read time / actstore read time, at least
APPEND_ROWS = 4096  # rows per append: one demo batch (32 windows x 128 tokens)
RANDOM_ROWS = 4096
RANDOM_READS = 5  # random 4096-row reads per timed call


def fsync_path(p: Path):
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="32768 rows per hook, 3 repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 9, quick 3)")
    ap.add_argument("--dir", default=None, help="scratch directory for the stores (default: a new dir in $TMPDIR)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)

    meta = C.metadata()
    fp32_mm = C.load_activations()
    hooks = list(fp32_mm)
    n = min(a.shape[0] for a in fp32_mm.values())
    if args.quick:
        n = min(n, 32768)
    d = fp32_mm[hooks[0]].shape[1]
    fp32 = {h: np.array(a[:n]) for h, a in fp32_mm.items()}
    bf16 = {h: C.to_bf16_bits(a) for h, a in fp32.items()}
    raw_bytes = sum(a.nbytes for a in bf16.values())
    threads = default_threads()
    codec = PRESETS["zstd"]
    chunk_rows = C.store_chunk_rows(d, 2)
    print(
        f"{len(hooks)} hooks x {n} rows x {d} bf16 = {raw_bytes / 1e6:.0f} MB; chunk {chunk_rows} rows; "
        f"store threads {threads}; {repeats} repeats",
        flush=True,
    )

    scratch = Path(args.dir or tempfile.mkdtemp(prefix="actstore-bench-io-"))
    scratch.mkdir(parents=True, exist_ok=True)
    figures: dict = {}
    try:
        # ---- inputs -----------------------------------------------------------------
        # The store's chunks: ceil(n / chunk_rows) per hook, the edge chunk zero-padded, as
        # the writer encodes them.
        chunks = []
        for h in hooks:
            for lo in range(0, n, chunk_rows):
                c = np.zeros((chunk_rows, d), dtype=np.uint16)
                c[: min(n, lo + chunk_rows) - lo] = bf16[h][lo : lo + chunk_rows]
                chunks.append(c)
        encoded = [codec.encode(c) for c in chunks]
        dec_out = [np.empty_like(c) for c in chunks]
        pool1 = ThreadPoolExecutor(1)
        poolT = ThreadPoolExecutor(threads)
        fp32_batches = [
            {h: torch.from_numpy(fp32[h][lo : lo + APPEND_ROWS]) for h in hooks} for lo in range(0, n, APPEND_ROWS)
        ]
        bf16_batches = [
            {h: torch.from_numpy(bf16[h][lo : lo + APPEND_ROWS].view(np.int16)).view(torch.bfloat16) for h in hooks}
            for lo in range(0, n, APPEND_ROWS)
        ]
        hook_d = {h: d for h in hooks}

        def store_write(path: Path, batches, durable: bool):
            w = actstore.create(path, hook_d, segment="r0", durable=durable)
            for b in batches:
                w.append(b)
            w.close()

        zarr_blosc = dict(cname="zstd", clevel=1, shuffle="shuffle", typesize=2, blocksize=1 << 20)

        def zarr_write(path: Path):
            for h in hooks:
                arr = zarr.create_array(
                    store=str(path / h),
                    shape=(n, d),
                    dtype="uint16",
                    chunks=(chunk_rows, d),
                    shards=(64 * chunk_rows, d),
                    compressors=BloscCodec(**zarr_blosc),
                    fill_value=0,
                    overwrite=True,
                )
                arr[:] = bf16[h]

        def np_write(path: Path, durable: bool):
            path.mkdir(parents=True, exist_ok=True)
            for h in hooks:
                f = path / f"{h}.bin"
                bf16[h].tofile(f)
                if durable:
                    fsync_path(f)
            if durable:
                fsync_path(path)

        # ---- write side -------------------------------------------------------------
        wdirs = {
            k: scratch / f"w-{k}"
            for k in (
                "store_durable_fp32",
                "store_nodurable_fp32",
                "store_durable_bf16",
                "store_nodurable_bf16",
                "zarr",
                "np_durable",
                "np_nodurable",
            )
        }

        def clean(k):
            # Start every timed write from an empty directory and no dirty pages: otherwise a
            # durable write's fsync also pays for the previous non-durable variant's writeback.
            def run():
                shutil.rmtree(wdirs[k], ignore_errors=True)
                os.sync()

            return run

        write_variants = {
            "codec_encode_1thread": lambda: list(pool1.map(codec.encode, chunks)),
            f"codec_encode_{threads}threads": lambda: list(poolT.map(codec.encode, chunks)),
            "actstore_write_durable_fp32in": lambda: store_write(wdirs["store_durable_fp32"], fp32_batches, True),
            "actstore_write_nodurable_fp32in": lambda: store_write(wdirs["store_nodurable_fp32"], fp32_batches, False),
            "actstore_write_durable_bf16in": lambda: store_write(wdirs["store_durable_bf16"], bf16_batches, True),
            "actstore_write_nodurable_bf16in": lambda: store_write(wdirs["store_nodurable_bf16"], bf16_batches, False),
            "zarr_python_write": lambda: zarr_write(wdirs["zarr"]),
            "numpy_tofile_fsync": lambda: np_write(wdirs["np_durable"], True),
            "numpy_tofile_nofsync": lambda: np_write(wdirs["np_nodurable"], False),
        }
        setup = {"codec_encode_1thread": os.sync, f"codec_encode_{threads}threads": os.sync}
        setup.update(
            {
                name: clean(k)
                for name, k in [
                    ("actstore_write_durable_fp32in", "store_durable_fp32"),
                    ("actstore_write_nodurable_fp32in", "store_nodurable_fp32"),
                    ("actstore_write_durable_bf16in", "store_durable_bf16"),
                    ("actstore_write_nodurable_bf16in", "store_nodurable_bf16"),
                    ("zarr_python_write", "zarr"),
                    ("numpy_tofile_fsync", "np_durable"),
                    ("numpy_tofile_nofsync", "np_nodurable"),
                ]
            }
        )
        # Pieces of an fp32 append, to explain the write figures: statistics and bf16 rounding.
        breakdown_variants = {
            "append_part_stats_fp32": lambda: [RunningStats(d).update(b[h]) for b in fp32_batches for h in hooks],
            "append_part_stats_bf16": lambda: [RunningStats(d).update(b[h]) for b in bf16_batches for h in hooks],
            "append_part_fp32_to_bf16": lambda: [
                _native.fp32_to_bf16(b[h].numpy()) for b in fp32_batches for h in hooks
            ],
        }
        print(f"write side: {len(write_variants) + len(breakdown_variants)} variants ...", flush=True)
        wt = C.interleaved({**write_variants, **breakdown_variants}, repeats, setup=setup)
        for name, ts_ in wt.items():
            figures[name] = {"GBps": C.gbps(raw_bytes, statistics.median(ts_)), **C.summary(ts_)}
        for k in ("store_durable_fp32", "store_nodurable_fp32", "store_durable_bf16", "store_nodurable_bf16", "zarr"):
            figures_key = {
                "store_durable_fp32": "actstore_write_durable_fp32in",
                "store_nodurable_fp32": "actstore_write_nodurable_fp32in",
                "store_durable_bf16": "actstore_write_durable_bf16in",
                "store_nodurable_bf16": "actstore_write_nodurable_bf16in",
                "zarr": "zarr_python_write",
            }[k]
            on_disk = sum(f.stat().st_size for f in wdirs[k].rglob("*") if f.is_file())
            figures[figures_key]["bytes_on_disk"] = on_disk
            figures[figures_key]["ratio_x"] = raw_bytes / on_disk

        # ---- read side --------------------------------------------------------------
        # Stores to read: the last durable bf16-input actstore write and the zarr-python write.
        spath = wdirs["store_durable_bf16"]
        zpath = wdirs["zarr"]
        npath = wdirs["np_durable"]
        s = actstore.open(spath)
        assert s.rows == n, (s.rows, n)
        s_threads = s._pool._max_workers
        zg = zarr.open_group(str(spath), mode="r")
        z_act = {h: zg[f"segments/r0/acts/{h}"] for h in hooks}
        z_own = {h: zarr.open_array(str(zpath / h), mode="r") for h in hooks}
        t_act = t_own = None
        if ts is not None:
            ctx = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
            t_act = {
                h: ts.open(
                    {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(spath / f"segments/r0/acts/{h}")}},
                    read=True,
                    context=ctx,
                ).result()
                for h in hooks
            }
            t_own = {
                h: ts.open(
                    {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(zpath / h)}}, read=True, context=ctx
                ).result()
                for h in hooks
            }
        rng = np.random.default_rng(0)
        perms = {h: rng.permutation(n) for h in hooks}
        rand_sets = [
            np.sort(rng.choice(n, RANDOM_ROWS, replace=False)) if i % 2 else rng.choice(n, RANDOM_ROWS, replace=False)
            for i in range(RANDOM_READS)
        ]

        # Correctness (untimed): every reader returns exactly the bf16 bits that were written.
        for h in hooks:
            want = bf16[h]
            checks = {
                "actstore": s.read(h, dtype=torch.bfloat16).view(torch.int16).numpy().view(np.uint16),
                "zarr_on_actstore": z_act[h][:],
                "zarr_own": z_own[h][:],
                "numpy": np.fromfile(npath / f"{h}.bin", dtype=np.uint16).reshape(n, d),
            }
            if ts is not None:
                checks["tensorstore_on_actstore"] = t_act[h].read().result()
                checks["tensorstore_own"] = t_own[h].read().result()
            for k, v in checks.items():
                if not np.array_equal(v, want):
                    raise SystemExit(f"read check failed: {k} on {h}")
            p = s.read(h, rows=perms[h], dtype=torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            if not np.array_equal(p, want[perms[h]]):
                raise SystemExit(f"read check failed: permuted actstore read on {h}")

        def each(fn):
            # Read every hook, dropping each result before the next (as a consumer would):
            # holding all results at once made every reader's timing swing 2-3x with memory
            # pressure from other processes on this shared machine.
            def run():
                for h in hooks:
                    fn(h)

            return run

        def dec(pool):
            return lambda: list(pool.map(lambda i: codec.decode_into(encoded[i], dec_out[i]), range(len(encoded))))

        def dec_fresh(pool):
            # As the reader does: every chunk decoded into a newly allocated array.
            def one(i):
                out = np.empty((chunk_rows, d), dtype=np.uint16)
                codec.decode_into(encoded[i], out)
                return out

            return lambda: list(pool.map(one, range(len(encoded))))

        # The reader's gather step alone: rows of decoded chunks copied into one new array per hook.
        per_hook_chunks = -(-n // chunk_rows)
        gather_src = [dec_out[k * per_hook_chunks : (k + 1) * per_hook_chunks] for k in range(len(hooks))]
        gather_ids = (np.arange(n) // chunk_rows).astype(np.int32)
        gather_rows = (np.arange(n) % chunk_rows).astype(np.int64)

        def gather_all():
            for src in gather_src:
                _native.gather_rows(src, gather_ids, gather_rows, out=np.empty((n, d), dtype=np.uint16))

        read_variants = {
            "codec_decode_1thread": dec(pool1),
            f"codec_decode_{threads}threads": dec(poolT),
            f"codec_decode_{threads}threads_fresh_buffers": dec_fresh(poolT),
            "reader_part_gather_rows_native": gather_all,
            "actstore_read_all_bf16": each(lambda h: s.read(h, dtype=torch.bfloat16)),
            "actstore_read_all_fp32": each(lambda h: s.read(h)),
            "actstore_read_permuted_bf16": each(lambda h: s.read(h, rows=perms[h], dtype=torch.bfloat16)),
            "actstore_read_4096_random_bf16": lambda: [
                s.read(hooks[0], rows=r, dtype=torch.bfloat16).shape for r in rand_sets
            ],
            "numpy_fromfile": each(lambda h: np.fromfile(npath / f"{h}.bin", dtype=np.uint16)),
            "numpy_memmap_copy": each(lambda h: np.array(np.memmap(npath / f"{h}.bin", dtype=np.uint16, mode="r"))),
            "zarr_python_read_own": each(lambda h: z_own[h][:]),
            "zarr_python_read_actstore": each(lambda h: z_act[h][:]),
        }
        if ts is not None:
            read_variants["tensorstore_read_own"] = each(lambda h: t_own[h].read().result())
            read_variants["tensorstore_read_actstore"] = each(lambda h: t_act[h].read().result())
        for f in read_variants.values():  # warm the page cache and every reader once
            f()
        print(f"read side: {len(read_variants)} variants ...", flush=True)
        rt = C.interleaved(read_variants, repeats)
        for name, ts_ in rt.items():
            med = statistics.median(ts_)
            if name == "actstore_read_4096_random_bf16":
                per = med / RANDOM_READS
                figures[name] = {
                    "GBps_delivered": C.gbps(RANDOM_ROWS * d * 2, per),
                    "seconds_per_read": per,
                    "rows_per_s": RANDOM_ROWS / per,
                    "reads_per_call": RANDOM_READS,
                    "chunks_decoded_per_read": float(np.mean([len(np.unique(r // chunk_rows)) for r in rand_sets])),
                    "chunks_per_hook": -(-n // chunk_rows),
                    "GBps_decoded": C.gbps(
                        np.mean([len(np.unique(r // chunk_rows)) for r in rand_sets]) * chunk_rows * d * 2, per
                    ),
                    **C.summary(ts_),
                }
            else:
                figures[name] = {"GBps": C.gbps(raw_bytes, med), **C.summary(ts_)}
        s.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    # ---- ratios and targets -----------------------------------------------------------
    med = {k: v["median_s"] for k, v in figures.items()}
    enc_T = med[f"codec_encode_{threads}threads"]
    dec_T = med[f"codec_decode_{threads}threads"]
    ratios = {
        "write_overhead_vs_codec_encode": {
            k: med[k] / enc_T
            for k in (
                "actstore_write_durable_fp32in",
                "actstore_write_nodurable_fp32in",
                "actstore_write_durable_bf16in",
                "actstore_write_nodurable_bf16in",
            )
        },
        "read_speedup_vs_zarr_python": {
            "actstore_read_all_bf16 vs zarr_python_read_own": med["zarr_python_read_own"]
            / med["actstore_read_all_bf16"],
            "actstore_read_all_bf16 vs zarr_python_read_actstore": med["zarr_python_read_actstore"]
            / med["actstore_read_all_bf16"],
            "actstore_read_all_fp32 vs zarr_python_read_own": med["zarr_python_read_own"]
            / med["actstore_read_all_fp32"],
        },
        "read_overhead_vs_codec_decode": {
            "actstore_read_all_bf16": med["actstore_read_all_bf16"] / dec_T,
            "actstore_read_all_fp32": med["actstore_read_all_fp32"] / dec_T,
            "actstore_read_permuted_bf16": med["actstore_read_permuted_bf16"] / dec_T,
        },
        "actstore_write_vs_zarr_python_write": med["zarr_python_write"] / med["actstore_write_durable_bf16in"],
        "codec_thread_scaling": {
            "encode": med["codec_encode_1thread"] / enc_T,
            "decode": med["codec_decode_1thread"] / dec_T,
        },
    }
    if ts is not None:
        ratios["read_speedup_vs_tensorstore"] = {
            "vs tensorstore_read_own": med["tensorstore_read_own"] / med["actstore_read_all_bf16"],
            "vs tensorstore_read_actstore": med["tensorstore_read_actstore"] / med["actstore_read_all_bf16"],
        }
    # The same ratios paired round by round (both variants ran within seconds of each other
    # in every round), then the median: less sensitive to load that comes and goes.
    allt = {**wt, **rt}

    def paired(num: str, den: str) -> float:
        return statistics.median(a / b for a, b in zip(allt[num], allt[den]))

    ratios["paired_median"] = {
        "write_overhead_vs_codec_encode": {
            k: paired(k, f"codec_encode_{threads}threads") for k in ratios["write_overhead_vs_codec_encode"]
        },
        "read_speedup_vs_zarr_python_own": paired("zarr_python_read_own", "actstore_read_all_bf16"),
        "read_overhead_vs_codec_decode_bf16": paired("actstore_read_all_bf16", f"codec_decode_{threads}threads"),
    }
    w_head = ratios["write_overhead_vs_codec_encode"]
    r_head = ratios["read_speedup_vs_zarr_python"]["actstore_read_all_bf16 vs zarr_python_read_own"]
    targets = {
        "write_overhead": {
            "definition": "actstore create+append+close time / codec-alone encode time, both with the store's "
            "thread count",
            "target_at_most": TARGET_WRITE_OVERHEAD,
            "measured": w_head,
            "measured_paired_median": ratios["paired_median"]["write_overhead_vs_codec_encode"],
            "met": {k: bool(v <= TARGET_WRITE_OVERHEAD) for k, v in w_head.items()},
        },
        "read_speedup": {
            "definition": "naive zarr-python arr[:] time / actstore s.read(h, dtype=bfloat16) time, all rows of "
            "all hooks",
            "target_at_least": TARGET_READ_SPEEDUP,
            "measured": r_head,
            "measured_paired_median": ratios["paired_median"]["read_speedup_vs_zarr_python_own"],
            "met": bool(r_head >= TARGET_READ_SPEEDUP),
        },
    }
    doc = {
        "benchmark": "store_io",
        "meta": meta,
        "config": {
            "quick": args.quick,
            "repeats": repeats,
            "statistic": "median of interleaved repeats (order rotates each round)",
            "hooks": hooks,
            "rows_per_hook": n,
            "d": d,
            "uncompressed_bytes": raw_bytes,
            "chunk_rows": chunk_rows,
            "shard_rows": 64 * chunk_rows,
            "codec": codec.describe(),
            "append_rows": APPEND_ROWS,
            "store_threads": s_threads,
            "codec_threads": threads,
            "zarr_config": {"async": zarr.config.get("async"), "threading": zarr.config.get("threading")},
            "zarr_python_array": {"chunks": [chunk_rows, d], "shards": [64 * chunk_rows, d], "compressors": zarr_blosc},
            "tensorstore": "cache_pool 0 bytes, its own default thread pools" if ts is not None else "not installed",
            "page_cache": "reads are from the page cache: every store was read once before timing (dropping "
            "caches needs root)",
            "write_dir": "a temporary directory on the same file system as /tmp; each timed write starts from an empty "
            "directory after os.sync() (untimed), so no variant pays for another's writeback",
            "append_columns": "activations only; token/doc/pos/flags columns left to their defaults",
            "read_consumption": "each hook's result is dropped before the next hook is read (all readers alike)",
            "random_read": f"{RANDOM_READS} reads of {RANDOM_ROWS} random rows of one hook per timed call (odd "
            f"ones sorted)",
        },
        "units": {
            "GBps": "uncompressed bf16 bytes of all hooks per second, 1e9 B/s",
            "GBps_delivered": "bytes of the requested rows per second",
            "GBps_decoded": "bytes of the chunks decoded per second",
            "*_s": "seconds per call",
            "ratio_x": "uncompressed / on-disk bytes",
            "write_overhead_vs_codec_encode": "time ratio (lower is better, 1.0 = codec-bound)",
            "read_speedup_*": "time ratio, baseline time / actstore time (higher is better)",
            "read_overhead_vs_codec_decode": "time ratio (lower is better)",
            "paired_median": "median over rounds of the per-round time ratio (same meaning as above)",
        },
        "figures": figures,
        "ratios": ratios,
        "targets": targets,
    }
    path = C.write_result("store_io_quick" if args.quick else "store_io", doc)

    print()
    print(
        f"{len(hooks)} hooks x {n} rows x {d} bf16 = {raw_bytes / 1e6:.0f} MB uncompressed; median of {repeats}; "
        f"{threads} threads; reads from page cache"
    )
    tab = []
    for name, f in figures.items():
        if "GBps" in f:
            tab.append(
                [
                    name,
                    f"{f['GBps']:.3f}",
                    f"{f['median_s']:.3f}",
                    f"{f['min_s']:.3f}-{f['max_s']:.3f}",
                    f"{f['ratio_x']:.3f}x" if "ratio_x" in f else "",
                ]
            )
        else:
            tab.append(
                [
                    name,
                    f"{f['GBps_delivered']:.4f} (delivered), {f['GBps_decoded']:.2f} (decoded)",
                    f"{f['seconds_per_read']:.3f}/read",
                    f"{f['min_s'] / RANDOM_READS:.3f}-{f['max_s'] / RANDOM_READS:.3f}",
                    "",
                ]
            )
    print(C.fmt_table(tab, ["variant", "GB/s", "median s", "range s", "on-disk ratio"]))
    print()
    pm = ratios["paired_median"]
    for k, v in w_head.items():
        print(
            f"TARGET write overhead <= {TARGET_WRITE_OVERHEAD:.2f}: {k} / codec encode ({threads} threads) = {v:.2f} "
            f"(paired {pm['write_overhead_vs_codec_encode'][k]:.2f}) -> "
            f"{'MET' if v <= TARGET_WRITE_OVERHEAD else 'NOT MET'}"
        )
    print(
        f"TARGET read speedup >= {TARGET_READ_SPEEDUP:.1f}x: zarr-python arr[:] / actstore read = {r_head:.2f}x "
        f"(paired {pm['read_speedup_vs_zarr_python_own']:.2f}x) -> "
        f"{'MET' if r_head >= TARGET_READ_SPEEDUP else 'NOT MET'}"
    )
    for k, v in ratios["read_overhead_vs_codec_decode"].items():
        print(f"  {k} / codec decode ({threads} threads) = {v:.2f}")
    if ts is not None:
        for k, v in ratios["read_speedup_vs_tensorstore"].items():
            print(f"  actstore read speedup {k}: {v:.2f}x")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
