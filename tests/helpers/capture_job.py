"""Subprocess for the capture kill/rank/full-disk tests: a deterministic capture run.

Usage: python capture_job.py STORE [--pause-at N] [--fsize BYTES]
Prints "batch N" after each batch of this run (flushed). With --pause-at N it prints
"paused N" after batch N and stops itself (SIGSTOP), so the parent signals it at a known
batch, not at a moment on the clock: SIGKILL there, or SIGINT then SIGCONT (the pending
SIGINT is delivered as the job continues, inside that batch's callback). --fsize sets
RLIMIT_FSIZE: writes past that size fail with EFBIG, a real failing store write. Under
torchrun, each rank writes its own segment.
"""

import argparse
import os
import resource
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture_models import TinyLM, token_docs  # noqa: E402

import actstore  # noqa: E402
from actstore.capture import CaptureConfig  # noqa: E402
from actstore.capture.runner import _run_capture  # noqa: E402

HOOKS = "layers.0,layers.2"
OPTIONS = dict(context=16, batch_size=4, chunk_bytes=1024, chunks_per_shard=2, progress=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("--pause-at", type=int, default=0)
    ap.add_argument("--fsize", type=int, default=0)
    ap.add_argument("--docs", type=int, default=150)
    ap.add_argument("--chunks-per-shard", type=int, default=2)
    ap.add_argument("--commit-every", type=float, default=60.0)
    a = ap.parse_args()
    if a.fsize:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (a.fsize, a.fsize))

    def paced(n):
        print(f"batch {n}", flush=True)
        if n == a.pause_at:
            # A grace before the stop: the writer's threads run on meanwhile (a commit, shard
            # puts), as they would before a real crash, instead of freezing mid-hand-off.
            time.sleep(float(os.environ.get("ACTSTORE_KILL_GRACE", "0.3")))
            print(f"paused {n}", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)

    try:
        opts = {**OPTIONS, "chunks_per_shard": a.chunks_per_shard, "commit_every": a.commit_every}
        s = _run_capture(
            TinyLM(), HOOKS, token_docs(a.docs, seed=11), a.store, CaptureConfig(**opts), after_batch=paced
        )
    except actstore.StoreError as e:
        print(f"actstore: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)  # capture already committed and said so on stderr
    print(f"done {s['committed_rows']} {s['rank']}", flush=True)


if __name__ == "__main__":
    main()
