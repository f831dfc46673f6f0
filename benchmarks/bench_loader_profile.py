"""Where the shuffled ActivationLoader's time goes, beside the codec's own decode of the same chunks.

    python benchmarks/bench_loader_profile.py [--quick] [--rounds N] [--threads T] [--epochs E]

Data and store: what ``bench_loader.py`` times (all-MiniLM-L6-v2 ``encoder.layer.3``, d = 384,
bf16, Blosc zstd; ``--quick``: 49,152 rows, buffer 16,384 rows; else 126,976 rows, buffer
65,536 rows; batch 4096; 2 threads). Four parts, each in this one process:

1. **Timed, interleaved** (``--rounds`` rounds after a warm-up round, order rotating):
   ``ceiling`` (the store's ``ChunkCodec.decode_into``, crc32c + Blosc, of every chunk's
   compressed bytes, preread into memory, into preallocated buffers, ``ThreadPoolExecutor(T)``),
   ``loader_cold`` (construct an ``ActivationLoader(..., dtype=torch.bfloat16)`` + one epoch),
   ``loader_warm`` (one epoch of a loader made beforehand, as a training run sees it) and
   ``construct`` (construct + close, no batch). Ratios are per round, median over rounds,
   of wall time and of the process's CPU time (all threads; steadier than wall time on a
   shared machine). Minor page faults per call (``getrusage``) are counted alongside.
2. **Stages**: ``--epochs`` warm epochs with wall-clock timers wrapped around each step,
   summed per thread role (``worker``: the decode pool; ``producer``; ``consumer``: the
   caller's thread) and divided by the epochs. A worker's ``python_other`` is its block's
   wall time not inside a timed step: interpreter work and waits for the GIL. With the
   native extension, crc32c + decode + scatter are one step (``fused_decode_scatter``). The
   workers' thread CPU time beside their wall time says how long they were off the CPU.
3. **Sampling**: a thread that reads ``sys._current_frames()`` every millisecond over
   uninstrumented warm epochs; each sample counts the innermost actstore (or
   ``concurrent.futures``/``queue``/``threading``) frame of each loader thread. The sampler
   needs the GIL to take a sample, so samples land where the GIL is free or handed over:
   read as shares of where threads wait, not as exact CPU shares.
4. **cProfile** of every loader thread (a profiler per thread, merged) over warm epochs:
   the functions with the most own time.

Results: ``benchmarks/results/loader_profile.json`` (``loader_profile_quick.json`` with
``--quick``) and a printed summary.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import actstore  # noqa: E402
from actstore import _native  # noqa: E402
from actstore.loader import fetch as fetch_mod  # noqa: E402
from actstore.loader import loader as loader_mod  # noqa: E402
from actstore.store import chunks as chunks_mod  # noqa: E402
from actstore.store import codecs as codecs_mod  # noqa: E402

SEGMENT = "rank00000"
SEED = 0
APPEND_ROWS = 4096
QUICK_ROWS, QUICK_BUFFER = 49152, 16384
FULL_ROWS, FULL_BUFFER = 126976, 65536


def _role() -> str:
    name = threading.current_thread().name
    if name.startswith("actstore-load-") or name.startswith("actstore-load_"):
        return "worker"
    if name == "actstore-loader":
        return "producer"
    return "consumer" if threading.current_thread() is threading.main_thread() else name


class Stages:
    """Wall seconds per (thread role, stage), summed over threads; nested stages are timed
    apart (a stage's figure includes the stages inside it)."""

    def __init__(self):
        self.wall: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: Counter = Counter()
        self.cpu: dict[str, float] = defaultdict(float)
        self.lock = threading.Lock()

    def add(self, role: str, stage: str, dt: float) -> None:
        with self.lock:
            self.wall[(role, stage)] += dt
            self.calls[(role, stage)] += 1

    def wrap(self, owner, attr: str, stage: str, cpu: bool = False):
        """Replace ``owner.attr`` by a timed wrapper; returns an undo function."""
        if not hasattr(owner, attr):  # a step this checkout does not have (an older loader)
            return lambda: None
        # A class attribute is the plain function (the wrapper binds as a method as it did).
        orig = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)

        def timed(*a, **k):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return orig(*a, **k)
            finally:
                role = _role()
                self.add(role, stage, time.perf_counter() - t0)
                if cpu:
                    with self.lock:
                        self.cpu[role] += time.thread_time() - c0

        setattr(owner, attr, timed)
        return lambda: setattr(owner, attr, orig)


