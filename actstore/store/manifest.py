"""Commit records: which rows of a segment are visible.

Each commit is a new object ``segments/<seg>/commits/<seq:010d>/zarr.json``: a zarr group
whose ``attributes.actstore_commit`` is the record (atomic rename on local disk; a new
object per commit on object storage, where nothing is overwritten).
The record with the highest ``seq`` is the truth. Everything read from it is validated:
paths must be this segment's own, row counts must be non-negative integers.
"""

from __future__ import annotations

import json
import re

from .errors import FormatVersionError, StoreError
from .format import FORMAT_VERSION, SEGMENTS, Schema, commit_key
from .stats import RunningStats
from .storage import Storage, check_key

_COMMIT = re.compile(r"^(\d{10})$")


def load_latest_commit(storage: Storage, segment: str, schema: Schema) -> dict | None:
    """Return the newest valid commit record of ``segment``, or None if it has none."""
    seqs = sorted((int(m.group(1)) for n in storage.list(f"{SEGMENTS}/{segment}/commits") if (m := _COMMIT.match(n))),
                  reverse=True)
    # A commit's folder can exist without its zarr.json: the writer died (or is working)
    # between making the folder and renaming the record into place. That commit never
    # happened; the next older one is the truth.
    seq = next((q for q in seqs if storage.exists(commit_key(segment, q))), None)
    if seq is None:
        return None
    key = commit_key(segment, seq)
    where = f"commit record {key!r}"
    try:
        rec = json.loads(storage.read(key))["attributes"]["actstore_commit"]
    except (KeyError, TypeError):
        raise StoreError(f"{where} has no attributes.actstore_commit; the segment is damaged: restore it or delete the segment") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{where} is not valid JSON ({e}); the segment is damaged: restore it or delete the segment") from None
    if not isinstance(rec, dict):
        raise StoreError(f"{where} is not a JSON object")
    if rec.get("format_version") != FORMAT_VERSION:
        raise FormatVersionError(f"{where} has format_version {rec.get('format_version')!r}, this actstore reads only {FORMAT_VERSION}; upgrade actstore")
    path = rec.get("path")
    if check_key(path) != f"{SEGMENTS}/{segment}" or rec.get("segment") != segment:
        raise StoreError(f"{where} names path {path!r}, not its own segment {SEGMENTS}/{segment}; refusing it")
    rows = rec.get("rows")
    if not isinstance(rows, int) or rows < 0 or rec.get("seq") != seq:
        raise StoreError(f"{where} is malformed (rows={rows!r}, seq={rec.get('seq')!r})")
    if rec.get("shard_rows") != schema.shard_rows:
        raise StoreError(f"{where} was written with shard_rows {rec.get('shard_rows')}, the store says {schema.shard_rows}")
    stats = rec.get("stats")
    if not isinstance(stats, dict) or set(stats) != set(schema.hooks):
        raise StoreError(f"{where} has statistics for {sorted(stats or {})}, the store's hooks are {sorted(schema.hooks)}")
    try:
        for h in schema.hooks:
            st = RunningStats.from_json(stats[h])
            if st.d != schema.hooks[h].d:
                raise ValueError(f"width {st.d} != {schema.hooks[h].d}")
    except (KeyError, TypeError, ValueError) as e:
        raise StoreError(f"{where}: malformed statistics ({e})") from None
    return rec
