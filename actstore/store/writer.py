"""The segment writer: one writer, one segment, whole shards, durable commits.

Rows are buffered until a shard (``schema.shard_rows`` rows of every array) is full; each
chunk is encoded in a thread pool as soon as its rows are all in the buffer, while the
caller goes on appending. A full shard waits, as its chunks' encodings, until the next shard
fills or the append returns; then each array's shard object is written atomically and a
commit records the row count (and the statistics of exactly those rows) in a new commit
record. So the encoding of one shard runs beside the statistics, the copies and the writes
and fsyncs of the others. Order on every commit::

    shard objects + zarr.json shapes (fsync + rename, in parallel)  ->  commits/<seq>.json

so a commit record never names rows whose bytes are not durable (a shape that runs ahead
of the shards for a moment is harmless: readers trust the commit record, not the shape). A ``commit()`` in the
middle of a shard writes the partial shard; the next flush of that shard replaces it
atomically with a longer one holding the same leading rows, so committed rows never
change. Reopening a segment resumes from its newest commit and discards the rest.

One writer per segment: where the storage has locks (local disk, memory) the writer holds
the segment's lock. Where it has none but has conditional puts (object storage) it holds
a lease (store/lease.py) and publishes every object conditionally: new objects with
If-None-Match, replaced ones (a partial shard, the arrays' zarr.json) with If-Match on the
version it last wrote or read, commit records create-only. A conflict means another
writer touched the segment: if this writer still holds the lease, the object is a dead
writer's leftover past the commit and is replaced; if not, the writer stops with one line.
A writer that took an expired lease over first writes a commit record (fencing: a stale
writer's next commit finds that sequence number taken). Storage with neither locks nor
conditional puts is refused for writing.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from .._native import default_threads
from .._version import __version__
from .chunks import ChunkReader
from .codecs import ChunkCodec
from .convert import to_stored
from .errors import AppendError, StoreError
from .format import (
    COLUMNS,
    FORMAT_VERSION,
    SEGMENTS,
    ArraySpec,
    Schema,
    array_codec,
    array_doc,
    check_segment_name,
    commit_key,
    group_doc,
    shard_key,
)
from .lease import Lease
from .manifest import load_latest_commit
from .shard import build_shard
from .stats import RunningStats
from .storage import Storage, VersionConflict

_KEEP_COMMITS = 3  # older commit records are deleted; readers only use the newest


def _as_tensor(name: str, x, d: int) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise AppendError(f"hook {name!r}: expected a torch tensor or numpy array, got {type(x).__name__}")
    if not x.is_floating_point():
        raise AppendError(f"hook {name!r}: expected floating-point activations, got dtype {x.dtype}")
    if x.dim() != 2 or x.shape[1] != d:
        raise AppendError(
            f"hook {name!r}: expected shape (n, {d}), got {tuple(x.shape)}; flatten [batch, seq, d] to [batch*seq, d]"
        )
    return x


def _as_column(name: str, v, n: int) -> np.ndarray:
    dt = np.dtype(COLUMNS[name])
    if v is None:
        return np.full(n, 0 if name == "flags" else -1, dtype=dt)
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    v = np.asarray(v)
    if v.shape != (n,):
        raise AppendError(f"column {name!r}: expected shape ({n},), got {v.shape}")
    if v.dtype.kind not in "iub":
        raise AppendError(f"column {name!r}: expected integers, got dtype {v.dtype}")
    if v.size and (v.min() < np.iinfo(dt).min or v.max() > np.iinfo(dt).max):
        raise AppendError(f"column {name!r}: values out of range for {dt}")
    return v.astype(dt, copy=False)


@dataclass
class _FullShard:
    """A full shard not yet written: its chunks' encodings (array path -> one future of
    stored chunk bytes per chunk) and, where it ends in a commit, the statistics of the rows
    up to its end (taken when it filled: later rows are in ``SegmentWriter._stats``)."""

    shard: int
    chunks: dict[str, list[Future]]
    stats: dict[str, RunningStats] | None


class SegmentWriter:
    """Appends rows for every hook of a store into one segment.

    Use :func:`actstore.create` to get one. ``committed_rows`` is what a reader sees and
    what a resumed run continues from; ``rows`` also counts appended, uncommitted rows.
    Not thread-safe: one thread appends.
    """

    def __init__(
        self,
        storage: Storage,
        schema: Schema,
        segment: str,
        *,
        threads: int | None = None,
        commit_every_shard: bool = True,
    ):
        self.storage = storage
        self.schema = schema
        self.segment = check_segment_name(segment)
        self.commit_every_shard = commit_every_shard
        self._prefix = f"{SEGMENTS}/{segment}"
        self._arrays: list[ArraySpec] = schema.arrays()
        self._codec: ChunkCodec = schema.codec
        # A writer id in every record it writes: who wrote a commit, who holds the segment.
        self.writer_id = uuid.uuid4().hex[:16]
        self._lease: Lease | None = None
        self._versions: dict[str, str] = {}  # key -> version this writer last wrote or read (leased mode)
        if not storage.supports_lock and not storage.versioned_put:
            raise StoreError(
                f"storage {storage.url} has neither locks nor conditional writes, so a second writer could tear "
                "a segment; write to local disk or to object storage with conditional PUTs, then copy"
            )
        if storage.supports_lock:
            self._lock = storage.lock(self._prefix)
        else:
            self._lock = None
            self._lease = Lease(storage, self._prefix, self.writer_id)
            self._lease.acquire()
        # Encoding is CPU work: one thread per core. Puts get their own pool, so that a
        # shard's writes never queue behind the next shard's encodings (and object storage
        # has more puts in flight than cores: a put waits on the network).
        self._pool = ThreadPoolExecutor(threads or default_threads(), thread_name_prefix="actstore-enc")
        self._puts = ThreadPoolExecutor(
            max(len(self._arrays), min(storage.inflight, 16)), thread_name_prefix="actstore-enc-put"
        )
        self._closed = False
        R = schema.shard_rows
        self._buf = {a.path: np.zeros((R, *a.row_shape), dtype=a.dtype) for a in self._arrays}
        self._buf_rows = 0  # rows buffered for shard self._shard
        self._dirty = False  # buffered rows not yet written to storage
        # Encodings of the current shard's whole chunks (path -> chunk -> future), started as
        # each chunk filled; a partial shard's rewrite reuses them.
        self._enc: dict[str, dict[int, Future]] = {a.path: {} for a in self._arrays}
        self._full: list[_FullShard] = []  # full shards to write, oldest first (at most one waits)
        self._shard = 0
        self._seq = 0
        self.committed_rows = 0
        self.bytes_written = 0  # shard bytes written by this writer (rewrites of partial shards included)
        self.resume_meta: dict | None = None  # ``meta`` of the newest commit
        self._stats = {h: RunningStats(s.d) for h, s in schema.hooks.items()}
        try:
            self._open_or_create()
        except BaseException:
            self._release()
            raise

    # -- public ----------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows appended so far, committed or not."""
        return self._shard * self.schema.shard_rows + self._buf_rows

    def append(self, acts: Mapping[str, object], *, tokens=None, doc=None, pos=None, flags=None) -> None:
        """Append ``n`` rows: ``acts[hook]`` is ``[n, d]`` float (torch or numpy, any
        device) for every hook of the store; the columns are ``[n]`` integers (token id,
        document id, position in document, flag bits) or None (stored as -1, flags 0).

        Everything is validated before anything is buffered, so a refused append leaves
        the writer unchanged.
        """
        self._check_open()
        hooks = self.schema.hooks
        missing, unknown = set(hooks) - set(acts), set(acts) - set(hooks)
        if missing or unknown:
            raise AppendError(
                f"append must give exactly the store's hooks; missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        tensors = {h: _as_tensor(h, acts[h], hooks[h].d) for h in hooks}
        ns = {t.shape[0] for t in tensors.values()}
        if len(ns) != 1:
            raise AppendError(f"hooks have different row counts {sorted(ns)}; every hook needs the same rows")
        n = ns.pop()
        cols = {"token": tokens, "doc": doc, "pos": pos, "flags": flags}
        staged: dict[str, np.ndarray] = {f"tokens/{k}": _as_column(k, v, n) for k, v in cols.items()}
        if n == 0:
            return
        for h, x in tensors.items():
            if hooks[h].dtype.scaled:
                bad = int((~torch.isfinite(x).all(dim=1)).sum())
                if bad:
                    raise AppendError(
                        f"hook {h!r}: {bad} of {n} rows hold NaN/inf, which {hooks[h].dtype.name} cannot "
                        "store; fix the model or drop those rows"
                    )
            stored, scale = to_stored(hooks[h].dtype, x)
            staged[hooks[h].array] = stored
            if scale is not None:
                staged[hooks[h].scale_array] = scale
        self._buffer(staged, tensors, n)

    def append_packed(
        self,
        arrays: Mapping[str, np.ndarray],
        stats: Mapping[str, RunningStats],
        *,
        tokens=None,
        doc=None,
        pos=None,
        flags=None,
    ) -> None:
        """Append ``n`` rows already in the stored representation, with their statistics.

        arrays: every activation array path (``acts/<hook>``, and ``scales/<hook>`` for
            fp8/int8/q16) -> ``[n, d]`` (``[n]`` for scales) numpy array of the stored dtype.
        stats: hook -> :class:`RunningStats` of exactly these rows, merged whole.
        Only for writers made with ``commit_every_shard=False``: their commits fall
        between appends, so every commit's statistics cover exactly its rows. The capture
        pipeline uses this; the conversion and statistics were done on the device.
        """
        self._check_open()
        if self.commit_every_shard:
            raise AppendError("append_packed needs a writer created with commit_every_shard=False")
        want = {a.path: a for a in self._arrays if not a.path.startswith("tokens/")}
        if set(arrays) != set(want) or set(stats) != set(self.schema.hooks):
            raise AppendError(
                f"append_packed must give arrays {sorted(want)} and stats for {sorted(self.schema.hooks)}; "
                f"got {sorted(arrays)} and {sorted(stats)}"
            )
        ns = {int(v.shape[0]) for v in arrays.values()}
        if len(ns) != 1:
            raise AppendError(f"arrays have different row counts {sorted(ns)}")
        n = ns.pop()
        for path, v in arrays.items():
            a = want[path]
            if v.dtype != a.dtype or tuple(v.shape[1:]) != a.row_shape:
                raise AppendError(
                    f"array {path!r}: expected {a.dtype} rows of shape {a.row_shape}, got {v.dtype} {tuple(v.shape)}"
                )
        cols = {"token": tokens, "doc": doc, "pos": pos, "flags": flags}
        staged = {f"tokens/{k}": _as_column(k, v, n) for k, v in cols.items()}
        staged.update(arrays)
        if n:
            self._buffer(staged, None, n)
        for h, st in stats.items():
            self._stats[h].merge(st)

    def commit(self, meta: dict | None = None) -> int:
        """Make every appended row durable and visible; returns the committed row count.

        meta: optional JSON object stored in the commit record (``meta``) and handed back
        as ``resume_meta`` when the segment is reopened; a capture records its progress
        through the data there. None keeps the newest commit's meta.
        """
        self._check_open()
        meta = self.resume_meta if meta is None else meta
        self._write_full_shards()
        total = self.rows
        shapes_written = self._dirty
        if self._dirty:
            self._write_shard(self._shard, self._buf_rows, shapes=total)
        if total == self.committed_rows and self._seq > 0 and meta == self.resume_meta:
            return total
        self._write_commit(total, meta, shapes_written=shapes_written)
        return total

    def close(self) -> None:
        """Commit and release the segment."""
        if self._closed:
            return
        try:
            self.commit()
        finally:
            self._release()

    def abort(self) -> None:
        """Release the segment without committing (uncommitted rows are discarded on resume)."""
        self._release()

    def stats(self, hook: str) -> RunningStats:
        """Statistics of the appended rows of ``hook`` in this segment (a copy)."""
        return self._stats[hook].copy()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals -------------------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise StoreError(f"segment {self.segment!r} writer is closed")

    def _release(self):
        if not self._closed:
            self._closed = True
            # Uncommitted full shards are dropped (a resume discards them anyway); their
            # encodings finish before the pools stop, so no thread reads the buffer after.
            self._full = []
            for pool in (getattr(self, "_pool", None), getattr(self, "_puts", None)):
                if pool is not None:
                    pool.shutdown(wait=True)
            if self._lock is not None:
                self._lock.release()
            if self._lease is not None:
                self._lease.release()

    # -- publishing: plain atomic puts under a lock, conditional puts under a lease --------

    def _put(self, key: str, data) -> None:
        """Write object ``key`` (new or replacing this writer's own version)."""
        if self._lease is None:
            self.storage.write_atomic(key, data)
            return
        expect = self._versions.get(key)
        try:
            self._versions[key] = self.storage.write_if(key, data, expect)
        except VersionConflict as e:
            # Someone else's version: ours to replace only while we hold the lease (a dead
            # writer's leftover past the commit); else we were taken over and stop here.
            self._lease.check()
            self._versions[key] = self.storage.write_if(key, data, e.current)

    def _put_commit(self, key: str, data) -> None:
        if self._lease is None:
            self.storage.write_atomic(key, data)
            return
        try:
            self.storage.write_if(key, data, None)  # a lost response is resolved by the read-back
        except VersionConflict:
            try:
                other = json.loads(self.storage.read(key))["attributes"]["actstore_commit"].get("writer", "?")
            except (StoreError, ValueError, KeyError, TypeError):
                other = "?"
            raise StoreError(
                f"commit {key!r} in {self.storage.url} was already written by writer {other}, not this writer "
                f"{self.writer_id}: the segment was taken over; resume it with a new writer"
            ) from None

    def _remember(self, key: str) -> None:
        """Leased mode: the version of ``key`` as it is now, before this writer replaces it."""
        if self._lease is not None:
            v = self.storage.version(key)
            if v is None:
                self._versions.pop(key, None)
            else:
                self._versions[key] = v

    def _open_or_create(self):
        st = self.storage
        # Leftovers of interrupted writes, a resumed segment's or a creation's that never
        # finished; the segment's lock is held, so none is a live writer's.
        if st.atomic_rename:
            st.discard_temporaries(self._prefix)
        if st.exists(f"{self._prefix}/zarr.json"):
            self._resume()
            return
        if not st.exists(f"{SEGMENTS}/zarr.json"):
            doc = json.dumps(group_doc()).encode()
            if st.conditional_put:  # every rank may create it; the same bytes either way
                st.write_exclusive(f"{SEGMENTS}/zarr.json", doc)
            else:
                st.write_atomic(f"{SEGMENTS}/zarr.json", doc)
        info = {
            "actstore_segment": {
                "created": _now(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "writer": self.writer_id,
            }
        }
        subs = sorted({a.path.split("/")[0] for a in self._arrays} | {"commits"})
        puts = []
        for sub in subs:
            self._remember(f"{self._prefix}/{sub}/zarr.json")  # a creation that never finished
            puts.append((f"{self._prefix}/{sub}/zarr.json", json.dumps(group_doc()).encode()))
        for a in self._arrays:
            self._remember(f"{self._prefix}/{a.path}/zarr.json")
        # The sub-groups one by one: they share the new segment folder, and two threads
        # creating it at once would each mkdir it and fsync its parent, a step count that
        # varies from run to run. Then the arrays' documents, each in its own new folder.
        for key, data in puts:
            self._put(key, data)
        self._put_all(self._shape_docs(0))
        # The segment's own zarr.json last: its presence means the skeleton is complete.
        self._put(f"{self._prefix}/zarr.json", json.dumps(group_doc(info)).encode())

    def _resume(self):
        st = self.storage
        commit = load_latest_commit(st, self.segment, self.schema)
        R = self.schema.shard_rows
        if commit is not None:
            self._seq = commit["seq"]
            self.committed_rows = commit["rows"]
            self.resume_meta = commit.get("meta")
            self._stats = {h: RunningStats.from_json(commit["stats"][h]) for h in self.schema.hooks}
        rows = self.committed_rows
        self._shard, self._buf_rows = divmod(rows, R)
        keep = self._shard + (1 if self._buf_rows else 0)
        # Discard shards past the committed rows; their bytes were never visible.
        for a in self._arrays:
            for name in st.list(f"{self._prefix}/{a.path}/c"):
                if name.isdigit() and int(name) >= keep:
                    st.delete(shard_key(self.segment, a, int(name)))
        if self._buf_rows:
            self._load_partial_shard()
        if self._lease is not None:
            for a in self._arrays:
                self._remember(f"{self._prefix}/{a.path}/zarr.json")
                if self._buf_rows:
                    self._remember(shard_key(self.segment, a, self._shard))
        self._write_shapes(rows)
        if self._lease is not None and self._lease.took_over is not None:
            # Fence the writer whose lease expired: a commit of our own at the next
            # sequence number, so its next commit (create-only) finds that number taken.
            self._write_commit(rows, self.resume_meta)

    def _load_partial_shard(self):
        seg = ChunkReader(self.storage, self.schema, self.segment, self.committed_rows)
        lo = self._shard * self.schema.shard_rows
        for a in self._arrays:
            self._buf[a.path][: self._buf_rows] = seg.read_rows(a, lo, lo + self._buf_rows)

    def _buffer(self, staged: dict[str, np.ndarray], tensors: dict[str, torch.Tensor] | None, n: int):
        R = self.schema.shard_rows
        done = 0
        while done < n:
            take = min(n - done, R - self._buf_rows)
            lo = self._buf_rows
            for a in self._arrays:
                if a.path in staged:
                    self._copy_rows(a, staged[a.path][done : done + take], lo)
            # Statistics follow the rows piece by piece (the pieces end at shard boundaries),
            # so that a commit at a shard boundary inside this batch records the statistics
            # of exactly its rows. After the copies: the chunks that filled encode meanwhile.
            for h, x in (tensors or {}).items():
                self._stats[h].update(x[done : done + take])
            self._buf_rows += take
            self._dirty = True
            done += take
            if self._buf_rows == R:
                self._shard_full()
        if self.commit_every_shard:
            # Shard-boundary commits are done when append returns (committed_rows says so).
            self._write_full_shards()

    def _copy_rows(self, a: ArraySpec, rows: np.ndarray, lo: int) -> None:
        """Copy ``rows`` into the buffer of array ``a`` from row ``lo`` on, chunk by chunk,
        and start encoding each chunk that is then whole."""
        cr, buf, hi = a.chunk_rows, self._buf[a.path], lo + rows.shape[0]
        first = lo // cr
        for c in range(first, -(-hi // cr)):
            c_lo, c_hi = max(lo, c * cr), min(hi, (c + 1) * cr)
            if c_lo == c * cr:
                self._wait_chunk_free(a, c)
            buf[c_lo:c_hi] = rows[c_lo - lo : c_hi - lo]
            if c_hi == (c + 1) * cr:
                self._enc[a.path][c] = self._pool.submit(self._encode_chunk, a, c * cr, c_hi, c_hi)

    def _wait_chunk_free(self, a: ArraySpec, c: int) -> None:
        """Before rows of a new shard go into chunk ``c``: the full shard's encoding of that
        chunk, which reads the same buffer rows, must be done."""
        for full in self._full:
            chunks = full.chunks.get(a.path)
            if chunks is not None and c < len(chunks):
                chunks[c].result()

    def _shard_full(self) -> None:
        """The buffer holds a whole shard: queue it for writing (with the statistics of the
        rows up to its end, if it ends in a commit) and start the next shard."""
        if self._full:
            self._write_full_shards()  # at most one full shard waits: bounded memory
        R = self.schema.shard_rows
        chunks = {}
        for a in self._arrays:
            enc = self._enc[a.path]
            for c in range(R // a.chunk_rows):
                if c not in enc:  # rows loaded on resume, never appended here
                    lo = c * a.chunk_rows
                    enc[c] = self._pool.submit(self._encode_chunk, a, lo, lo + a.chunk_rows, R)
            chunks[a.path] = [enc[c] for c in range(R // a.chunk_rows)]
        stats = {h: s.copy() for h, s in self._stats.items()} if self.commit_every_shard else None
        self._full.append(_FullShard(self._shard, chunks, stats))
        self._enc = {a.path: {} for a in self._arrays}
        self._shard += 1
        self._buf_rows = 0
        self._dirty = False

    def _write_full_shards(self) -> None:
        """Write the full shards that wait, oldest first, each followed by its commit when
        the writer commits every shard. A failed write leaves the shard queued: the next
        commit tries it again."""
        R = self.schema.shard_rows
        while self._full:
            full = self._full[0]
            rows = (full.shard + 1) * R if full.stats is not None else None
            self._put_shard(full.shard, {path: [f.result() for f in fs] for path, fs in full.chunks.items()}, rows)
            if rows is not None:
                self._write_commit(rows, stats=full.stats, shapes_written=True)
            self._full.pop(0)

    def _encode_chunk(self, a: ArraySpec, lo: int, hi: int, nrows: int) -> bytes | None:
        if lo >= nrows:
            return None
        block = self._buf[a.path][lo:hi]
        if hi > nrows:  # edge chunk: zero the rows past the data, as zarr pads with fill_value
            block = block.copy()
            block[nrows - lo :] = 0
        return array_codec(self._codec, a).encode(block)

    def _write_shard(self, shard: int, nrows: int, shapes: int | None = None):
        """Write rows [0, nrows) of the buffer as shard ``shard`` of every array (and the
        arrays' zarr.json with ``shapes`` rows, if given): the whole chunks' encodings
        started when they filled, the edge chunk encoded now."""
        encoded = {}
        for a in self._arrays:
            enc, futures = self._enc[a.path], []
            for c in range(self.schema.shard_rows // a.chunk_rows):
                lo, hi = c * a.chunk_rows, (c + 1) * a.chunk_rows
                f = enc.get(c) if hi <= nrows else None
                if f is None:
                    f = self._pool.submit(self._encode_chunk, a, lo, hi, nrows)
                    if hi <= nrows:
                        enc[c] = f  # a whole chunk loaded on resume: encoded once
                futures.append(f)
            encoded[a.path] = futures
        self._put_shard(shard, {path: [f.result() for f in fs] for path, fs in encoded.items()}, shapes)
        self._dirty = False

    def _put_shard(self, shard: int, encoded: dict[str, list[bytes | None]], shapes: int | None = None) -> None:
        """Write each array's shard object from its encoded chunks (and, with ``shapes``,
        each array's zarr.json with that many rows), all in parallel, and return once every
        one is durable: the order a commit needs."""
        writes = []
        for a in self._arrays:
            parts = build_shard(encoded[a.path])
            writes.append((shard_key(self.segment, a, shard), parts))
            self.bytes_written += sum(len(p) for p in parts)
        self._put_all(writes + (self._shape_docs(shapes) if shapes is not None else []))

    def _put_all(self, writes: list[tuple[str, object]]) -> None:
        """Write independent objects in parallel (their fsyncs overlap instead of queueing);
        return once every one is durable."""
        for f in [self._puts.submit(self._put, k, p) for k, p in writes]:
            f.result()

    def _shape_docs(self, rows: int) -> list[tuple[str, bytes]]:
        """Every array's zarr.json with ``rows`` rows: (key, bytes) pairs."""
        docs = []
        for a in self._arrays:
            doc = array_doc(a, rows, self.schema.shard_rows, self._codec)
            docs.append((f"{self._prefix}/{a.path}/zarr.json", json.dumps(doc).encode()))
        return docs

    def _write_shapes(self, rows: int):
        self._put_all(self._shape_docs(rows))

    def _write_commit(
        self,
        rows: int,
        meta: dict | None = None,
        stats: dict[str, RunningStats] | None = None,
        shapes_written: bool = False,
    ):
        """Publish commit record ``seq + 1`` naming ``rows`` rows, with ``stats`` (default:
        the statistics of every appended row, which must then be ``rows`` rows).
        ``shapes_written``: the arrays' zarr.json already say ``rows`` rows (written with
        the shard objects, in parallel with them: a shape may run ahead of the durable
        shards, as readers trust only the commit record, and the record comes last)."""
        if self._lease is not None:
            self._lease.check()  # renewed now, or this writer was taken over: stop before publishing
        if not shapes_written:
            self._write_shapes(rows)
        self._seq += 1
        record = {
            "format_version": FORMAT_VERSION,
            "segment": self.segment,
            "path": self._prefix,
            "seq": self._seq,
            "rows": rows,
            "shard_rows": self.schema.shard_rows,
            "time": _now(),
            "actstore_version": __version__,
            "writer": self.writer_id,
            "stats": {h: s.to_json() for h, s in (stats or self._stats).items()},
        }
        if meta is not None:
            record["meta"] = meta
        doc = group_doc({"actstore_commit": record})
        self._put_commit(commit_key(self.segment, self._seq), json.dumps(doc).encode())
        self.committed_rows = rows
        self.resume_meta = meta
        for old in self.storage.list(f"{self._prefix}/commits"):
            if old.isdigit() and int(old) <= self._seq - _KEEP_COMMITS:
                self.storage.delete_prefix(f"{self._prefix}/commits/{old}")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
