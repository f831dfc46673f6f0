"""Representation-analysis passes against reading the same rows alone, and their peak memory
against the in-memory way (NumPy / sklearn on the loaded rows).

Store: a synthetic bf16 store of ``ROWS`` rows, two hooks of width ``D``, documents of 64
rows from two named sources (``pos``, ``neg``; a planted offset along one direction).

1. Speed, interleaved (``_common.interleaved``, medians of ``REPEATS`` with the spread):
   ``read`` streams every block of both hooks through the same reader the analyses use
   (``analysis._rows.stream`` with a no-op); ``steering`` (``steering_vectors``: 2 passes),
   ``pca`` (1 pass + the sample), ``probes`` (``epochs=1``: 3 passes). Reported: rows/s
   over all passes (rows x passes / seconds) and the overhead against ``read`` per pass.
2. Peak memory (``VmHWM`` of a fresh subprocess each) at ``ROWS / 2`` and ``ROWS``:
   actstore's steering + PCA against NumPy (load the rows, mean difference) + sklearn
   ``PCA`` on the loaded matrix. Target: actstore's flat in the number of rows.

    python benchmarks/bench_representations.py      # ~3 min on 2 cores; results/representations_cpu.json
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, metadata, summary, write_result  # noqa: E402

import actstore  # noqa: E402
import actstore.analysis as an  # noqa: E402
from actstore.analysis._rows import n_blocks, stream  # noqa: E402

ROWS, D, DOC = 262144, 256, 64
REPEATS = 3
BLOCK = 8192


def make_store(path: Path, rows: int) -> None:
    g = np.random.default_rng(0)
    u = g.standard_normal(D)
    u /= np.linalg.norm(u)
    doc = np.arange(rows) // DOC
    n_docs = int(doc[-1]) + 1
    sign = np.where(doc < n_docs // 2, 1.0, -1.0)
    prov = {"sources": [{"name": "pos", "data": "p", "docs": [0, n_docs // 2]},
                        {"name": "neg", "data": "n", "docs": [n_docs // 2, n_docs]}]}  # fmt: skip
    with actstore.create(path, {"a": D, "b": D}, dtype="bf16", provenance=prov) as w:
        for lo in range(0, rows, 65536):
            hi = min(rows, lo + 65536)
            a = (g.standard_normal((hi - lo, D)) + sign[lo:hi, None] * u).astype(np.float32)
            b = (a * 2 + 0.1 * g.standard_normal((hi - lo, D))).astype(np.float32)
            w.append({"a": a, "b": b}, tokens=np.zeros(hi - lo, np.int32), doc=doc[lo:hi],
                     pos=(np.arange(lo, hi) % DOC).astype(np.int32), flags=np.zeros(hi - lo, np.uint8))  # fmt: skip


def child(kind: str, path: str) -> None:
    """One peak-memory measurement: print {"maxrss_mb": ...} after the work."""
    s = actstore.open(path)
    if kind == "actstore":
        g = an.row_groups(s, sources=True, drop_flags=None)
        an.steering_vectors(s, "a,b", g, "pos", "neg", top_k=5, block_rows=BLOCK)
        an.pca(s, "a,b", g, k=10, sample=1000, block_rows=BLOCK)
    else:
        from sklearn.decomposition import PCA

        doc = s.tokens()["doc"].numpy()
        pos = doc < (int(doc.max()) + 1) // 2
        for h in ("a", "b"):
            x = s.read(h).numpy()  # [rows, D] float32: the in-memory way
            _ = x[pos].mean(0) - x[~pos].mean(0)
            PCA(n_components=10).fit(x)
            del x
    print(json.dumps({"maxrss_mb": peak_mb()}))


def peak_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` (``ru_maxrss`` survives exec on Linux,
    so a child started from a large parent reports the parent's peak; an earlier run of this
    script read 886 MB for every child that way)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    meta = metadata()  # before anything is measured: the load and the commit at the start
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for rows in (ROWS // 2, ROWS):
            paths[rows] = Path(tmp) / f"s{rows}"
            make_store(paths[rows], rows)
        s = actstore.open(paths[ROWS])
        g = an.row_groups(s, sources=True, drop_flags=None)
        nb = n_blocks(s, BLOCK)
        variants = {
            "read": lambda: stream(s, ["a", "b"], g, range(nb), BLOCK, lambda b: None),
            "steering": lambda: an.steering_vectors(s, "a,b", g, "pos", "neg", top_k=5, block_rows=BLOCK),
            "pca": lambda: an.pca(s, "a,b", g, k=10, sample=1000, block_rows=BLOCK),
            "probes": lambda: an.probes(s, "a,b", g, "pos", "neg", epochs=1, batch=4096, block_rows=BLOCK),
        }
        passes = {"read": 1, "steering": 2, "pca": 1, "probes": 3}
        times = interleaved(variants, REPEATS)
        speed = {}
        read_s = summary(times["read"])["median_s"]
        for name, t in times.items():
            sm = summary(t)
            speed[name] = {
                **sm,
                "passes": passes[name],
                "rows_per_s": ROWS * passes[name] / sm["median_s"],
                "overhead_vs_read_per_pass": sm["median_s"] / passes[name] / read_s - 1.0,
            }
            print(f"{name:9s} {sm['median_s']:.2f} s (spread {sm['spread']:.2f}), {passes[name]} pass(es): "
                  f"{speed[name]['rows_per_s']:,.0f} rows/s, {100 * speed[name]['overhead_vs_read_per_pass']:+.0f}% "
                  "per pass vs read")  # fmt: skip
        memory = {}
        for rows, p in paths.items():
            for kind in ("actstore", "numpy_sklearn"):
                r = subprocess.run([sys.executable, __file__, "--child", kind, str(p)], capture_output=True, text=True)
                if r.returncode:
                    raise SystemExit(r.stderr[-2000:])
                mb = json.loads(r.stdout.strip().splitlines()[-1])["maxrss_mb"]
                memory.setdefault(kind, {})[rows] = mb
                print(f"peak memory {kind:13s} {rows:>7,} rows: {mb:,.0f} MB")
    doc = {
        "meta": meta,
        "setup": {
            "rows": ROWS,
            "d": D,
            "hooks": 2,
            "dtype": "bf16",
            "block_rows": BLOCK,
            "doc_rows": DOC,
            "units": {"rows_per_s": "store rows x passes per second", "maxrss_mb": "MiB, VmHWM of the child"},
        },  # fmt: skip
        "speed": speed,
        "peak_memory_mb": memory,
        "memory_growth_per_row_bytes": {
            k: (v[ROWS] - v[ROWS // 2]) * 1024 * 1024 / (ROWS - ROWS // 2) for k, v in memory.items()
        },
    }
    print("wrote", write_result("representations_cpu", doc))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
