"""Reading blocks for the loader: whole chunks through the shard index, decoded in a pool
and scattered straight into the batches.

A block is ``block_rows`` rows of one segment, and ``block_rows`` is the largest inner-chunk
row count of the hooks read, so for every activation array a block is one or more whole
chunks. Each chunk is decoded into a per-thread scratch buffer and its wanted rows are
scattered to their shuffled places in the batch buffers with the native ``scatter_rows``
while the chunk is still in cache. The small 1-D arrays (per-row scales of fp8/int8/q16, token
columns) have one chunk per shard; that chunk is decoded once, kept in a small cache, and
scattered from there.

Everything here runs on the pool's threads: ``os.pread`` and the Blosc decoder release the
GIL, so ``threads`` workers decode ``threads`` chunks at once. A chunk that is missing,
short or fails its checksum or decode raises :class:`CorruptDataError` naming the segment,
array and chunk (from ``store/chunks.py``, the one chunk-read path, which also keeps the
open shard handles and their parsed indexes); nothing is ever read as zeros.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .. import _native
from ..store.chunks import ChunkReader, HandleCache
from ..store.format import ArraySpec
from ..store.segment import SegmentReader
from .plan import Block


class BlockFetcher:
    """Decodes blocks of ``arrays`` from ``segments`` on ``threads`` worker threads and
    scatters their rows into batch buffers (:meth:`submit`). Open shard objects with their
    parsed indexes and the decoded 1-D chunks are kept between blocks."""

    def __init__(
        self,
        segments: list[SegmentReader],
        arrays: list[ArraySpec],
        block_rows: int,
        threads: int,
        cache_chunks: int = 256,
        widen: frozenset[str] = frozenset(),
    ):
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
        # Open shards stay open across blocks (opening and parsing the index for every block
        # cost ~10% of a block's decode), at most 64 over all segments.
        self._handles = HandleCache(max_open=64)
        self._readers = [ChunkReader(seg.storage, seg.schema, seg.name, seg.rows, self._handles) for seg in segments]
        for seg in segments:
            for a in arrays:
                seg.check_array(a)
        # Arrays read through the fused native decode-and-scatter (one GIL release per get
        # instead of one per pread, crc32c check, decode and scatter):
        # path -> (chunk_bytes, row_bytes, blosc, widen). Others take the per-chunk path.
        codec = segments[0].schema.codec if segments else None
        self._codecs: dict[str, tuple[int, int, bool, bool]] = {}
        if codec is not None and _native.decode_scatter_ready(codec.cname is not None):
            for a in arrays:
                if a.chunk_rows <= block_rows:
                    row_bytes = a.dtype.itemsize * (int(np.prod(a.row_shape)) if a.row_shape else 1)
                    wide = a.path in widen and a.dtype.itemsize == 2
                    self._codecs[a.path] = (a.chunk_rows * row_bytes, row_bytes, codec.cname is not None, wide)

    def submit(
        self,
        block: Block,
        local: np.ndarray,
        dst_ids: np.ndarray,
        dst_rows: np.ndarray,
        dsts: dict[str, list[np.ndarray]],
    ) -> Future:
        return self.pool.submit(self.scatter_block, block, local, dst_ids, dst_rows, dsts)

    def scatter_block(
        self,
        block: Block,
        local: np.ndarray,
        dst_ids: np.ndarray,
        dst_rows: np.ndarray,
        dsts: dict[str, list[np.ndarray]],
    ) -> None:
        """Decode the chunks of ``block`` and send row ``local[i]`` (ascending, counted from
        the block's start) of every array to row ``dst_rows[i]`` of ``dsts[path][dst_ids[i]]``.

        Each chunk is decoded into a per-thread scratch buffer and scattered while it is
        still in cache, so decoded activations cross DRAM once, into the batches (a
        separate decode-to-memory then gather pass measured ~40% slower on 2 cores)."""
        reader = self._readers[block.segment]
        for a in self.arrays:
            if a.chunk_rows <= self.block_rows:
                self._scatter_dense(reader, block, a, local, dst_ids, dst_rows, dsts[a.path])
            else:
                c = block.start // a.chunk_rows
                chunk = self._cached_chunk(block.segment, a, c)
                _native.scatter_rows(
                    chunk, local + (block.start - c * a.chunk_rows), dsts[a.path], dst_ids, dst_rows, threads=1
                )

    def _scatter_dense(
        self,
        reader: ChunkReader,
        block: Block,
        a: ArraySpec,
        local: np.ndarray,
        dst_ids: np.ndarray,
        dst_rows: np.ndarray,
        dsts: list[np.ndarray],
    ) -> None:
        cr = a.chunk_rows
        first = block.start // cr
        n_chunks = -(-block.rows // cr)
        per_shard = reader.per_shard(a)
        # Rows of chunk k are local rows [k*cr, (k+1)*cr): split the ascending list once.
        if n_chunks == 1:
            cuts, within = (0, local.size), local
        else:
            cuts, within = np.searchsorted(local, np.arange(n_chunks + 1, dtype=np.int64) * cr), local % cr
        codec = self._codecs.get(a.path)
        fused = codec is not None
        for shard in range(first // per_shard, (first + n_chunks - 1) // per_shard + 1):
            # Chunks with no wanted row (resume point, filtered flags) are not read.
            wanted = [
                c
                for c in range(max(first, shard * per_shard), min(first + n_chunks, (shard + 1) * per_shard))
                if cuts[c - first] < cuts[c - first + 1]
            ]
            if not wanted:
                continue
            handle = reader.acquire(a, shard)
            try:
                # One get at a time (one chunk on local disk), decoded right after it is read.
                for group in reader.gets(handle, a, wanted):
                    if fused:
                        # crc32c, decode and scatter of the whole get in one native call.
                        spans = np.array([(cuts[c - first], cuts[c - first + 1]) for c in group], dtype=np.int64)
                        bad = _native.decode_scatter(
                            reader.read(handle, a, group), spans, within, dsts, dst_ids, dst_rows, *codec
                        )
                        if bad is not None:
                            raise reader.decode_error(a, group[bad[0]], bad[1])
                        continue
                    scratch = self._scratch(a)
                    for c, data in zip(group, reader.read(handle, a, group)):
                        k = c - first
                        lo, hi = cuts[k], cuts[k + 1]
                        reader.decode(a, c, data, out=scratch.reshape(cr, *a.row_shape))
                        src = scratch
                        if a.path in self.widen:
                            src = _native.bf16_to_fp32(scratch, out=self._scratch(a, np.float32), threads=1)
                        _native.scatter_rows(
                            src, local[lo:hi] - k * cr, dsts, dst_ids[lo:hi], dst_rows[lo:hi], threads=1
                        )
            finally:
                reader.release(handle)

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
        self._handles.close()

    # -- internals ---------------------------------------------------------------------

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
            reader = self._readers[s]
            try:
                h = reader.acquire(a, c // reader.per_shard(a))
                try:
                    chunk = reader.read_chunk(h, a, c)
                finally:
                    reader.release(h)
                fut.set_result(chunk.reshape(chunk.shape[0], -1))
            except BaseException as e:
                fut.set_exception(e)
                with self._lock:
                    self._cache.pop(key, None)
                raise
        return fut.result()
