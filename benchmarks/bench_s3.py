"""Object storage against local disk: the same store written and read on a loopback S3
server (moto in server mode) and on local disk, side by side.

    python benchmarks/bench_s3.py [--rows N] [--repeats R]

Data: real all-MiniLM-L6-v2 residual-stream activations at encoder.layer.3 (bf16,
d=384), ``--rows`` rows (default 65,536: 50 MB as bf16). Both stores use the same layout:
8 chunks of 2 MiB per shard (16 MiB shards; moto reads a whole object for every ranged
GET, so the default 64-chunk shards would measure moto, not the client). Every variant
runs in this process, interleaved round-robin, median of the repeats with the spread:

- write: ``actstore.create`` + append + close (durable on local disk; conditional PUTs
  under a lease on S3), GB/s of uncompressed bf16;
- read: ``Store.read`` of every row as bf16 (a fresh ``Store`` each time), GB/s;
- loader: one shuffled epoch of ``ActivationLoader`` (batch 4096, bf16), batches/s, from
  local disk, from S3, and from S3 with the disk cache warm (``ACTSTORE_CACHE_DIR``);
- client CPU seconds per GB (``time.process_time`` of this process, all its threads; the
  moto server is another process and is not counted).

The loopback server is a single Python process (moto), so its figures are a floor set by
the server, not what real S3 gives; docs/guide/object-storage.md gives, on paper, the requests in flight
needed for 1-5 GB/s from real S3. Result: benchmarks/results/s3.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import actstore  # noqa: E402
from helpers.s3 import BUCKET, MotoServer, s3_env  # noqa: E402

HOOK = "encoder.layer.3"
BATCH = 4096
CHUNKS_PER_SHARD = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    acts = C.load_activations(layers=(3,), max_tokens=args.rows)[HOOK][: args.rows]
    x = torch.from_numpy(np.array(acts))  # a writable copy of the memory-mapped cache
    n = x.shape[0]
    nbytes = n * x.shape[1] * 2  # uncompressed bf16
    print(f"{n} rows x {x.shape[1]} of {HOOK}: {nbytes / 1e6:.1f} MB as bf16")

    server = MotoServer()
    server.make_bucket(BUCKET)
    os.environ.update(s3_env(server.endpoint))
    os.environ["ACTSTORE_S3_RETRIES"] = "10"
    tmp = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    cache_dir = tmp / "cache"
    counter = {"i": 0}
    cpu: dict[str, list[float]] = {}

    def where(kind: str) -> str:
        counter["i"] += 1
        return str(tmp / f"w{counter['i']}") if kind == "local" else f"s3://{BUCKET}/w{counter['i']}"

    def write(kind: str):
        path = where(kind)
        with actstore.create(path, {HOOK: x.shape[1]}, segment="s0", chunks_per_shard=CHUNKS_PER_SHARD) as w:
            for lo in range(0, n, BATCH):
                w.append({HOOK: x[lo : lo + BATCH]})
        return path

    stores = {"local": write("local"), "s3": write("s3")}  # the stores the reads and loaders use
    ref = x.bfloat16()

    def read(kind: str):
        with actstore.open(stores[kind]) as s:
            got = s.read(HOOK, dtype=torch.bfloat16)
        assert torch.equal(got, ref), f"{kind}: read back differs"

    def loader(kind: str, cached: bool):
        if cached:
            os.environ["ACTSTORE_CACHE_DIR"] = str(cache_dir)
        try:
            ld = actstore.ActivationLoader(stores[kind], HOOK, BATCH, dtype=torch.bfloat16, seed=1)
            k = sum(1 for _ in ld)
            ld.close()
        finally:
            os.environ.pop("ACTSTORE_CACHE_DIR", None)
        assert k == -(-n // BATCH)
        return k

    # Warm the disk cache once (the "warm" variant reads the disk, not the network).
    loader("s3", cached=True)
    assert any(cache_dir.iterdir())

    def timed(name, fn):
        def run():
            t = time.process_time()
            fn()
            cpu.setdefault(name, []).append(time.process_time() - t)

        return run

    variants = {
        "write_local": timed("write_local", lambda: write("local")),
        "write_s3": timed("write_s3", lambda: write("s3")),
        "read_local": timed("read_local", lambda: read("local")),
        "read_s3": timed("read_s3", lambda: read("s3")),
        "loader_local": timed("loader_local", lambda: loader("local", False)),
        "loader_s3": timed("loader_s3", lambda: loader("s3", False)),
        "loader_s3_cache_warm": timed("loader_s3_cache_warm", lambda: loader("s3", True)),
    }
    times = C.interleaved(variants, args.repeats)
    batches = -(-n // BATCH)
    results = {}
    rows = []
    for name, secs in times.items():
        s = C.summary(secs)
        cpu_s = float(np.median(cpu[name][-args.repeats :]))
        fig = {"seconds": s, "cpu_s_median": cpu_s, "cpu_s_per_gb": cpu_s / (nbytes / 1e9)}
        if name.startswith("loader"):
            fig["batches_per_s"] = batches / s["median_s"]
            fig["gb_per_s"] = C.gbps(nbytes, s["median_s"])
            rows.append(
                [
                    name,
                    f"{fig['batches_per_s']:.2f} batch/s",
                    f"{fig['gb_per_s']:.3f}",
                    f"{cpu_s / (nbytes / 1e9):.2f}",
                    f"{s['spread']:.2f}",
                ]
            )
        else:
            fig["gb_per_s"] = C.gbps(nbytes, s["median_s"])
            rows.append([name, "", f"{fig['gb_per_s']:.3f}", f"{cpu_s / (nbytes / 1e9):.2f}", f"{s['spread']:.2f}"])
        results[name] = fig
    ratios = {
        "write_s3_over_local": results["write_s3"]["gb_per_s"] / results["write_local"]["gb_per_s"],
        "read_s3_over_local": results["read_s3"]["gb_per_s"] / results["read_local"]["gb_per_s"],
        "loader_s3_over_local": results["loader_s3"]["batches_per_s"] / results["loader_local"]["batches_per_s"],
        "loader_s3_cache_warm_over_local": results["loader_s3_cache_warm"]["batches_per_s"]
        / results["loader_local"]["batches_per_s"],
    }
    print(C.fmt_table(rows, ["variant", "rate", "GB/s", "CPU s/GB", "spread"]))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    target = 0.9
    print(
        f"target: loader from S3 with the cache warm >= {target:.0%} of local: "
        f"{'met' if ratios['loader_s3_cache_warm_over_local'] >= target else 'NOT met'}"
    )
    doc = {
        "meta": C.metadata(),
        "config": {
            "hook": HOOK,
            "rows": n,
            "d": int(x.shape[1]),
            "uncompressed_bytes": nbytes,
            "codec": "zstd",
            "chunks_per_shard": CHUNKS_PER_SHARD,
            "batch_size": BATCH,
            "repeats": args.repeats,
            "server": "moto server mode on 127.0.0.1 (one Python process)",
            "inflight": int(os.environ.get("ACTSTORE_S3_INFLIGHT", "16")),
        },
        "results": results,
        "ratios": ratios,
        "target_loader_cache_warm_over_local": target,
        "units": {"gb_per_s": "decimal GB/s of uncompressed bf16", "cpu_s_per_gb": "process CPU s per decimal GB"},
    }
    path = C.write_result("s3", doc)
    print(f"wrote {path}")
    server.stop()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
