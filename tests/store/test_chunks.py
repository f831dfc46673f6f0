"""The one chunk-read path (store/chunks.py): get planning, and reads through merged gets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from actstore import ActivationLoader, CorruptDataError
from actstore.store.chunks import coalesce
from actstore.store.format import group_doc, make_schema
from actstore.store.reader import Store
from actstore.store.storage import MemoryStorage
from actstore.store.storage._memory import _MemoryBlob
from actstore.store.writer import SegmentWriter


@pytest.mark.parametrize(
    "ranges, gap, most, want",
    [
        ([(0, 10), (10, 5), (15, 5)], 0, 0, [(0, 10, [0]), (10, 15, [1]), (15, 20, [2])]),  # 0: never merge
        ([(0, 10), (10, 5), (15, 5)], 0, 100, [(0, 20, [0, 1, 2])]),  # back to back
        ([(20, 5), (0, 10), (12, 3)], 2, 100, [(0, 15, [1, 2]), (20, 25, [0])]),  # offset order, gap
        ([(0, 10), (10, 10), (20, 10)], 0, 20, [(0, 20, [0, 1]), (20, 30, [2])]),  # size cap
        ([], 0, 100, []),
    ],
)
def test_coalesce(ranges, gap, most, want):
    assert coalesce(ranges, gap, most) == want


class _CountingBlob(_MemoryBlob):
    def __init__(self, data, log):
        super().__init__(data)
        self._log = log

    def pread(self, offset, length):
        self._log.append(length)
        return super().pread(offset, length)


class _MergingMemory(MemoryStorage):
    """Memory storage that asks for merged gets, as object storage will."""

    max_gap_bytes = 4096
    max_get_bytes = 1 << 20

    def __init__(self):
        super().__init__()
        self.gets: list[int] = []

    def open_blob(self, key, *, whole=False):
        return _CountingBlob(self.read(key), self.gets)


@pytest.fixture
def merged():
    st = _MergingMemory()
    schema = make_schema({"h": 32, "g": 8}, chunk_bytes=512, chunks_per_shard=8)
    st.write_atomic("zarr.json", json.dumps(group_doc({"actstore": schema.to_json()})).encode())
    x = {"h": torch.randn(1000, 32), "g": torch.randn(1000, 8)}
    with SegmentWriter(st, schema, "s0") as w:
        w.append(x, tokens=torch.arange(1000))
    return st, schema, x


def test_merged_gets_read_the_same_rows(merged):
    st, schema, x = merged
    with Store(st) as s:
        st.gets.clear()
        assert torch.equal(s.read("h", dtype=torch.bfloat16), x["h"].bfloat16())
        n_chunks = -(-1000 // schema.hooks["h"].chunk_rows)
        data_gets = [n for n in st.gets if n > 16 * 8 + 4]  # not index reads
        assert len(data_gets) < n_chunks  # chunks of one shard came in one get
        idx = np.random.default_rng(0).permutation(1000)[:300]
        assert torch.equal(s.read("g", idx, dtype=torch.bfloat16), x["g"][idx].bfloat16())
        rows = [b for b in ActivationLoader(s, "h", 128, seed=0, dtype=torch.bfloat16, threads=2)]
        assert torch.equal(torch.cat(rows).sort(0).values, x["h"].bfloat16().sort(0).values)


def test_merged_gets_still_name_a_damaged_chunk(merged):
    st, schema, _ = merged
    key = "segments/s0/acts/h/c/0/0"
    raw = bytearray(st.read(key))
    raw[40] ^= 0xFF  # inside chunk 0's bytes
    st.write_atomic(key, bytes(raw))
    with Store(st) as s, pytest.raises(CorruptDataError) as e:
        s.read("h", slice(0, 300))
    assert "chunk 0" in str(e.value) and "'acts/h'" in str(e.value)