def build_store(path: Path, n: int, hook: str):
    acts = C.load_activations()[hook]
    cols = C.load_token_columns()
    fp32 = np.array(acts[:n])
    d = fp32.shape[1]
    w = actstore.create(path, {hook: d}, segment=SEGMENT, dtype="bf16", codec="zstd", durable=False)
    for lo in range(0, n, APPEND_ROWS):
        hi = min(n, lo + APPEND_ROWS)
        w.append(
            {hook: torch.from_numpy(fp32[lo:hi])},
            tokens=cols["token"][lo:hi],
            doc=cols["doc"][lo:hi],
            pos=cols["pos"][lo:hi],
            flags=cols["flags"][lo:hi],
        )
    w.close()
    return d


def minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS} rows, buffer {QUICK_BUFFER} rows")
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    ap.add_argument("--threads", type=int, default=2, help="loader / decode threads (default 2)")
    ap.add_argument("--epochs", type=int, default=10, help="warm epochs per profiled part (default 10)")
    ap.add_argument("--batch-size", type=int, default=4096)
    args = ap.parse_args(argv)
    T, B = args.threads, args.batch_size
    n, buffer_rows = (QUICK_ROWS, QUICK_BUFFER) if args.quick else (FULL_ROWS, FULL_BUFFER)
    hook = C.hook_name(3)
    meta = C.metadata()
    meta["command"] = "python benchmarks/bench_loader_profile.py" + (" --quick" if args.quick else "")

    scratch = Path(tempfile.mkdtemp(prefix="actstore-profile-loader-"))
    try:
        spath = scratch / "store"
        d = build_store(spath, n, hook)
        s = actstore.open(spath)
        seg = s.segments[0]
        a = next(x for x in s.schema.arrays() if x.path == f"acts/{hook}")
        cr, per_shard = a.chunk_rows, s.schema.shard_rows // a.chunk_rows
        n_chunks = -(-n // cr)
        handles = [seg.chunks.acquire(a, k) for k in range(-(-n_chunks // per_shard))]
        encoded = []
        for c in range(n_chunks):
            off, nb = handles[c // per_shard].index[c % per_shard]
            encoded.append(handles[c // per_shard].blob.pread(int(off), int(nb)))
        for h in handles:
            seg.chunks.release(h)
        codec = s.schema.codec.with_typesize(2)
        dec_out = [np.empty((cr, d), dtype=np.uint16) for _ in range(n_chunks)]
        order = np.random.default_rng(SEED).permutation(n_chunks)
        pool = ThreadPoolExecutor(T, thread_name_prefix="profile-dec")
        s.close()

        def make(epochs=1):
            return actstore.ActivationLoader(
                str(spath),
                hook,
                B,
                shuffle=True,
                seed=SEED,
                epochs=epochs,
                device="cpu",
                dtype=torch.bfloat16,
                threads=T,
                buffer_rows=buffer_rows,
            )

        warm = make(None)
        warm_epoch = [0]

        def run_warm() -> int:
            warm.set_epoch(warm_epoch[0])
            rows = 0
            for bt in warm:
                rows += bt.shape[0]
                if warm.epoch != warm_epoch[0]:
                    break
            warm_epoch[0] += 1
            return rows

        def run_cold() -> int:
            ld = make()
            rows = sum(bt.shape[0] for bt in ld)
            ld.close()
            return rows

        def run_construct() -> int:
            make().close()
            return 0

        def run_ceiling() -> int:
            list(pool.map(lambda c: codec.decode_into(encoded[c], dec_out[c]), order))
            return n

        variants = {
            "ceiling": run_ceiling,
            "loader_cold": run_cold,
            "loader_warm": run_warm,
            "construct": run_construct,
        }
        assert run_cold() == n and run_warm() == n, "an epoch did not deliver every row"

        # ---- 1. timed, interleaved ---------------------------------------------------------
        times: dict[str, list[float]] = {k: [] for k in variants}
        faults: dict[str, list[int]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        load_start = list(map(float, open("/proc/loadavg").read().split()[:3]))
        for r in range(args.rounds + 1):
            rot = names[r % len(names) :] + names[: r % len(names)]
            for k in rot:
                f0, c0, t0 = minflt(), time.process_time(), time.perf_counter()
                variants[k]()
                dt, dc, df = time.perf_counter() - t0, time.process_time() - c0, minflt() - f0
                if r:  # round 0 is the warm-up
                    times[k].append(dt)
                    cpu[k].append(dc)
                    faults[k].append(df)
        load_end = list(map(float, open("/proc/loadavg").read().split()[:3]))
        timed = {
            k: {
                **C.summary(v),
                "seconds_all": v,
                "cpu_s_median": statistics.median(cpu[k]),
                "minor_faults_median": statistics.median(faults[k]),
            }
            for k, v in times.items()
        }
        ratios = {
            f"{k}_vs_ceiling": {
                "median": statistics.median(times["ceiling"][i] / times[k][i] for i in range(args.rounds)),
                "all": [times["ceiling"][i] / times[k][i] for i in range(args.rounds)],
            }
            for k in ("loader_cold", "loader_warm")
        }
        # CPU seconds of the whole process (every thread) per call: on a machine shared with
        # other work, wall-clock ratios swing with the load, CPU ratios much less.
        for k in ("loader_cold", "loader_warm"):
            ratios[f"{k}_cpu_vs_ceiling_cpu"] = {
                "median": statistics.median(cpu["ceiling"][i] / cpu[k][i] for i in range(args.rounds)),
                "all": [cpu["ceiling"][i] / cpu[k][i] for i in range(args.rounds)],
            }

        # ---- 2. stages ---------------------------------------------------------------------
        st = Stages()
        undo = [
            st.wrap(fetch_mod.BlockFetcher, "scatter_block", "block_total", cpu=True),
            st.wrap(chunks_mod.ChunkReader, "acquire", "shard_acquire"),
            st.wrap(chunks_mod.ChunkReader, "release", "shard_release"),
            st.wrap(chunks_mod.ChunkReader, "gets", "plan_gets"),
            st.wrap(chunks_mod.ChunkReader, "read", "pread"),
            st.wrap(chunks_mod.ChunkReader, "decode", "decode_total"),
            st.wrap(codecs_mod, "crc32c_strip", "crc32c"),
            st.wrap(_native, "scatter_rows", "scatter_rows"),
            st.wrap(_native, "decode_scatter", "decode_scatter"),
            st.wrap(loader_mod._Producer, "_scatter_window", "plan_window_and_submit"),
            st.wrap(loader_mod._Producer, "_new_batch", "alloc_batch_buffers"),
            st.wrap(loader_mod._Producer, "_finish", "finish_batch"),
            st.wrap(loader_mod._Producer, "_put", "queue_put"),
            st.wrap(loader_mod._Producer, "_run", "run_total"),
        ]
        consumer_wait = 0.0
        f0, t0 = minflt(), time.perf_counter()
        for _ in range(args.epochs):
            warm.set_epoch(warm_epoch[0])
            it = iter(warm)
            while True:
                tw = time.perf_counter()
                try:
                    bt = next(it)
                except StopIteration:
                    break
                consumer_wait += time.perf_counter() - tw
                del bt
                if warm.epoch != warm_epoch[0]:
                    break
            it.close()
            warm_epoch[0] += 1
        wall = (time.perf_counter() - t0) / args.epochs
        stage_faults = (minflt() - f0) / args.epochs
        for u in undo:
            u()
        E = args.epochs
        per = {f"{r}/{k}": v / E for (r, k), v in sorted(st.wall.items())}
        w = lambda k: st.wall[("worker", k)] / E  # noqa: E731
        worker_known = sum(w(k) for k in ("shard_acquire", "shard_release", "plan_gets", "pread", "decode_total"))
        worker_known += w("scatter_rows") + w("decode_scatter")
        stages = {
            "epoch_wall_s": wall,
            "minor_faults_per_epoch": stage_faults,
            "consumer_wait_in_next_s": consumer_wait / E,
            "per_epoch_s": per,
            "calls_per_epoch": {f"{r}/{k}": v / E for (r, k), v in sorted(st.calls.items())},
            "worker": {
                "block_total_s": w("block_total"),
                "cpu_s": st.cpu["worker"] / E,
                "off_cpu_s": w("block_total") - st.cpu["worker"] / E,
                "decode_blosc_s": w("decode_total") - w("crc32c"),
                "crc32c_s": w("crc32c"),
                "pread_s": w("pread"),
                "scatter_rows_s": w("scatter_rows"),
                "fused_decode_scatter_s": w("decode_scatter"),
                "shard_handles_and_gets_s": w("shard_acquire") + w("shard_release") + w("plan_gets"),
                "python_other_s": w("block_total") - worker_known,
            },
            "producer": {
                "run_total_s": st.wall[("producer", "run_total")] / E,
                "plan_window_and_submit_s": st.wall[("producer", "plan_window_and_submit")] / E,
                "alloc_batch_buffers_s": st.wall[("producer", "alloc_batch_buffers")] / E,
                "finish_batch_s": st.wall[("producer", "finish_batch")] / E,
                "queue_put_s": st.wall[("producer", "queue_put")] / E,
            },
        }
        p = stages["producer"]
        p["waiting_on_decode_s"] = (
            p["run_total_s"] - p["plan_window_and_submit_s"] - p["finish_batch_s"] - p["queue_put_s"]
        )

        # ---- 3. sampling -------------------------------------------------------------------
        samples: dict[str, Counter] = defaultdict(Counter)
        stop = threading.Event()
        keep = ("actstore", "concurrent/futures", "queue.py", "threading.py")

        def sampler():
            me = threading.get_ident()
            while not stop.is_set():
                time.sleep(0.001)
                names_ = {t.ident: t for t in threading.enumerate()}
                for tid, frame in sys._current_frames().items():
                    th = names_.get(tid)
                    if tid == me or th is None or not (th.name.startswith("actstore") or th is threading.main_thread()):
                        continue
                    role = (
                        "worker"
                        if th.name.startswith("actstore-load-") or th.name.startswith("actstore-load_")
                        else "producer"
                        if th.name == "actstore-loader"
                        else "consumer"
                    )
                    f, where = frame, None
                    while f is not None:
                        fn = f.f_code.co_filename
                        if any(k in fn for k in keep):
                            where = f"{Path(fn).parent.name}/{Path(fn).name}:{f.f_code.co_name}:{f.f_lineno}"
                            break
                        f = f.f_back
                    samples[role][where or "other"] += 1

        sth = threading.Thread(target=sampler, daemon=True)
        sth.start()
        for _ in range(E):
            run_warm()
        stop.set()
        sth.join()
        sampling = {
            role: {
                "samples": sum(c.values()),
                "top": [[k, v, v / sum(c.values())] for k, v in c.most_common(15)],
            }
            for role, c in samples.items()
        }

        # ---- 4. cProfile -------------------------------------------------------------------
        profs: list[cProfile.Profile] = []
        plock = threading.Lock()

        def profiled(orig):
            def run(*a, **k):
                pr = cProfile.Profile()
                with plock:
                    profs.append(pr)
                pr.enable()
                try:
                    return orig(*a, **k)
                finally:
                    pr.disable()

            return run

        sb, pr_run = fetch_mod.BlockFetcher.scatter_block, loader_mod._Producer._run
        fetch_mod.BlockFetcher.scatter_block = profiled(sb)
        loader_mod._Producer._run = profiled(pr_run)
        main_prof = cProfile.Profile()
        main_prof.enable()
        for _ in range(E):
            run_warm()
        main_prof.disable()
        fetch_mod.BlockFetcher.scatter_block, loader_mod._Producer._run = sb, pr_run
        ps = pstats.Stats(main_prof)
        for pr in profs:
            ps.add(pr)
        rows = []
        for (fn, line, name), (_cc, nc, tt, ct, _) in ps.stats.items():
            rows.append([f"{Path(fn).name}:{line}:{name}", nc, tt / E, ct / E])
        rows.sort(key=lambda r: -r[2])
        buf = io.StringIO()
        ps.stream = buf
        ps.sort_stats("tottime").print_stats(25)
        cprofile = {
            "note": "own time (tottime) and cumulative time per warm epoch, all loader threads and the consumer merged",
            "top_by_own_time": [{"function": r[0], "calls": r[1], "own_s": r[2], "cum_s": r[3]} for r in rows[:30]],
        }
        warm.close()
        pool.shutdown()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    doc = {
        "benchmark": "loader_profile",
        "meta": meta,
        "config": {
            "quick": args.quick,
            "rows": n,
            "d": d,
            "chunk_rows": cr,
            "chunks": n_chunks,
            "batch_size": B,
            "buffer_rows": buffer_rows,
            "threads": T,
            "rounds": args.rounds,
            "epochs_per_part": args.epochs,
            "loadavg_before_after_timed": [load_start, load_end],
            "statistic": "timed: median of interleaved rounds (order rotating, one warm-up round); stages, "
            "sampling, cProfile: per warm epoch, averaged over --epochs epochs",
        },
        "units": {
            "*_s": "seconds per call or per epoch",
            "ratios": "ceiling seconds / variant seconds, per round (the fraction of the ceiling reached)",
            "minor_faults": "minor page faults of the process per call or epoch (getrusage ru_minflt)",
            "sampling": "samples per innermost actstore/futures/queue/threading frame per thread role, and share",
        },
        "timed": timed,
        "ratios": ratios,
        "stages": stages,
        "sampling": sampling,
        "cprofile": cprofile,
    }
    path = C.write_result("loader_profile_quick" if args.quick else "loader_profile", doc)

    print(f"{n:,} rows x {d} bf16, {n_chunks} chunks of {cr} rows; batch {B}; buffer {buffer_rows}; {T} threads")
    print(f"load average {load_start} -> {load_end}")
    for k, v in timed.items():
        print(
            f"  {k:12s} median {v['median_s'] * 1e3:7.2f} ms  cpu {v['cpu_s_median'] * 1e3:7.2f} ms  "
            f"minor faults {v['minor_faults_median']:8.0f}"
        )
    for k, v in ratios.items():
        print(f"  {k}: median {v['median']:.2f}  rounds {' '.join(f'{x:.2f}' for x in v['all'])}")
    print(f"stages per warm epoch (instrumented, wall {stages['epoch_wall_s'] * 1e3:.1f} ms):")
    for part in ("worker", "producer"):
        print("  " + part + ": " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in stages[part].items()))
    print(f"  consumer waiting in next(): {stages['consumer_wait_in_next_s'] * 1e3:.2f} ms")
    print(f"  minor faults per epoch: {stages['minor_faults_per_epoch']:.0f}")
    for role, v in sampling.items():
        print(f"samples, {role} ({v['samples']}):")
        for k, _count, f in v["top"][:8]:
            print(f"    {f:5.1%} {k}")
    print(buf.getvalue()[:6000])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
