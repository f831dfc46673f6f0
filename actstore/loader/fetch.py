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
                 cache_chunks: int = 256, keep_free: int = 3):
        self.segments = segments
        self.arrays = arrays
        self.block_rows = block_rows
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="actstore-load")
        self._cache: OrderedDict[tuple, Future] = OrderedDict()
        self._cache_cap = cache_chunks
        self._lock = threading.Lock()
        # Window slabs handed back by release(), reused by later windows. Decoding into
        # fresh memory page-faults on every page (glibc returns big blocks to the OS):
        # blosc into fresh 1.5 MiB arrays cost 15-100% more than into reused ones here.
        # A slab per window is also >= 4 MiB, for which numpy asks for transparent huge
        # pages, so even the first window faults 512x less often.
        self._free: dict[str, list[np.ndarray]] = {}
        self._keep_free = keep_free
        self._shards: OrderedDict[tuple, _Shard] = OrderedDict()
        self._max_open = 64
        for seg in segments:
            for a in arrays:
                seg.check_array(a)

    def submit_window(self, blocks: list[Block]) -> tuple[list[Future], dict[str, np.ndarray]]:
        """Decode ``blocks`` on the pool into one slab per activation array.

        Returns the futures of :meth:`fetch` (in block order) and the slabs, to hand back
        with :meth:`release` once nothing reads the window any more."""
        slabs, outs = {}, [{} for _ in blocks]
        for a in self.arrays:
            if a.chunk_rows > self.block_rows:
                continue
            sizes = [-(-b.rows // a.chunk_rows) * a.chunk_rows for b in blocks]
            base = self._take(a, sum(sizes))
            slabs[a.path] = base
            off = 0
            for out, size in zip(outs, sizes):
                out[a.path] = base[off:off + size]
                off += size
        return [self.pool.submit(self.fetch, b, out) for b, out in zip(blocks, outs)], slabs

    def fetch(self, block: Block, out: dict[str, np.ndarray] | None = None) -> dict[str, tuple[np.ndarray, int]]:
        """Decode one block; ``out[path]`` (``[padded rows, width]``) receives an activation array."""
        seg = self.segments[block.segment]
        got = {}
        for a in self.arrays:
            if a.chunk_rows <= self.block_rows:
                buf = out[a.path] if out is not None else self._alloc(a, -(-block.rows // a.chunk_rows) * a.chunk_rows)
                got[a.path] = (self._decode_block(seg, a, block, buf), 0)
            else:
                c = block.start // a.chunk_rows
                chunk = self._cached_chunk(block.segment, a, c)
                got[a.path] = (chunk, block.start - c * a.chunk_rows)
        return got

    def release(self, slabs: dict[str, np.ndarray]) -> None:
        """Hand a window's slabs back for reuse; nothing may read them afterwards."""
        with self._lock:
            for path, base in slabs.items():
                free = self._free.setdefault(path, [])
                if len(free) < self._keep_free:
                    free.append(base)

    def _alloc(self, a: ArraySpec, rows: int) -> np.ndarray:
        return np.empty((rows, int(np.prod(a.row_shape)) if a.row_shape else 1), dtype=a.dtype)

    def _take(self, a: ArraySpec, rows: int) -> np.ndarray:
        """A free slab of at least ``rows`` rows (sliced to ``rows``), or a new one."""
        with self._lock:
            free = self._free.get(a.path, [])
            for i, base in enumerate(free):
                if base.shape[0] >= rows:
                    return free.pop(i)[:rows]
        return self._alloc(a, rows)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._cache.clear()
            self._free.clear()
            for h in self._shards.values():
                h.blob.close()
            self._shards.clear()

    # -- internals ---------------------------------------------------------------------

    def _open(self, seg: SegmentReader, a: ArraySpec, shard: int):
        try:
            return seg.storage.open_blob(shard_key(seg.name, a, shard))
        except CorruptDataError:
            raise
        except StoreError as e:
            raise CorruptDataError(f"segment {seg.name!r}, array {a.path!r}, shard {shard} is missing though "
                                   f"committed ({e}); the store is damaged") from None

    def _decode_block(self, seg: SegmentReader, a: ArraySpec, block: Block, buf: np.ndarray) -> np.ndarray:
        """Whole chunks covering the block into ``buf`` ``[k * chunk_rows, width]`` (rows past
        the block's end are the chunk's padding, never read)."""
        cr = a.chunk_rows
        first = block.start // cr
        n_chunks = -(-block.rows // cr)
        blocks = buf.reshape(n_chunks * cr, *a.row_shape)
        per_shard = seg.schema.shard_rows // cr
        for shard in range(first // per_shard, (first + n_chunks - 1) // per_shard + 1):
            handle = self._shard(block.segment, a, shard)
            try:
                for c in range(max(first, shard * per_shard), min(first + n_chunks, (shard + 1) * per_shard)):
                    k = c - first
                    seg.decode_chunk(a, c, handle.blob, handle.index, out=blocks[k * cr:(k + 1) * cr])
            finally:
                self._unuse(handle)
        return buf

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
        blob = self._open(seg, a, shard)
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
