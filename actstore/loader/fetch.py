"""Reading blocks for the loader: whole chunks through the shard index, decoded in a pool.

A block is ``block_rows`` rows of one segment, and ``block_rows`` is the largest inner-chunk
row count of the hooks read, so for every activation array a block is one or more whole
chunks: they are decoded straight into one buffer, with no copy. The small 1-D arrays
(per-row scales of fp8/int8, token columns) have one chunk per shard; that chunk is
decoded once and kept in a small cache, and a block refers to its rows by offset.

Everything here runs on the pool's threads: ``os.pread`` and the Blosc decoder release the
GIL, so ``threads`` workers decode ``threads`` chunks at once. A chunk that is missing,
short or fails its checksum or decode raises :class:`CorruptDataError` naming the segment,
array and chunk (from ``SegmentReader.decode_chunk``); nothing is ever read as zeros.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..store.errors import CorruptDataError, StoreError
from ..store.format import ArraySpec, shard_key
from ..store.reader import SegmentReader
from .plan import Block


class BlockFetcher:
    """Decodes blocks of ``arrays`` from ``segments`` on ``threads`` worker threads.

    ``fetch(block)`` returns ``{path: (source, offset)}``: ``source`` is a 2-D C-contiguous
    array (``[rows, d]``, or ``[rows, 1]`` for a 1-D array) and row ``i`` of the block is
    ``source[offset + i]``.
    """

    def __init__(self, segments: list[SegmentReader], arrays: list[ArraySpec], block_rows: int, threads: int,
                 cache_chunks: int = 256):
        self.segments = segments
        self.arrays = arrays
        self.block_rows = block_rows
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="actstore-load")
        self._cache: OrderedDict[tuple, Future] = OrderedDict()
        self._cache_cap = cache_chunks
        self._lock = threading.Lock()
        for seg in segments:
            for a in arrays:
                seg.check_array(a)

    def submit(self, block: Block) -> Future:
        return self.pool.submit(self.fetch, block)

    def fetch(self, block: Block) -> dict[str, tuple[np.ndarray, int]]:
        seg = self.segments[block.segment]
        out = {}
        for a in self.arrays:
            if a.chunk_rows <= self.block_rows:
                out[a.path] = (self._decode_block(seg, a, block), 0)
            else:
                c = block.start // a.chunk_rows
                chunk = self._cached_chunk(block.segment, a, c)
                out[a.path] = (chunk, block.start - c * a.chunk_rows)
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._cache.clear()

    # -- internals ---------------------------------------------------------------------

    def _open(self, seg: SegmentReader, a: ArraySpec, shard: int):
        try:
            return seg.storage.open_blob(shard_key(seg.name, a, shard))
        except CorruptDataError:
            raise
        except StoreError as e:
            raise CorruptDataError(f"segment {seg.name!r}, array {a.path!r}, shard {shard} is missing though "
                                   f"committed ({e}); the store is damaged") from None

    def _decode_block(self, seg: SegmentReader, a: ArraySpec, block: Block) -> np.ndarray:
        """Whole chunks covering the block -> ``[k * chunk_rows, width]`` (rows past the
        block's end are the chunk's padding, never read)."""
        cr = a.chunk_rows
        first = block.start // cr
        n_chunks = -(-block.rows // cr)
        buf = np.empty((n_chunks * cr, *a.row_shape), dtype=a.dtype)
        per_shard = seg.schema.shard_rows // cr
        blob, open_shard = None, -1
        try:
            for k in range(n_chunks):
                c = first + k
                if c // per_shard != open_shard:
                    if blob is not None:
                        blob.close()
                    open_shard = c // per_shard
                    blob = self._open(seg, a, open_shard)
                    index = seg.shard_index(a, open_shard, blob)
                seg.decode_chunk(a, c, blob, index, out=buf[k * cr:(k + 1) * cr])
        finally:
            if blob is not None:
                blob.close()
        return buf.reshape(buf.shape[0], -1)

    def _cached_chunk(self, s: int, a: ArraySpec, c: int) -> np.ndarray:
        """Decoded chunk ``c`` of a 1-D array as ``[chunk_rows, 1]``, decoded once while cached."""
        key = (s, a.path, c)
        with self._lock:
            fut = self._cache.get(key)
            owner = fut is None
            if owner:
                fut = Future()
                self._cache[key] = fut
                while len(self._cache) > self._cache_cap:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
        if owner:
            seg = self.segments[s]
            per_shard = seg.schema.shard_rows // a.chunk_rows
            try:
                with self._open(seg, a, c // per_shard) as blob:
                    chunk = seg.decode_chunk(a, c, blob, seg.shard_index(a, c // per_shard, blob))
                fut.set_result(chunk.reshape(chunk.shape[0], -1))
            except BaseException as e:
                fut.set_exception(e)
                with self._lock:
                    self._cache.pop(key, None)
                raise
        return fut.result()

