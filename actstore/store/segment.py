"""``SegmentReader``: the committed rows of one segment, as a reader sees them.

A segment's rows ``[0, rows)`` are those its newest commit record names (``commit``, None
for a segment with no commit yet). Its chunks are read through ``chunks`` (a
:class:`~actstore.store.chunks.ChunkReader` of this snapshot); :meth:`check_array` verifies
once per array that the array's zarr.json agrees with the store schema before any chunk is
trusted to have the schema's layout.
"""

from __future__ import annotations

import json

import numpy as np

from .chunks import ChunkReader
from .errors import CorruptDataError
from .format import SEGMENTS, ArraySpec, Schema, parse_array_doc
from .storage import Storage


class SegmentReader:
    """Committed rows ``[0, rows)`` of one segment."""

    def __init__(self, storage: Storage, schema: Schema, segment: str, rows: int, commit: dict | None = None):
        self.storage = storage
        self.schema = schema
        self.name = segment
        self.rows = rows
        self.commit = commit
        self.chunks = ChunkReader(storage, schema, segment, rows)
        self._checked: set[str] = set()

    def check_array(self, a: ArraySpec) -> None:
        """Verify once that the array's zarr.json agrees with the store schema."""
        if a.path in self._checked:
            return
        key = f"{SEGMENTS}/{self.name}/{a.path}/zarr.json"
        try:
            doc = json.loads(self.storage.read(key))
        except ValueError as e:
            raise CorruptDataError(
                f"segment {self.name!r}, array {a.path!r}: zarr.json is not valid JSON ({e})"
            ) from None
        shard_rows, chunk_rows, _ = parse_array_doc(doc, f"segment {self.name!r}, array {a.path!r}")
        if shard_rows != self.schema.shard_rows or chunk_rows != a.chunk_rows or doc.get("data_type") != a.dtype.name:
            raise CorruptDataError(
                f"segment {self.name!r}, array {a.path!r}: zarr.json disagrees with the store schema"
            )
        # The writer writes every array's shape before the commit record naming those rows.
        shape = doc.get("shape")
        if not isinstance(shape, list) or not shape or not isinstance(shape[0], int) or shape[0] < self.rows:
            raise CorruptDataError(
                f"segment {self.name!r}, array {a.path!r}: zarr.json shape {shape!r} holds fewer "
                f"than the {self.rows} committed rows; the store is damaged"
            )
        self._checked.add(a.path)

    def read_rows(self, a: ArraySpec, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` of array ``a`` (on the calling thread)."""
        return self.chunks.read_rows(a, lo, hi)
