"""Where a store write spends its time: per-stage wall time and core use of create + append + close.

    python benchmarks/bench_writer_profile.py [--quick] [--repeats N] [--rows N] [--d D] [--out NAME]

Two inputs, each appended as one bf16 tensor (as ``actstore bench store`` does): ``random``,
``rows x d`` random bf16 (default 262144 x 1024, 512 MiB), and ``minilm``, the real
all-MiniLM-L6-v2 layer-3 residual stream of benchmarks/_common.py (~130k x 384) rounded to
bf16. Each write is durable (``create``'s default). Around every write, the stages below are
timed by wrapping the functions that do them (so the figures are what the code does, with
a few hundred microseconds of wrapping cost per write), each with its thread:

- main thread: ``validate`` (append's checks), ``to_stored`` (bf16 conversion), ``stats``
  (RunningStats.update less its parts: before the bf16 kernel, mostly the float32 copy),
  ``stats_moments`` (the native moments kernel), ``copy_to_buffer`` (rows into the shard
  buffer), ``wait_pool`` (waiting for chunk encodings), ``wait_puts`` (waiting for shard
  objects to be written and fsynced, where the writer has a put pool), ``build_shard``,
  ``commit`` (shapes + commit record, less the file stages below), ``other`` (create,
  close, Python in between);
- any thread: ``encode_blosc``, ``crc32c``, ``file_write``, ``fsync_file``, ``rename``,
  ``fsync_dir`` (``fsync_dir`` includes a new folder's parent fsync).

Each stage's figure is its *self* time (nested stages subtracted), summed over the threads
it ran on, in seconds per write (median of the repeats). ``cores_busy`` is the process's CPU
time (user + sys, from getrusage) over the write's wall time: 2.0 is both cores busy the
whole time. ``codec_encode_s`` is the store's codec alone on the same chunks, in memory, on
the store's thread count, measured interleaved with the writes: the ceiling of a write.

Results: benchmarks/results/writer_profile.json (writer_profile_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import functools
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import actstore  # noqa: E402
from actstore import _native  # noqa: E402
from actstore.store import codecs as _codecs  # noqa: E402
from actstore.store import stats as _stats  # noqa: E402
from actstore.store import writer as _writer  # noqa: E402
from actstore.store.storage import _local  # noqa: E402

HOOK = "h"

# (owner, attribute, stage): the functions wrapped while a write runs. A missing attribute
# is skipped, so that the profile runs on the writer before and after a change.
TARGETS = [
    (_writer, "_as_tensor", "validate"),
    (_writer, "_as_column", "validate"),
    (_writer, "to_stored", "to_stored"),
    (_stats.RunningStats, "update", "stats"),
    (_stats._native, "row_moments", "stats_moments"),
    (_stats._native, "row_moments_bf16", "stats_moments"),
    (_writer.SegmentWriter, "_buffer", "copy_to_buffer"),
    (_writer.SegmentWriter, "_copy_rows", "copy_to_buffer"),
    (_writer.SegmentWriter, "_write_shard", "wait_pool"),
    (_writer.SegmentWriter, "_wait_chunk_free", "wait_pool"),
    (_writer.SegmentWriter, "_shard_full", "wait_pool"),
    (_writer.SegmentWriter, "_write_full_shards", "wait_pool"),
    (_writer.SegmentWriter, "_put_shard", "wait_puts"),
    (_writer, "build_shard", "build_shard"),
    (_writer.SegmentWriter, "_write_commit", "commit"),
    (_writer.SegmentWriter, "_encode_chunk", "encode_blosc"),
    (_codecs, "crc32c_append", "crc32c"),
    (_local.LocalStorage, "_write_tmp", "file_write"),
    (_local, "fsync_path", "fsync_dir"),
    (_local.os, "fsync", "fsync_file"),
    (_local.os, "replace", "rename"),
]


class Recorder:
    """Self time per (stage, thread) of the wrapped calls: a per-thread stack subtracts a
    nested call's time from its caller's."""

    def __init__(self):
        self.local = threading.local()
        self.lock = threading.Lock()
        self.self_s: dict[tuple[str, str], float] = {}
        self.saved = []

    def wrap(self, fn, stage):
        rec = self

        @functools.wraps(fn)
        def inner(*a, **k):
            stack = getattr(rec.local, "stack", None)
            if stack is None:
                stack = rec.local.stack = []
            stack.append(0.0)  # time of nested wrapped calls
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                nested = stack.pop()
                if stack:
                    stack[-1] += dt
                key = (stage, "main" if threading.current_thread() is threading.main_thread() else "pool")
                with rec.lock:
                    rec.self_s[key] = rec.self_s.get(key, 0.0) + dt - nested

        return inner

    def install(self):
        for owner, attr, stage in TARGETS:
            fn = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
            if fn is None:
                continue
            self.saved.append((owner, attr, fn))
            setattr(owner, attr, self.wrap(fn, stage))

    def uninstall(self):
        for owner, attr, fn in reversed(self.saved):
            setattr(owner, attr, fn)
        self.saved = []

    def reset(self):
        self.self_s = {}


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def profile_input(name: str, x: torch.Tensor, repeats: int, work: Path) -> dict:
    d = x.shape[1]
    path = work / name
    rec = Recorder()
    threads = _native.default_threads()
    pool = ThreadPoolExecutor(threads)
    chunks = None
    writes, encodes = [], []
    for r in range(repeats + 1):  # round 0: warm-up, not kept
        shutil.rmtree(path, ignore_errors=True)
        rec.reset()
        rec.install()
        c0, t0 = cpu_s(), time.perf_counter()
        try:
            with actstore.create(path, {HOOK: d}, segment="s", dtype="bf16") as w:
                w.append({HOOK: x})
            wall = time.perf_counter() - t0
            busy = cpu_s() - c0
        finally:
            rec.uninstall()
        if chunks is None:
            with actstore.open(path) as st:
                chunk_rows = st._hook(HOOK).chunk_rows
                codec = st.schema.codec.with_typesize(2)
            raw = x.view(torch.int16).numpy()
            chunks = [np.ascontiguousarray(raw[i : i + chunk_rows]) for i in range(0, x.shape[0], chunk_rows)]
        e0 = time.perf_counter()
        list(pool.map(codec.encode, chunks))
        enc = time.perf_counter() - e0
        if r == 0:
            continue
        stages = {}
        for (stage, thread), s in rec.self_s.items():
            stages.setdefault(stage, {"main": 0.0, "pool": 0.0})[thread] += s
        main_known = sum(v["main"] for v in stages.values())
        stages["other"] = {"main": max(wall - main_known, 0.0), "pool": 0.0}
        writes.append({"wall_s": wall, "cpu_s": busy, "stages": stages})
        encodes.append(enc)
        print(f"  {name} round {r}/{repeats}: write {wall:.3f} s, codec {enc:.3f} s", file=sys.stderr, flush=True)
    pool.shutdown()
    shutil.rmtree(path, ignore_errors=True)

    def med(f):
        return statistics.median(f(w) for w in writes)

    all_stages = sorted({s for w in writes for s in w["stages"]})
    stage_fig = {}
    for s in all_stages:
        main = med(lambda w, s=s: w["stages"].get(s, {}).get("main", 0.0))
        other = med(lambda w, s=s: w["stages"].get(s, {}).get("pool", 0.0))
        stage_fig[s] = {"main_thread_s": main, "other_threads_s": other}
    wall = med(lambda w: w["wall_s"])
    enc = statistics.median(encodes)
    return {
        "rows": int(x.shape[0]),
        "d": int(d),
        "gb": x.numel() * 2 / 1e9,
        "threads": threads,
        "write_wall_s": wall,
        "write_wall_s_rounds": [w["wall_s"] for w in writes],
        "codec_encode_s": enc,
        "codec_encode_s_rounds": encodes,
        "write_over_codec": enc / wall,
        "write_over_codec_per_round": [e / w["wall_s"] for e, w in zip(encodes, writes)],
        "cores_busy": med(lambda w: w["cpu_s"] / w["wall_s"]),
        "stages_s": stage_fig,
    }


def fmt(res: dict) -> str:
    rows = []
    for s, v in sorted(res["stages_s"].items(), key=lambda kv: -(kv[1]["main_thread_s"] + kv[1]["other_threads_s"])):
        rows.append(
            [
                s,
                f"{v['main_thread_s'] * 1e3:,.1f}",
                f"{v['other_threads_s'] * 1e3:,.1f}",
                f"{v['main_thread_s'] / res['write_wall_s']:.0%}",
            ]
        )
    head = (
        f"{res['rows']} x {res['d']} bf16 ({res['gb']:.3f} GB), {res['threads']} threads: write "
        f"{res['write_wall_s'] * 1e3:,.0f} ms, codec alone {res['codec_encode_s'] * 1e3:,.0f} ms, "
        f"ratio {res['write_over_codec']:.2f}x, cores busy {res['cores_busy']:.2f}"
    )
    return head + "\n" + C.fmt_table(rows, ["stage (self time)", "main ms", "other threads ms", "of wall (main)"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="65536 random rows, 3 repeats, minilm's first 65536 rows")
    ap.add_argument("--repeats", type=int, default=None, help="profiled writes per input (default 5, quick 3)")
    ap.add_argument("--rows", type=int, default=262144, help="random rows (default 262144)")
    ap.add_argument("--d", type=int, default=1024, help="random width (default 1024)")
    ap.add_argument("--out", default=None, help="result name (default writer_profile[_quick])")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    rows = 65536 if args.quick else args.rows

    meta = C.metadata()
    gen = torch.Generator().manual_seed(0)
    inputs = {"random": torch.randn(rows, args.d, generator=gen).to(torch.bfloat16)}
    real = C.load_activations()[C.hook_name(3)]
    n_real = min(real.shape[0], 65536) if args.quick else real.shape[0]
    inputs["minilm"] = torch.from_numpy(np.ascontiguousarray(real[:n_real])).to(torch.bfloat16)

    work = Path(tempfile.mkdtemp(prefix="actstore-profile-writer-"))
    results = {}
    try:
        for name, x in inputs.items():
            results[name] = profile_input(name, x, repeats, work)
            print(fmt(results[name]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc = {
        "meta": meta,
        "params": {
            "repeats": repeats,
            "durable": True,
            "codec": "zstd (create's default)",
            "input": "one bf16 tensor per write, appended whole (as actstore bench store)",
            "units": "seconds per write (median of repeats); cores_busy = CPU seconds / wall seconds",
        },
        "results": results,
    }
    out = C.write_result(args.out or ("writer_profile_quick" if args.quick else "writer_profile"), doc)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
