"""The representation analyses as the SIGKILL tests run them (tests/analysis/test_repr_resume.py),
and the child process of those tests: it runs one analysis with a state folder, committing
after every block, and stops itself (SIGSTOP) right after commit ``STOP_AT`` of pass ``PASS``,
so that the parent can SIGKILL it at a known point.

usage: python repr_kill_job.py KIND STORE STATE PASS STOP_AT
"""

import os
import signal
import sys

import numpy as np

import actstore
import actstore.analysis as an

BLOCK = 128


def run(kind: str, store_path, **kw):
    """The ``kind`` analysis of the planted store (tests/helpers/repr_store.py); ``kw``: state_dir,
    commit_rows, on_commit."""
    store = actstore.open(store_path)
    g = an.row_groups(store, sources=True)
    if kind == "steering":
        return an.steering_vectors(store, "a,b,c", g, "pos", "neg", pca=True, top_k=5, window=3, block_rows=BLOCK, **kw)
    if kind == "pca":
        return an.pca(store, "a,c", g, k=4, sample=30, block_rows=BLOCK, **kw)
    if kind == "probes":
        return an.probes(store, "a,b", g, "pos", "neg", epochs=3, batch=16, block_rows=BLOCK, **kw)
    if kind == "diff":
        return an.layer_diff(store, "a", "b", g, top_k=5, window=3, bins=8, block_rows=BLOCK, **kw)
    if kind == "scan":
        vecs = np.random.default_rng(1).standard_normal((3, store.schema.hooks["a"].d))
        return an.scan(store, "a", vecs, g, k=4, bins=8, window=2, block_rows=BLOCK, **kw)
    if kind == "between":  # the store against itself, its pos rows against its neg rows
        ga, gb = an.row_groups(store, sources=["neg"]), an.row_groups(store, sources=["pos"])
        return an.steering_between(store, store, "a,b", ga, gb, pca=True, top_k=5, window=3, block_rows=BLOCK, **kw)
    raise SystemExit(f"unknown kind {kind}")


def main() -> None:
    kind, store, state, stop_pass, stop_at = sys.argv[1:6]

    def on_commit(name: str, seq: int, rows: int) -> None:
        if name == stop_pass and seq == int(stop_at):
            os.kill(os.getpid(), signal.SIGSTOP)

    run(kind, store, state_dir=state, commit_rows=1, on_commit=on_commit)


if __name__ == "__main__":
    main()
