"""What resuming costs the representation analyses: each analysis with a state folder
(``state_dir``, commits every ``commit_rows`` = 65,536 store rows, the default) against the same
call without one, interleaved, on the synthetic store of ``bench_representations.py``
(262,144 bf16 rows x 2 hooks of width 256, blocks of 8,192 rows).

Reported per analysis: medians of ``REPEATS`` with the spread, the overhead of the state in
percent, the commits made and the bytes the state folder holds at the end (the growing
buffers, such as steering's one float32 projection per row and hook, are appended as part
files, so a commit writes only its new rows). Every variant's result is checked equal to the
stateless one first.

    python benchmarks/bench_resume.py      # ~3 min on 2 cores; results/resume_cpu.json
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved, metadata, summary, write_result  # noqa: E402
from bench_representations import BLOCK, ROWS, D, make_store  # noqa: E402

import actstore  # noqa: E402
import actstore.analysis as an  # noqa: E402
from actstore.analysis._checkpoint import COMMIT_ROWS  # noqa: E402

REPEATS = 3


def calls(s, g):
    return {
        "steering": lambda **kw: an.steering_vectors(s, "a,b", g, "pos", "neg", top_k=5, block_rows=BLOCK, **kw),
        "pca": lambda **kw: an.pca(s, "a,b", g, k=10, sample=1000, block_rows=BLOCK, **kw),
        "probes": lambda **kw: an.probes(s, "a,b", g, "pos", "neg", epochs=1, batch=4096, block_rows=BLOCK, **kw),
    }


def same(a, b) -> bool:
    """Every array field of two results equal (NaN equal to NaN)."""
    for k, v in vars(a).items():
        w = vars(b)[k]
        vals = v.values() if isinstance(v, dict) else [v]
        wals = w.values() if isinstance(w, dict) else [w]
        for x, y in zip(vals, wals):
            if isinstance(x, np.ndarray) and not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                return False
    return True


def main():
    meta = metadata()  # before anything is measured: the load and the commit at the start
    with tempfile.TemporaryDirectory() as tmp:
        make_store(Path(tmp) / "s", ROWS)
        s = actstore.open(Path(tmp) / "s")
        g = an.row_groups(s, sources=True, drop_flags=None)
        state = Path(tmp) / "state"
        commits: dict[str, int] = {}
        sizes: dict[str, int] = {}

        def with_state(name, fn):
            def run():
                shutil.rmtree(state, ignore_errors=True)
                n = [0]
                res = fn(state_dir=state, on_commit=lambda *a: n.__setitem__(0, n[0] + 1))
                commits[name] = n[0]
                sizes[name] = sum(p.stat().st_size for p in state.rglob("*") if p.is_file())
                return res

            return run

        variants = {}
        for name, fn in calls(s, g).items():
            if not same(fn(), with_state(name, fn)()):
                raise SystemExit(f"{name}: the run with a state folder differs from the one without")
            variants[name] = fn
            variants[f"{name}+state"] = with_state(name, fn)
        times = interleaved(variants, REPEATS)
    speed = {}
    for name in calls(None, None):
        plain, st = summary(times[name]), summary(times[f"{name}+state"])
        speed[name] = {
            "plain": plain,
            "state": st,
            "overhead": st["median_s"] / plain["median_s"] - 1.0,
            "commits": commits[name],
            "state_bytes": sizes[name],
        }
        print(f"{name:9s} {plain['median_s']:.2f} s plain, {st['median_s']:.2f} s with state "
              f"({100 * speed[name]['overhead']:+.1f}%; spreads {plain['spread']:.2f}, {st['spread']:.2f}), "
              f"{commits[name]} commits, state {sizes[name] / 2**20:.1f} MiB")  # fmt: skip
    doc = {
        "meta": meta,
        "setup": {
            "rows": ROWS,
            "d": D,
            "hooks": 2,
            "dtype": "bf16",
            "block_rows": BLOCK,
            "commit_rows": COMMIT_ROWS,
            "units": {"median_s": "seconds", "overhead": "state / plain - 1", "state_bytes": "bytes at the end"},
        },
        "speed": speed,
    }
    print("wrote", write_result("resume_cpu", doc))


if __name__ == "__main__":
    main()
