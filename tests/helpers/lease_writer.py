"""Subprocess for the lease tests: one writer of segment ``s0`` that waits between commits.

Usage: python lease_writer.py STORE_URL

Appends rows 0-99 of ``kill_writer.rows`` (token ids = row numbers), commits, prints
``ready <writer id>``, then waits for a line on stdin; then appends rows 100-199 and
commits. Prints ``done <rows>``, or ``refused <one-line error>`` and exits 3 if the store
refused it (another writer took the segment over while this one was stopped).
"""

import sys

import torch
from kill_writer import rows

import actstore
from actstore.errors import StoreError


def main():
    url = sys.argv[1]
    w = actstore.create(url, {"h": 24, "g": 40}, segment="s0", chunk_bytes=1024, chunks_per_shard=4)
    w.append(rows(0, 100), tokens=torch.arange(100))
    w.commit()
    print(f"ready {w.writer_id}", flush=True)
    sys.stdin.readline()
    try:
        w.append(rows(100, 200), tokens=torch.arange(100, 200))
        w.commit()
    except StoreError as e:
        print(f"refused {e}", flush=True)
        w.abort()
        return 3
    w.close()
    print(f"done {w.committed_rows}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
