"""The one chunk-read path: shard handles, an index cache, ranged reads grouped per shard,
and decode-into. ``Store.read`` (store/reader.py), the loader's ``BlockFetcher``
(loader/fetch.py) and the writer's resume of a partial shard (store/writer.py) all read
stored rows through :class:`ChunkReader`.

Units: rows are counted from the segment's start. Chunk ``c`` of array ``a`` holds rows
``[c * a.chunk_rows, (c + 1) * a.chunk_rows)`` and lives in shard ``c // per_shard`` at
slot ``c % per_shard`` (``per_shard = shard_rows // a.chunk_rows``). A shard's index gives
each slot's byte range ``(offset, nbytes)`` inside the shard object (see shard.py).

Reads: the chunks wanted from one shard are planned as ranged gets (:meth:`ChunkReader.gets`).
Ranges no further apart than the storage's ``max_gap_bytes`` are merged into one get while
it stays within the storage's ``max_get_bytes`` (zarr's ``get_ranges`` with
``max_gap_bytes``). Each get is read and its chunks decoded by the same task, so the
compressed bytes are still in cache when they are decoded. On local disk a get costs a
system call, not a round trip, so ``max_get_bytes`` is 0 there: one ``pread`` per chunk
(``Store.read`` of 200 MB of incompressible bf16 on 2 cores: 0.11-0.16 s with a pread per
chunk, 0.20-0.23 s with gets merged up to 64 MiB, whose bytes leave the cache before they
are decoded); object storage will set both limits, here and nowhere else.

Handles: an open shard (its :class:`Blob`, which pins one version of the object, and its
parsed index) is a :class:`ShardHandle`. With a :class:`HandleCache` handles stay open
across reads (the loader: opening and parsing the index for every block cost ~10% of a
block's decode); without one each is closed when released (``Store.read``, the writer).
Indexes of full shards are cached: a full shard is never rewritten.

Errors: a committed shard that is missing, an index that is short, fails its crc32c or
points past the shard, a chunk missing from its index, short, or failing its crc32c or
decode: :class:`CorruptDataError` naming the segment, array and chunk (and shard), never
zeros. A reader only ever reads rows that a commit record names.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, wait
from typing import Callable, Sequence

import numpy as np

from .errors import CorruptDataError, MissingObjectError
from .format import ArraySpec, Schema, array_codec, shard_key
from .shard import MISSING, index_nbytes, parse_index
from .storage import Blob, Storage


def coalesce(ranges: Sequence[tuple[int, int]], max_gap: int, max_bytes: int) -> list[tuple[int, int, list[int]]]:
    """Merge byte ranges ``(offset, nbytes)`` into gets ``(start, end, members)``.

    Ranges are taken in offset order; one joins the current get when the gap before it
    is at most ``max_gap`` bytes and the merged get stays within ``max_bytes`` (0: never
    merge). ``members`` are indexes into ``ranges``, in offset order."""
    gets: list[list] = []
    for i in sorted(range(len(ranges)), key=lambda i: ranges[i][0]):
        off, n = ranges[i]
        if gets and off - gets[-1][1] <= max_gap and max(gets[-1][1], off + n) - gets[-1][0] <= max_bytes:
            gets[-1][1] = max(gets[-1][1], off + n)
            gets[-1][2].append(i)
        else:
            gets.append([off, off + n, [i]])
    return [(s, e, m) for s, e, m in gets]


class ShardHandle:
    """An open shard object, its parsed index, and how many threads are reading it."""

    __slots__ = ("blob", "index", "users", "dead", "cached")

    def __init__(self, blob: Blob, index: np.ndarray, cached: bool):
        self.blob, self.index, self.users, self.dead, self.cached = blob, index, 0, False, cached


class HandleCache:
    """Open shard handles kept across reads, least recently used first out, at most
    ``max_open`` (file descriptors are a bounded resource). Shared by the readers of every
    segment of one snapshot; a handle evicted while in use is closed by its last user."""

    def __init__(self, max_open: int = 64):
        self.max_open = max_open
        self._lock = threading.Lock()
        self._open: OrderedDict[tuple, ShardHandle] = OrderedDict()

    def get(self, key: tuple, opener: Callable[[], ShardHandle]) -> ShardHandle:
        with self._lock:
            h = self._open.get(key)
            if h is not None:
                self._open.move_to_end(key)
                h.users += 1
                return h
        h = opener()  # outside the lock: opening reads the index
        with self._lock:
            if key in self._open:  # another thread opened it meanwhile: use that one
                h.blob.close()
                h = self._open[key]
                self._open.move_to_end(key)
            else:
                self._open[key] = h
                while len(self._open) > self.max_open:
                    _, old = self._open.popitem(last=False)
                    old.dead = True
                    if not old.users:
                        old.blob.close()
            h.users += 1
        return h

    def release(self, h: ShardHandle) -> None:
        with self._lock:
            h.users -= 1
            if h.dead and not h.users:
                h.blob.close()

    def close(self) -> None:
        with self._lock:
            for h in self._open.values():
                h.dead = True
                if not h.users:
                    h.blob.close()
            self._open.clear()


class ChunkReader:
    """Reads and decodes the chunks of committed rows ``[0, rows)`` of one segment."""

    def __init__(self, storage: Storage, schema: Schema, segment: str, rows: int, handles: HandleCache | None = None):
        self.storage = storage
        self.schema = schema
        self.segment = segment
        self.rows = rows
        self.handles = handles
        self._index_cache: dict[tuple[str, int], np.ndarray] = {}
        self._cache_lock = threading.Lock()

    # -- shards ----------------------------------------------------------------------------

    def per_shard(self, a: ArraySpec) -> int:
        return self.schema.shard_rows // a.chunk_rows

    def acquire(self, a: ArraySpec, shard: int) -> ShardHandle:
        """Open shard ``shard`` of ``a`` (or take the cached handle); pair with :meth:`release`."""
        if self.handles is None:
            h = self._open(a, shard)
            h.users = 1
            return h
        return self.handles.get((self.segment, a.path, shard), lambda: self._open(a, shard, cached=True))

    def release(self, h: ShardHandle) -> None:
        if h.cached:
            self.handles.release(h)
        else:
            h.blob.close()

    def _open(self, a: ArraySpec, shard: int, cached: bool = False) -> ShardHandle:
        # A partial shard (the segment's last) may be replaced by its writer while it is
        # read: where a get is a round trip, it is fetched whole now, one version by
        # construction; full shards are never rewritten and are read in ranged gets.
        partial = (shard + 1) * self.schema.shard_rows > self.rows
        try:
            blob = self.storage.open_blob(shard_key(self.segment, a, shard), whole=partial)
        except MissingObjectError as e:
            # A committed shard that is missing is damage; any other failure (a request that
            # failed after its retries, a timeout) is raised as it is: it names the cure.
            raise CorruptDataError(
                f"segment {self.segment!r}, array {a.path!r}, shard {shard} is missing though "
                f"committed ({e}); the store is damaged"
            ) from None
        try:
            return ShardHandle(blob, self.shard_index(a, shard, blob), cached)
        except BaseException:
            blob.close()
            raise

    def shard_index(self, a: ArraySpec, shard: int, blob: Blob) -> np.ndarray:
        """The parsed ``[per_shard, 2]`` uint64 index of one shard, cached once the shard is
        full (never rewritten)."""
        key = (a.path, shard)
        R = self.schema.shard_rows
        full = (shard + 1) * R <= self.rows
        if full:
            with self._cache_lock:
                hit = self._index_cache.get(key)
            if hit is not None:
                return hit
        n_chunks = R // a.chunk_rows
        want = index_nbytes(n_chunks)
        tail = blob.pread(max(0, blob.size - want), want) if blob.size >= want else b""
        try:
            index = parse_index(tail, n_chunks, blob.size)
        except ValueError as e:
            raise CorruptDataError(
                f"segment {self.segment!r}, array {a.path!r}, shard {shard}: {e}; the store is "
                "damaged, re-capture or restore this segment"
            ) from None
        if full:
            with self._cache_lock:
                self._index_cache[key] = index
        return index

    # -- chunks ----------------------------------------------------------------------------

    def where(self, a: ArraySpec, chunk: int) -> str:
        lo = chunk * a.chunk_rows
        return (
            f"segment {self.segment!r}, array {a.path!r}, chunk {chunk} "
            f"(rows {lo}-{lo + a.chunk_rows - 1}, shard {chunk // self.per_shard(a)})"
        )

    def _ranges(self, h: ShardHandle, a: ArraySpec, chunks: Sequence[int]) -> list[tuple[int, int]]:
        per_shard = self.per_shard(a)
        ranges = []
        for c in chunks:
            off, nbytes = h.index[c % per_shard]
            if off == MISSING:
                raise CorruptDataError(
                    f"{self.where(a, c)} is missing from its shard index though committed; the store is damaged"
                )
            ranges.append((int(off), int(nbytes)))
        return ranges

    def gets(self, h: ShardHandle, a: ArraySpec, chunks: Sequence[int]) -> list[list[int]]:
        """``chunks`` (all in ``h``'s shard) grouped into the ranged gets that fetch them,
        in offset order; each group is one :meth:`read`."""
        ranges = self._ranges(h, a, chunks)
        st = self.storage
        return [[chunks[i] for i in m] for _, _, m in coalesce(ranges, st.max_gap_bytes, st.max_get_bytes)]

    def read(self, h: ShardHandle, a: ArraySpec, chunks: Sequence[int]) -> list[memoryview]:
        """The stored bytes of ``chunks`` (all in ``h``'s shard), in as few ranged gets as
        the storage's limits allow; one view per chunk, in the given order."""
        ranges = self._ranges(h, a, chunks)
        out: list[memoryview | None] = [None] * len(chunks)
        st = self.storage
        for start, end, members in coalesce(ranges, st.max_gap_bytes, st.max_get_bytes):
            got = memoryview(h.blob.pread(start, end - start))
            for i in members:
                off, nbytes = ranges[i]
                data = got[off - start : off - start + nbytes]
                if len(data) != nbytes:
                    raise CorruptDataError(
                        f"{self.where(a, chunks[i])} is short: {len(data)} of {nbytes} bytes; the store is damaged"
                    )
                out[i] = data
        return out

    def read_decoded(self, h: ShardHandle, a: ArraySpec, chunks: Sequence[int]) -> list[np.ndarray]:
        """Read ``chunks`` of ``h``'s shard and decode each into a new array."""
        return [self.decode(a, c, data) for c, data in zip(chunks, self.read(h, a, chunks))]

    def decode(self, a: ArraySpec, chunk: int, data, out: np.ndarray | None = None) -> np.ndarray:
        """Verify and decode the stored bytes of chunk ``chunk`` -> ``[chunk_rows, ...]``, into
        ``out`` (C-contiguous, that shape and dtype) when given."""
        if out is None:
            out = np.empty((a.chunk_rows, *a.row_shape), dtype=a.dtype)
        codec = array_codec(self.schema.codec, a)
        try:
            codec.decode_into(data, out)
        except ValueError as e:
            raise self.decode_error(a, chunk, str(e)) from None
        return out

    def decode_error(self, a: ArraySpec, chunk: int, reason: str) -> CorruptDataError:
        """The error for chunk ``chunk`` of ``a`` failing its checksum or decode."""
        return CorruptDataError(
            f"{self.where(a, chunk)} fails to decode ({reason}); the store is damaged, re-capture or restore it"
        )

    def read_chunk(self, h: ShardHandle, a: ArraySpec, chunk: int, out: np.ndarray | None = None) -> np.ndarray:
        """Read and decode one chunk of ``h``'s shard (into ``out`` when given)."""
        (stored,) = self.read(h, a, [chunk])
        return self.decode(a, chunk, stored, out)

    def read_rows(self, a: ArraySpec, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` of array ``a``, on the calling thread (flag columns, resume)."""
        out = np.empty((hi - lo, *a.row_shape), dtype=a.dtype)
        if hi <= lo:
            return out
        per_shard = self.per_shard(a)
        first, last = lo // a.chunk_rows, (hi - 1) // a.chunk_rows
        for s in range(first // per_shard, last // per_shard + 1):
            h = self.acquire(a, s)
            try:
                wanted = list(range(max(first, s * per_shard), min(last + 1, (s + 1) * per_shard)))
                for group in self.gets(h, a, wanted):
                    for c, block in zip(group, self.read_decoded(h, a, group)):
                        c_lo = c * a.chunk_rows
                        r0, r1 = max(lo, c_lo), min(hi, c_lo + a.chunk_rows)
                        out[r0 - lo : r1 - lo] = block[r0 - c_lo : r1 - c_lo]
            finally:
                self.release(h)
        return out


def decode_chunks(
    pool: Executor, readers: Sequence[ChunkReader], a: ArraySpec, chunks: Sequence[tuple[int, int]]
) -> list[np.ndarray]:
    """Decode ``(segment, chunk)`` pairs of array ``a`` in ``pool`` -> one ``[chunk_rows, ...]``
    array per pair, in order. ``segment`` indexes ``readers``.

    Each shard is opened once (one pool task per shard: open, read and parse the index),
    then every planned get is one task that reads it and decodes its chunks (the codec
    releases the GIL)."""
    by_shard: dict[tuple[int, int], list[int]] = {}
    for s, c in chunks:
        by_shard.setdefault((s, c // readers[s].per_shard(a)), []).append(c)
    handles: dict[tuple[int, int], ShardHandle] = {}

    def acquire(key):
        handles[key] = readers[key[0]].acquire(a, key[1])

    def fetch(s, h, group):
        return [((s, c), x) for c, x in zip(group, readers[s].read_decoded(h, a, group))]

    try:
        futures = [pool.submit(acquire, key) for key in by_shard]
        _wait_all(futures)
        futures = [
            pool.submit(fetch, key[0], handles[key], group)
            for key, cs in by_shard.items()
            for group in readers[key[0]].gets(handles[key], a, cs)
        ]
        _wait_all(futures)
        decoded = dict(pair for f in futures for pair in f.result())
        return [decoded[sc] for sc in chunks]
    finally:
        for key, h in handles.items():
            readers[key[0]].release(h)


def _wait_all(futures: list[Future]) -> None:
    """Wait for ``futures``; raise the first error. After a failure the tasks not yet started
    are cancelled (against a server that stopped answering, each would wait out its own
    timeout and retries: a read of many shards would take that many times longer to say so)
    and the running ones are waited for: none is left running against a handle that the
    caller then releases."""
    _, pending = wait(futures, return_when=FIRST_EXCEPTION)
    if pending:  # something failed
        for f in pending:
            f.cancel()
        wait(pending)
    for f in futures:
        if not f.cancelled() and f.exception() is not None:
            raise f.exception()
