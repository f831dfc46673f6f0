"""A small real store for the loader tests: two hooks, two segments, known values."""

from __future__ import annotations

import numpy as np
import torch

import actstore

# Two hooks of different widths, so their chunks hold different row counts (a block is
# one chunk of "narrow" and two of "wide"), and two segments of odd lengths.
WIDE, NARROW = 40, 20
SEGMENTS = {"rank00000": 1337, "rank00001": 901}


def acts(tok: np.ndarray, d: int, salt: float) -> torch.Tensor:
    """Activations that are a known function of the token id (to check alignment)."""
    g = torch.Generator().manual_seed(int(salt * 1000))
    base = torch.randn(d, generator=g)
    t = torch.from_numpy(tok.astype(np.float32))[:, None]
    return torch.sin(t * 0.37 + base) * (1 + t / 1000.0) + salt


def build(path, dtype="fp32", segments=SEGMENTS):
    """Write ``segments`` (name -> rows; token ids run on across them) and open the store."""
    start = 0
    for seg, n in segments.items():
        tok = np.arange(start, start + n, dtype=np.int64)
        with actstore.create(
            path,
            {"wide": WIDE, "narrow": NARROW},
            segment=seg,
            dtype=dtype,
            durable=False,
            chunk_bytes=64 * WIDE * 4 if dtype == "fp32" else 64 * WIDE * 2,
            chunks_per_shard=4,
        ) as w:
            for lo in range(0, n, 500):  # several appends and commits
                t = tok[lo : lo + 500]
                w.append(
                    {"wide": acts(t, WIDE, 1.0), "narrow": acts(t, NARROW, 2.0)},
                    tokens=t,
                    doc=t // 50,
                    pos=t % 50,
                    flags=((t % 50) == 0).astype(np.uint8),
                )
                w.commit()
        start += n
    return actstore.open(path)


TOTAL = sum(SEGMENTS.values())
