"""Subprocess for the SIGKILL tests: appends deterministic rows to one segment.

Usage: python kill_writer.py STORE SEGMENT SEED [--total N] [--stop-at-write W]

Row r of every hook is a pure function of r (see ``rows``), so the parent can check any
committed row byte for byte. Commits land at seeded moments and after every shard.

- ``--stop-at-write W``: the W-th object write of this process (counted from the store's
  creation or resume on; every durable change of the store is one such write) writes its
  temporary file and then stops before the rename, prints ``stopped <committed rows>``
  (``none`` while the writer is still opening) and waits to be killed. The parent
  SIGKILLs it after that line: kill points are chosen by write number, never wall time,
  and every one lands in the middle of the protocol (a shard, a shape or a commit record
  half written), on any machine speed.
- ``--total N``: resume from the committed rows, append up to N, close, print ``done N``.
Without either it appends until killed.

On object storage (an ``s3://`` STORE) the W-th PUT of the writer's own objects (lease
renewals, which run on a timer, are not counted) stops before the request when W is odd
(the PUT never happened) and after it when W is even (it landed, its caller never heard).
"""

import argparse
import itertools
import sys
import threading

import numpy as np
import torch

import actstore
from actstore.store.storage import LocalStorage

HOOKS = {"h": 24, "g": 40}
WRITER = None  # the open writer, once open_writer has returned


def rows(lo: int, hi: int) -> dict[str, torch.Tensor]:
    r = torch.arange(lo, hi, dtype=torch.float64)[:, None]
    out = {}
    for k, (name, d) in enumerate(HOOKS.items()):
        j = torch.arange(d, dtype=torch.float64)[None, :]
        out[name] = (torch.sin(r * 0.37 + j * 1.3 + k) * (1 + (r % 7))).float()
    return out


def open_writer(path, segment):
    return actstore.create(path, HOOKS, segment=segment, chunk_bytes=1024, chunks_per_shard=4)


def stop_at_write(at: int) -> None:
    """Make the ``at``-th write_atomic of this process stop between its temporary file and
    its rename, report, and block (writes run on the writer's pool threads too)."""
    original = LocalStorage.write_atomic
    counter = itertools.count(1)  # next() on it is atomic under the GIL

    def write_atomic(self, key, data):
        if next(counter) == at:
            self._write_tmp(self._path(key), data)  # the temporary is complete; the rename never comes
            print(f"stopped {WRITER.committed_rows if WRITER is not None else 'none'}", flush=True)
            threading.Event().wait()  # until SIGKILL
        return original(self, key, data)

    LocalStorage.write_atomic = write_atomic


def stop_at_put(at: int) -> None:
    """Object storage: stop in the ``at``-th conditional or plain PUT (see the docstring)."""
    from actstore.store.storage._object import ObjectStorage

    counter = itertools.count(1)

    def wrap(original):
        def put(self, key, data, *rest):
            if "/lease/" in key:
                return original(self, key, data, *rest)
            n = next(counter)
            if n == at and at % 2:
                stop()
            out = original(self, key, data, *rest)
            if n == at:
                stop()
            return out

        return put

    ObjectStorage.write_if = wrap(ObjectStorage.write_if)
    ObjectStorage.write_atomic = wrap(ObjectStorage.write_atomic)


def stop():
    print(f"stopped {WRITER.committed_rows if WRITER is not None else 'none'}", flush=True)
    threading.Event().wait()  # until SIGKILL


def main():
    global WRITER
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("segment")
    ap.add_argument("seed", type=int)
    ap.add_argument("--total", type=int)
    ap.add_argument("--stop-at-write", type=int)
    args = ap.parse_args()
    if args.stop_at_write:
        if "://" in args.path:
            stop_at_put(args.stop_at_write)
        else:
            stop_at_write(args.stop_at_write)
    rng = np.random.default_rng(args.seed)
    w = WRITER = open_writer(args.path, args.segment)
    start = w.committed_rows
    print(f"ready {start}", flush=True)
    r, total = start, args.total
    while total is None or r < total:
        n = int(rng.integers(1, 200))
        if total is not None:
            n = min(n, total - r)
        idx = torch.arange(r, r + n)
        w.append(rows(r, r + n), tokens=idx, doc=idx // 50, pos=idx % 50)
        r += n
        if rng.random() < 0.2:
            w.commit()
    w.close()
    print(f"done {w.committed_rows}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
