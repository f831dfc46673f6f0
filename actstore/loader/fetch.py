"""Reading blocks for the loader: whole chunks through the shard index, decoded in a pool
and scattered straight into the batches.

A block is ``block_rows`` rows of one segment, and ``block_rows`` is the largest inner-chunk
row count of the hooks read, so for every activation array a block is one or more whole
chunks. Each chunk is decoded into a per-thread scratch buffer and its wanted rows are
scattered to their shuffled places in the batch buffers with the native ``scatter_rows``
while the chunk is still in cache. The small 1-D arrays (per-row scales of fp8/int8, token
columns) have one chunk per shard; that chunk is decoded once, kept in a small cache, and
scattered from there.

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

from .. import _native
from ..store.format import ArraySpec
from ..store.reader import SegmentReader
from .plan import Block


class BlockFetcher:
    """Decodes blocks of ``arrays`` from ``segments`` on ``threads`` worker threads and
    scatters their rows into batch buffers (:meth:`submit`). Open shard objects with their
    parsed indexes and the decoded 1-D chunks are kept between blocks."""

    def __init__(self, segments: list[SegmentReader], arrays: list[ArraySpec], block_rows: int, threads: int,
                 cache_chunks: int = 256, widen: frozenset[str] = frozenset()):
        self.segments = segments
        # Arrays of bf16 bits delivered as float32: widened per chunk, in cache, before the
        # scatter, instead of a second pass over every finished batch.
        self.widen = widen
        self.arrays = arrays
        self.block_rows = block_rows
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="actstore-load")
        self._cache: OrderedDict[tuple, Future] = OrderedDict()
        self._cache_cap = cache_chunks
        self._lock = threading.Lock()
        self._local = threading.local()
        self._shards: OrderedDict[tuple, _Shard] = OrderedDict()
        self._max_open = 64
        for seg in segments:
            for a in arrays:
                seg.check_array(a)

    def submit(self, block: Block, local: np.ndarray, dst_ids: np.ndarray, dst_rows: np.ndarray,
               dsts: dict[str, list[np.ndarray]]) -> Future:
        return self.pool.submit(self.scatter_block, block, local, dst_ids, dst_rows, dsts)

    def scatter_block(self, block: Block, local: np.ndarray, dst_ids: np.ndarray, dst_rows: np.ndarray,
                      dsts: dict[str, list[np.ndarray]]) -> None:
        """Decode the chunks of ``block`` and send row ``local[i]`` (ascending, counted from
        the block's start) of every array to row ``dst_rows[i]`` of ``dsts[path][dst_ids[i]]``.

        Each chunk is decoded into a per-thread scratch buffer and scattered while it is
        still in cache, so decoded activations cross DRAM once, into the batches (a
        separate decode-to-memory then gather pass measured ~40% slower on 2 cores)."""
        seg = self.segments[block.segment]
        for a in self.arrays:
            if a.chunk_rows <= self.block_rows:
                self._scatter_dense(seg, block, a, local, dst_ids, dst_rows, dsts[a.path])
            else:
                c = block.start // a.chunk_rows
                chunk = self._cached_chunk(block.segment, a, c)
                _native.scatter_rows(chunk, local + (block.start - c * a.chunk_rows), dsts[a.path], dst_ids,
                                     dst_rows, threads=1)

    def _scatter_dense(self, seg: SegmentReader, block: Block, a: ArraySpec, local: np.ndarray,
                       dst_ids: np.ndarray, dst_rows: np.ndarray, dsts: list[np.ndarray]) -> None:
        cr = a.chunk_rows
        first = block.start // cr
        n_chunks = -(-block.rows // cr)
        per_shard = seg.schema.shard_rows // cr
        scratch = self._scratch(a)
        # Rows of chunk k are local rows [k*cr, (k+1)*cr): split the ascending list once.
        cuts = np.searchsorted(local, np.arange(n_chunks + 1, dtype=np.int64) * cr)
        for shard in range(first // per_shard, (first + n_chunks - 1) // per_shard + 1):
            handle = self._shard(block.segment, a, shard)
            try:
                for c in range(max(first, shard * per_shard), min(first + n_chunks, (shard + 1) * per_shard)):
                    k = c - first
                    lo, hi = cuts[k], cuts[k + 1]
                    if lo == hi:
                        continue  # no wanted row here (resume point, filtered flags)
                    seg.decode_chunk(a, c, handle.blob, handle.index, out=scratch.reshape(cr, *a.row_shape))
                    src = scratch
                    if a.path in self.widen:
                        src = _native.bf16_to_fp32(scratch, out=self._scratch(a, np.float32), threads=1)
                    _native.scatter_rows(src, local[lo:hi] - k * cr, dsts, dst_ids[lo:hi], dst_rows[lo:hi], threads=1)
            finally:
                self._unuse(handle)

    def _scratch(self, a: ArraySpec, dtype=None) -> np.ndarray:
        """This thread's buffer of one chunk of ``a`` (``[chunk_rows, width]``, ``dtype`` or
        the stored one)."""
        dtype = np.dtype(dtype or a.dtype)
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = {}
        buf = bufs.get((a.path, dtype.str))
        if buf is None:
            width = int(np.prod(a.row_shape)) if a.row_shape else 1
            buf = bufs[(a.path, dtype.str)] = np.empty((a.chunk_rows, width), dtype=dtype)
        return buf

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._cache.clear()
            for h in self._shards.values():
                h.blob.close()
            self._shards.clear()

    # -- internals ---------------------------------------------------------------------

    def _shard(self, s: int, a: ArraySpec, shard: int) -> "_Shard":
        """The open shard object with its parsed index, kept open across blocks (opening
        and parsing the index for every block cost ~10% of a block's decode)."""
        key = (s, a.path, shard)
        with self._lock:
            h = self._shards.get(key)
            if h is not None:
                self._shards.move_to_end(key)
                h.users += 1
                return h
        seg = self.segments[s]
        blob = seg.open_shard(a, shard)
        try:
            h = _Shard(blob, seg.shard_index(a, shard, blob))
        except BaseException:
            blob.close()
            raise
        with self._lock:
            if key in self._shards:  # another thread opened it meanwhile: use that one
                blob.close()
                h = self._shards[key]
                self._shards.move_to_end(key)
            else:
                self._shards[key] = h
                while len(self._shards) > self._max_open:
                    _, old = self._shards.popitem(last=False)
                    old.dead = True
                    if not old.users:
                        old.blob.close()
            h.users += 1
        return h

    def _unuse(self, h: "_Shard") -> None:
        with self._lock:
            h.users -= 1
            if h.dead and not h.users:
                h.blob.close()

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
                h = self._shard(s, a, c // per_shard)
                try:
                    chunk = seg.decode_chunk(a, c, h.blob, h.index)
                finally:
                    self._unuse(h)
                fut.set_result(chunk.reshape(chunk.shape[0], -1))
            except BaseException as e:
                fut.set_exception(e)
                with self._lock:
                    self._cache.pop(key, None)
                raise
        return fut.result()



class _Shard:
    """An open shard object, its parsed index, and how many threads are reading it."""

    __slots__ = ("blob", "index", "users", "dead")

    def __init__(self, blob, index: np.ndarray):
        self.blob, self.index, self.users, self.dead = blob, index, 0, False
