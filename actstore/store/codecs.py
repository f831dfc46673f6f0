"""Chunk codecs: the byte-level encoding of one inner chunk, identical to what zarr writes.

A stored inner chunk is ``compress(raw little-endian bytes) + crc32c`` where the crc32c
(4 bytes, little endian) covers the compressed bytes. That is zarr v3's codec chain
``[bytes(little), blosc(...), crc32c]`` (or ``[bytes, crc32c]`` uncompressed), so any
zarr v3 reader decodes and verifies our chunks, and a flipped bit is an error, never
silently wrong data.

Presets (measured on all-MiniLM-L6-v2 bf16 activations, see benchmarks/results/):

- ``zstd`` (default): Blosc zstd clevel 1, byte shuffle, blocksize 1 MiB. Blosc clevel 1
  runs zstd level 1; byte shuffle separates the bf16 exponent bytes, which carry most of
  the redundancy.
- ``lz4``: Blosc lz4 clevel 1, bit shuffle, blocksize 1 MiB: faster, slightly larger.
- ``none``: raw bytes (plus crc32c), for the fastest reads on fast disks.
"""

from __future__ import annotations

from dataclasses import dataclass

import google_crc32c
import numcodecs.blosc
import numpy as np
from numcodecs import Blosc

from .errors import StoreError

# Our own thread pools call the codec from many threads; blosc's global-context mode
# serializes them on one lock. False makes every call use its own context (no lock,
# GIL released inside numcodecs).
numcodecs.blosc.use_threads = False

_BLOSC_SHUFFLE = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}

# Blosc's default block size (typesize- and clevel-dependent, ~32-256 KiB) cost both ratio
# and speed on bf16 activations (docs/ARCHITECTURE.md); 1 MiB blocks were best.
BLOCKSIZE = 1 << 20


class ChecksumError(ValueError):
    pass


def crc32c_append(data: bytes) -> bytes:
    """``data`` followed by its crc32c as 4 little-endian bytes (zarr's crc32c codec)."""
    return data + np.uint32(google_crc32c.value(data)).tobytes()


def crc32c_strip(data: bytes) -> np.ndarray:
    """Verify and remove the trailing crc32c; returns the body as a read-only uint8
    view (no copy). Raises :class:`ChecksumError` on mismatch."""
    # google_crc32c takes read-only buffers only; frombuffer of bytes is one, without a copy.
    arr = np.frombuffer(data, dtype=np.uint8)
    if arr.size < 4:
        raise ChecksumError(f"only {arr.size} bytes, shorter than its checksum")
    body = arr[:-4]
    if np.uint32(google_crc32c.value(body)).tobytes() != arr[-4:].tobytes():
        raise ChecksumError("crc32c mismatch")
    return body


@dataclass(frozen=True)
class ChunkCodec:
    """One inner-chunk codec. ``cname`` None means uncompressed.

    ``typesize`` is the element size in bytes (2 for bf16 bits); Blosc shuffles by it.
    """

    cname: str | None = "zstd"
    clevel: int = 1
    shuffle: str = "shuffle"
    blocksize: int = BLOCKSIZE
    typesize: int = 2

    def __post_init__(self):
        if self.cname is not None and self.cname not in ("zstd", "lz4", "lz4hc", "blosclz", "zlib"):
            raise StoreError(f"unknown blosc cname {self.cname!r}")
        if self.shuffle not in _BLOSC_SHUFFLE:
            raise StoreError(f"unknown blosc shuffle {self.shuffle!r}: use one of {sorted(_BLOSC_SHUFFLE)}")

    @property
    def _blosc(self) -> Blosc:
        # Blosc objects are cheap, stateless wrappers; build one per call so that a frozen
        # dataclass stays hashable and thread-safe.
        return Blosc(
            self.cname, self.clevel, _BLOSC_SHUFFLE[self.shuffle], blocksize=self.blocksize, typesize=self.typesize
        )

    def with_typesize(self, typesize: int) -> "ChunkCodec":
        """This codec for elements of ``typesize`` bytes."""
        return ChunkCodec(self.cname, self.clevel, self.shuffle, self.blocksize, typesize)

    def encode(self, raw: np.ndarray) -> bytes:
        """Encode a C-contiguous array's bytes; returns the stored chunk (with crc32c)."""
        buf = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
        body = buf.tobytes() if self.cname is None else self._blosc.encode(buf)
        return crc32c_append(body)

    def decode_into(self, stored: bytes, out: np.ndarray) -> None:
        """Verify and decode one stored chunk into ``out`` (C-contiguous, exact size).

        Raises :class:`ChecksumError` or ``ValueError`` with a short reason; the caller
        adds which segment, array and chunk it was.
        """
        body = crc32c_strip(stored)
        dst = out.view(np.uint8).reshape(-1)
        if self.cname is None:
            if len(body) != dst.nbytes:
                raise ValueError(f"holds {len(body)} bytes, expected {dst.nbytes}")
            dst[:] = body
            return
        # Blosc1 frame header (16 bytes): version, versionlz, flags, typesize, then
        # little-endian uint32 nbytes (decoded size), blocksize, cbytes (frame size).
        if body.size < 16:
            raise ValueError(f"only {body.size} bytes, shorter than a blosc header")
        nbytes, _, cbytes = np.frombuffer(body[4:16], dtype="<u4")
        if cbytes != body.size:
            raise ValueError(f"blosc frame says {cbytes} bytes, holds {body.size}")
        if nbytes != dst.nbytes:
            raise ValueError(f"decodes to {nbytes} bytes, expected {dst.nbytes}")
        self._blosc.decode(body, out=dst)

    def to_zarr(self) -> list[dict]:
        """The zarr v3 inner-chunk codec chain for this codec."""
        chain: list[dict] = [{"name": "bytes", "configuration": {"endian": "little"}}]
        if self.cname is not None:
            chain.append(
                {
                    "name": "blosc",
                    "configuration": {
                        "cname": self.cname,
                        "clevel": self.clevel,
                        "shuffle": self.shuffle,
                        "typesize": self.typesize,
                        "blocksize": self.blocksize,
                    },
                }
            )
        chain.append({"name": "crc32c"})
        return chain

    def describe(self) -> str:
        if self.cname is None:
            return "none"
        return f"blosc {self.cname} clevel={self.clevel} {self.shuffle} blocksize={self.blocksize >> 10}KiB"


PRESETS: dict[str, ChunkCodec] = {
    "zstd": ChunkCodec("zstd", 1, "shuffle"),
    "lz4": ChunkCodec("lz4", 1, "bitshuffle"),
    "none": ChunkCodec(None),
}


def codec_from_preset(name: str) -> ChunkCodec:
    try:
        return PRESETS[name]
    except KeyError:
        raise StoreError(f"unknown codec {name!r}: use one of {', '.join(PRESETS)}") from None


def codec_from_zarr(chain: list[dict]) -> ChunkCodec:
    """Parse the inner codec chain that :meth:`ChunkCodec.to_zarr` wrote."""
    names = [c.get("name") for c in chain]
    if names == ["bytes", "crc32c"]:
        return ChunkCodec(None)
    if names == ["bytes", "blosc", "crc32c"]:
        cfg = chain[1]["configuration"]
        return ChunkCodec(cfg["cname"], int(cfg["clevel"]), cfg["shuffle"], int(cfg["blocksize"]), int(cfg["typesize"]))
    raise StoreError(f"unsupported inner codec chain {names}: this store was not written by actstore format v1")
