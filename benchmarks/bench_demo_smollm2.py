"""The main job, timed: `make demo` (SmolLM2-135M-Instruct, capture -> TopK SAE -> analyze) once.

Runs :func:`actstore.demo.run_smollm2_demo` with its defaults in a scratch folder and writes
``results/demo_smollm2.json``: per stage (model, capture, train, analyze) its seconds, rows
or tokens, FVU and bytes on disk, with the machine, versions and the git commit taken before
the run. The model's one-time GGUF conversion is timed as the ``model`` stage when the cache
is empty (``converted``); the README quotes these figures.

    python benchmarks/bench_demo_smollm2.py [--keep DIR]   # --keep: run in DIR and leave its outputs
"""

from __future__ import annotations

import argparse
import os
import tempfile

from _common import metadata, write_result

from actstore.demo import run_smollm2_demo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="run in this folder and keep demo_store, demo_sae, demo_analysis there")
    args = ap.parse_args()
    meta = metadata()  # before the run: the commit whose code is measured
    with tempfile.TemporaryDirectory(prefix="actstore-demo-") as scratch:
        tmp = args.keep or scratch
        os.makedirs(tmp, exist_ok=True)
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            summary = run_smollm2_demo()
        finally:
            os.chdir(cwd)
    summary["paths"] = {k: v for k, v in summary["paths"].items() if k in ("data", "store", "sae", "analysis")}
    path = write_result("demo_smollm2", {"meta": meta, **summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
