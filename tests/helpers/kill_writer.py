"""Subprocess for the SIGKILL tests: appends deterministic rows to one segment forever.

Usage: python kill_writer.py STORE SEGMENT SEED [TOTAL]
Row r of every hook is a pure function of r (see ``rows``), so the parent can check any
committed row byte for byte. Commits land at random moments (seeded) and after every
shard. With TOTAL, it resumes from the committed rows, appends up to TOTAL, and closes.
"""

import sys

import numpy as np
import torch

import actstore

HOOKS = {"h": 24, "g": 40}


def rows(lo: int, hi: int) -> dict[str, torch.Tensor]:
    r = torch.arange(lo, hi, dtype=torch.float64)[:, None]
    out = {}
    for k, (name, d) in enumerate(HOOKS.items()):
        j = torch.arange(d, dtype=torch.float64)[None, :]
        out[name] = (torch.sin(r * 0.37 + j * 1.3 + k) * (1 + (r % 7))).float()
    return out


def open_writer(path, segment):
    return actstore.create(path, HOOKS, segment=segment, chunk_bytes=1024, chunks_per_shard=4)


def main():
    path, segment, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    total = int(sys.argv[4]) if len(sys.argv) > 4 else None
    rng = np.random.default_rng(seed)
    w = open_writer(path, segment)
    start = w.committed_rows
    print(f"ready {start}", flush=True)
    r = start
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
    main()
