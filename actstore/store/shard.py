"""Zarr v3 ``sharding_indexed`` shards, built and parsed directly.

A shard object is the stored inner chunks back to back, followed by the index:
``n_chunks`` pairs of little-endian uint64 ``(offset, nbytes)`` and a 4-byte crc32c of
those pairs (index_codecs ``[bytes(little), crc32c]``, index_location ``end``). A chunk
that was never written has ``(2**64-1, 2**64-1)``.

We write shards ourselves rather than through zarr-python so that a shard is one atomic
object write (zarr's partial-shard path reads, modifies and writes), and we read them
ourselves because zarr's whole-array path was 3-7x slower than the codec (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import numpy as np

from .codecs import ChecksumError, crc32c_append, crc32c_strip

MISSING = np.uint64(2**64 - 1)


def index_nbytes(n_chunks: int) -> int:
    """Size in bytes of a shard index for ``n_chunks`` inner chunks (with its crc32c)."""
    return 16 * n_chunks + 4


def build_shard(chunks: list[bytes | None]) -> list[bytes]:
    """Return the parts of one shard object (chunks, then the index) for ``chunks``,
    each already encoded (``None`` for a chunk that holds no rows)."""
    index = np.full((len(chunks), 2), MISSING, dtype="<u8")
    parts: list[bytes] = []
    offset = 0
    for i, c in enumerate(chunks):
        if c is None:
            continue
        index[i] = (offset, len(c))
        parts.append(c)
        offset += len(c)
    parts.append(crc32c_append(index.tobytes()))
    return parts


def parse_index(tail: bytes, n_chunks: int, shard_size: int) -> np.ndarray:
    """Parse and verify a shard index read from the end of a shard.

    Returns ``[n_chunks, 2]`` uint64 ``(offset, nbytes)``. Raises ``ValueError`` with a
    short reason if the index is short, fails its crc32c, or points past the shard.
    """
    want = index_nbytes(n_chunks)
    if len(tail) != want:
        raise ValueError(f"shard is {shard_size} bytes, too short for its {want}-byte index")
    try:
        body = crc32c_strip(tail)
    except ChecksumError:
        raise ValueError("shard index fails its crc32c") from None
    index = np.frombuffer(body, dtype="<u8").reshape(n_chunks, 2)
    present = index[:, 0] != MISSING
    data_end = shard_size - want
    if present.any() and int((index[present, 0] + index[present, 1]).max()) > data_end:
        raise ValueError("shard index points past the end of the shard (truncated shard)")
    return index
