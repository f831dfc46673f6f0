"""Commit records: which rows of a segment are visible.

Each commit is a new object ``segments/<seg>/commits/<seq:010d>/zarr.json``: a zarr group
whose ``attributes.actstore_commit`` is the record (atomic rename on local disk; a new
object per commit on object storage, where nothing is overwritten).
The record with the highest ``seq`` is the truth. Every field is validated before use:
the format version; the path and segment must be this segment's own; ``seq`` must be the
record's own number; ``rows`` an integer in ``[0, 2**48]`` whose last row lies in a shard
that exists; ``shard_rows`` the store's; ``time`` and ``actstore_version`` strings;
``meta`` a JSON object and ``writer`` (the writer id, since object storage) a string if
present; ``stats`` one well-formed entry per hook, of the hook's
width, over at most ``rows`` rows.
"""

from __future__ import annotations

import json
import re

from .errors import CorruptDataError, FormatVersionError, StoreError
from .format import FORMAT_VERSION, SEGMENTS, Schema, commit_key, shard_key
from .stats import RunningStats
from .storage import Storage, check_key

_COMMIT = re.compile(r"^(\d{10})$")
_REQUIRED = ("format_version", "segment", "path", "seq", "rows", "shard_rows", "time", "actstore_version", "stats")
MAX_ROWS = 2**48  # rows of one segment: far above any capture, far below int64 offsets and byte counts


def load_latest_commit(storage: Storage, segment: str, schema: Schema) -> dict | None:
    """Return the newest valid commit record of ``segment``, or None if it has none."""
    seqs = sorted(
        (int(m.group(1)) for n in storage.list(f"{SEGMENTS}/{segment}/commits") if (m := _COMMIT.match(n))),
        reverse=True,
    )
    # A commit's folder can exist without its zarr.json: the writer died (or is working)
    # between making the folder and renaming the record into place. That commit never
    # happened; the next older one is the truth.
    seq = next((q for q in seqs if storage.exists(commit_key(segment, q))), None)
    # A listing may miss the newest keys (an eventually consistent listing, or a cache in
    # front of one): look past it, one HEAD per segment, so a writer never resumes from
    # an older commit than the newest.
    while storage.exists(commit_key(segment, (seq or 0) + 1)):
        seq = (seq or 0) + 1
    if seq is None:
        return None
    key = commit_key(segment, seq)
    where = f"commit record {key!r}"
    damaged = "the segment is damaged: restore it or delete the segment"
    try:
        rec = json.loads(storage.read(key))["attributes"]["actstore_commit"]
    except (KeyError, TypeError):
        raise StoreError(f"{where} has no attributes.actstore_commit; {damaged}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{where} is not valid JSON ({e}); {damaged}") from None
    if not isinstance(rec, dict):
        raise StoreError(f"{where} is not a JSON object; {damaged}")
    _check_record(rec, storage, segment, seq, schema, where)
    return rec


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_record(rec: dict, storage: Storage, segment: str, seq: int, schema: Schema, where: str) -> None:
    """Every field of a commit record, before anything uses it: types, ranges, and the
    rows against the shards that exist. One-line StoreError (CorruptDataError for rows the
    shards do not hold) naming the field."""
    damaged = "the segment is damaged: restore it or delete the segment"
    missing = [k for k in _REQUIRED if k not in rec]
    if missing:
        raise StoreError(f"{where} lacks {', '.join(missing)}; {damaged}")
    if rec["format_version"] != FORMAT_VERSION:
        raise FormatVersionError(
            f"{where} has format_version {rec['format_version']!r}, this actstore reads only "
            f"{FORMAT_VERSION}; upgrade actstore"
        )
    path = rec["path"]
    if not isinstance(path, str) or check_key(path) != f"{SEGMENTS}/{segment}" or rec["segment"] != segment:
        raise StoreError(f"{where} names path {path!r}, not its own segment {SEGMENTS}/{segment}; refusing it")
    rows = rec["rows"]
    if not _is_int(rows) or rows < 0 or rows > MAX_ROWS:
        raise StoreError(f"{where} has rows={rows!r}, not an integer in [0, 2**48]; {damaged}")
    if not _is_int(rec["seq"]) or rec["seq"] != seq:
        raise StoreError(f"{where} has seq={rec['seq']!r}, but it is commit {seq}; {damaged}")
    if rec["shard_rows"] != schema.shard_rows or not _is_int(rec["shard_rows"]):
        raise StoreError(
            f"{where} was written with shard_rows {rec['shard_rows']!r}, the store says {schema.shard_rows}"
        )
    for k in ("time", "actstore_version"):
        if not isinstance(rec[k], str):
            raise StoreError(f"{where} has {k}={rec[k]!r}, not a string; {damaged}")
    if not isinstance(rec.get("writer", ""), str):
        raise StoreError(f"{where} has writer={rec['writer']!r}, not a string; {damaged}")
    if not isinstance(rec.get("meta", {}), dict):
        raise StoreError(f"{where} has meta of type {type(rec['meta']).__name__}, not a JSON object; {damaged}")
    stats = rec["stats"]
    if not isinstance(stats, dict) or set(stats) != set(schema.hooks):
        got = sorted(stats) if isinstance(stats, dict) else stats
        raise StoreError(f"{where} has statistics for {got!r}, the store's hooks are {sorted(schema.hooks)}")
    for h, spec in schema.hooks.items():
        try:
            st = RunningStats.from_json(stats[h])
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{where}: malformed statistics of hook {h!r} ({e}); {damaged}") from None
        if st.d != spec.d or st.count > rows:
            raise StoreError(
                f"{where}: statistics of hook {h!r} cover {st.count} rows of width {st.d}, the record "
                f"has {rows} rows of width {spec.d}; {damaged}"
            )
    # The rows must lie in shards that exist: the last committed shard of the first array
    # (every array's shards are written before the record; a record naming rows past the
    # shards, like rows=2**62, is damage, found here rather than as a huge allocation).
    # The rows must lie in shards that exist and within the array's shape: the writer
    # writes every array's shards and their zarr.json shapes, then the record. Checked on
    # the first array (the others when first read, SegmentReader.check_array), so that a
    # record naming rows past the data, like rows=2**62, is refused here, not met as a huge
    # allocation or as zero-filled padding.
    if rows:
        a = schema.arrays()[0]
        last = (rows - 1) // schema.shard_rows
        if not storage.exists(shard_key(segment, a, last)):
            raise CorruptDataError(
                f"{where} claims {rows} rows, but shard {last} of array {a.path!r} that would hold "
                f"its last row does not exist; {damaged}"
            )
        try:
            shape = json.loads(storage.read(f"{SEGMENTS}/{segment}/{a.path}/zarr.json"))["shape"]
            held = shape[0]
        except (KeyError, TypeError, IndexError, ValueError, UnicodeDecodeError):
            held = None
        if not _is_int(held) or held < rows:
            raise CorruptDataError(f"{where} claims {rows} rows, but array {a.path!r} holds {held!r}; {damaged}")
