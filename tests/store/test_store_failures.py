"""Bad input and damaged stores: one-line errors, never zeros, never paths outside the store."""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest
import torch

import actstore
from actstore import AppendError, CorruptDataError, FormatVersionError, StoreError, UnknownHookError
from actstore.store.shard import MISSING


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)
    return msg


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "s"
    w = actstore.create(path, {"h": 64, "g": 32}, segment="seg0", chunk_bytes=4096, chunks_per_shard=4)
    w.append({"h": torch.randn(1000, 64), "g": torch.randn(1000, 32)}, tokens=torch.arange(1000))
    w.close()
    return path


def _shard_file(path, seg="seg0", arr="acts/h", shard=0) -> pathlib.Path:
    return pathlib.Path(path) / "segments" / seg / arr / "c" / str(shard) / "0"


def _chunk_slices(f: pathlib.Path, n_chunks: int):
    raw = f.read_bytes()
    index = np.frombuffer(raw[-(16 * n_chunks + 4) : -4], dtype="<u8").reshape(n_chunks, 2)
    return raw, index


def test_flipped_byte_in_chunk_names_segment_array_chunk(store):
    f = _shard_file(store)
    raw, index = _chunk_slices(f, 4)
    off, n = index[1]
    b = bytearray(raw)
    b[int(off + n // 2)] ^= 0x40
    f.write_bytes(bytes(b))
    s = actstore.open(store)
    chunk_rows = s.schema.hooks["h"].chunk_rows
    with pytest.raises(CorruptDataError) as e:
        s.read("h")
    msg = _one_line(e.value)
    assert "'seg0'" in msg and "'acts/h'" in msg and "chunk 1" in msg
    # rows in other chunks still read; the damaged chunk is never returned as zeros
    assert s.read("h", slice(0, chunk_rows)).abs().sum() > 0
    with pytest.raises(CorruptDataError):
        s.read("h", [chunk_rows + 3])
    # the other hook is untouched
    assert s.read("g").shape == (1000, 32)


def test_missing_shard(store):
    _shard_file(store, shard=1).unlink()
    s = actstore.open(store)
    with pytest.raises(CorruptDataError) as e:
        s.read("h")
    msg = _one_line(e.value)
    assert "'seg0'" in msg and "'acts/h'" in msg and "shard 1" in msg and "missing" in msg


def test_truncated_shard(store):
    f = _shard_file(store)
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CorruptDataError) as e:
        actstore.open(store).read("h", [0])
    assert "'acts/h'" in _one_line(e.value)


def test_truncated_shard_data_with_valid_index(store):
    # cut a chunk's bytes out but keep a valid-looking index at the end
    f = _shard_file(store)
    raw, index = _chunk_slices(f, 4)
    tail = raw[-(16 * 4 + 4) :]
    f.write_bytes(raw[: int(index[2][0])] + tail)
    with pytest.raises(CorruptDataError) as e:
        actstore.open(store).read("h")
    assert "'seg0'" in _one_line(e.value)


def test_chunk_missing_from_index_is_an_error_not_zeros(store):
    from actstore.store.codecs import crc32c_append

    f = _shard_file(store)
    raw, index = _chunk_slices(f, 4)
    index = index.copy()
    index[0] = (MISSING, MISSING)
    f.write_bytes(raw[: -(16 * 4 + 4)] + crc32c_append(index.tobytes()))
    s = actstore.open(store)
    with pytest.raises(CorruptDataError) as e:
        s.read("h", [0])
    msg = _one_line(e.value)
    assert "chunk 0" in msg and "missing" in msg
    # plain zarr, by contrast, silently returns fill values for a missing chunk: the pitfall
    import zarr

    z = zarr.open_group(store, mode="r")["segments/seg0/acts/h"]
    assert np.all(z[:1] == 0)


def test_corrupt_commit_record(store):
    commits = pathlib.Path(store) / "segments/seg0/commits"
    newest = sorted(p for p in commits.iterdir() if p.is_dir())[-1] / "zarr.json"
    newest.write_text("{not json")
    with pytest.raises(StoreError) as e:
        actstore.open(store)
    assert "commit record" in _one_line(e.value)


def test_unknown_format_version(store):
    root = pathlib.Path(store) / "zarr.json"
    doc = json.loads(root.read_text())
    doc["attributes"]["actstore"]["format_version"] = 99
    root.write_text(json.dumps(doc))
    with pytest.raises(FormatVersionError) as e:
        actstore.open(store)
    assert "format_version 99" in _one_line(e.value)
    with pytest.raises(FormatVersionError):
        actstore.create(store, {"h": 64, "g": 32})


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError) as e:
        actstore.open(tmp_path / "nothing-here")
    assert "no store" in _one_line(e.value)
    with pytest.raises(StoreError) as e:
        actstore.open("ftp://bucket/x")
    assert "scheme" in _one_line(e.value)


@pytest.mark.parametrize(
    "bad",
    [
        {"h": torch.randn(5, 63), "g": torch.randn(5, 32)},  # wrong width
        {"h": torch.randn(5, 64, 1), "g": torch.randn(5, 32)},  # wrong rank
        {"h": torch.randn(5, 64), "g": torch.randn(4, 32)},  # row counts differ
        {"h": torch.randn(5, 64)},  # missing hook
        {"h": torch.randn(5, 64), "g": torch.randn(5, 32), "x": torch.randn(5, 8)},  # unknown hook
        {"h": torch.randint(0, 5, (5, 64)), "g": torch.randn(5, 32)},  # integer activations
        {"h": [[1.0] * 64] * 5, "g": torch.randn(5, 32)},  # not a tensor
    ],
)
def test_bad_append_is_refused_and_changes_nothing(store, bad):
    w = actstore.create(store, segment="seg0")
    before = w.rows
    with pytest.raises(AppendError) as e:
        w.append(bad)
    assert "hook" in _one_line(e.value)  # a reason naming the hook(s), not a bare type
    assert w.rows == before
    w.close()
    assert actstore.open(store).rows == 1000


def test_bad_columns(store):
    w = actstore.create(store, segment="seg1")
    x = {"h": torch.randn(5, 64), "g": torch.randn(5, 32)}
    for kw in ({"tokens": np.arange(4)}, {"doc": np.ones(5, dtype=np.float32)}, {"pos": np.full(5, 2**40)}):
        with pytest.raises(AppendError) as e:
            w.append(x, **kw)
        _one_line(e.value)
    w.abort()


def test_columns_at_their_dtype_bounds_are_kept(store):
    w = actstore.create(store, segment="seg1")
    i32 = np.iinfo(np.int32)
    edge = np.array([i32.min, i32.max, i32.max, 0])
    w.append({"h": torch.randn(4, 64), "g": torch.randn(4, 32)}, tokens=edge, pos=edge[::-1].copy())
    w.close()
    t = actstore.open(store).tokens(slice(1000, 1004))  # seg1 after seg0's 1000 rows
    assert t["token"].tolist() == edge.tolist() and t["pos"].tolist() == edge[::-1].tolist()


def test_schema_mismatch_on_create(store):
    for kw in ({"hooks": {"h": 64}}, {"hooks": {"h": 64, "g": 33}}, {"hooks": {"h": 64, "g": 32}, "dtype": "fp8"}):
        with pytest.raises(StoreError) as e:
            actstore.create(store, **kw)
        assert "use another path" in _one_line(e.value)


def test_unknown_hook_on_read(store):
    s = actstore.open(store)
    with pytest.raises(UnknownHookError) as e:
        s.read("blocks.0.hook_resid_post")
    msg = _one_line(e.value)
    assert "blocks.0.hook_resid_post" in msg and "h" in msg
    with pytest.raises(IndexError) as e:
        s.read("h", [1000])
    assert "1000" in _one_line(e.value)
    with pytest.raises(UnknownHookError):
        s.stats("nope")


def test_fp8_refuses_nonfinite_rows(tmp_path):
    w = actstore.create(tmp_path / "s", {"h": 8}, dtype="fp8")
    x = torch.randn(4, 8)
    x[1, 1] = float("nan")
    with pytest.raises(AppendError) as e:
        w.append({"h": x})
    assert "NaN/inf" in _one_line(e.value)
    w.close()


def test_invalid_names(tmp_path):
    for hooks in ({"a/b": 4}, {"__x": 4}, {"": 4}, {"h": 0}):
        with pytest.raises(StoreError):
            actstore.create(tmp_path / "s", hooks)
    with pytest.raises(StoreError):
        actstore.create(tmp_path / "s2", {"h": 4}, segment="../escape")


def test_one_writer_per_segment(store):
    w1 = actstore.create(store, segment="seg0")
    with pytest.raises(StoreError) as e:
        actstore.create(store, segment="seg0")
    assert "another process" in _one_line(e.value)
    w1.close()
    actstore.create(store, segment="seg0").close()  # released on close


@pytest.mark.parametrize("path", ["../outside", "/etc", "s3://bucket/seg", "segments/seg0/../../x", "segments/other"])
def test_commit_naming_a_path_outside_is_refused(store, path):
    commits = pathlib.Path(store) / "segments/seg0/commits"
    newest = sorted(p for p in commits.iterdir() if p.is_dir())[-1] / "zarr.json"
    doc = json.loads(newest.read_text())
    doc["attributes"]["actstore_commit"]["path"] = path
    newest.write_text(json.dumps(doc))
    with pytest.raises(StoreError) as e:
        actstore.open(store)
    assert "refus" in _one_line(e.value)


@pytest.mark.parametrize("path", ["../../etc/passwd", "/abs/acts", "file:///tmp/x", "acts/other"])
def test_attribute_naming_a_path_outside_is_refused(store, path):
    root = pathlib.Path(store) / "zarr.json"
    doc = json.loads(root.read_text())
    doc["attributes"]["actstore"]["hooks"]["h"]["array"] = path
    root.write_text(json.dumps(doc))
    with pytest.raises(StoreError) as e:
        actstore.open(store)
    _one_line(e.value)


def test_nothing_is_ever_unpickled():
    """No code path in the package can unpickle: no pickle/torch.load/np.load with pickles
    (np.load only with an explicit allow_pickle=False, as capture reads .npy token files)."""
    pkg = pathlib.Path(actstore.__file__).parent
    pattern = re.compile(r"\bpickle\b|torch\.load\(|allow_pickle\s*=\s*True|\bnp\.load\(|\bmarshal\b|\bdill\b")
    safe_npy = re.compile(r"\bnp\.load\([^#]*allow_pickle=False")
    hits = [
        f"{p.relative_to(pkg)}:{i + 1}"
        for p in pkg.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines())
        if pattern.search(line) and not (safe_npy.search(line) and "pickle" not in line.replace("allow_pickle", ""))
    ]
    assert hits == []


# -- every field of a commit record and of the schema is checked before use ---------------


def _edit_commit(store, edit):
    commits = pathlib.Path(store) / "segments/seg0/commits"
    newest = sorted(p for p in commits.iterdir() if p.is_dir())[-1] / "zarr.json"
    doc = json.loads(newest.read_text())
    edit(doc["attributes"]["actstore_commit"])
    newest.write_text(json.dumps(doc))


def _set(key, value):
    def edit(rec):
        rec[key] = value

    return edit


def _drop(key):
    def edit(rec):
        del rec[key]

    return edit


def _extra_stats(hook):
    def edit(rec):
        rec["stats"][hook] = rec["stats"]["h"]

    return edit


def _set_stat(field, value):
    def edit(rec):
        rec["stats"]["h"][field] = value

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        _set("rows", 2**62),
        _set("rows", -1),
        _set("rows", "1000"),
        _set("rows", 1000.0),
        _set("rows", True),
        _set("rows", None),
        _set("rows", 10**6),
        _set("rows", 1001),
        _set("seq", "1"),
        _set("seq", 10**9),
        _set("shard_rows", 64),
        _set("shard_rows", "128"),
        _set("time", 5),
        _set("actstore_version", None),
        _set("meta", [1, 2]),
        _set("writer", 5),
        _set("segment", "seg1"),
        _set("path", None),
        _set("stats", []),
        _set("stats", {"h": {}}),
        _extra_stats("x"),  # statistics of a hook the store does not have
        _set_stat("count", -1),
        _set_stat("count", 1001),
        _set_stat("count", 1.5),
        _set_stat("d", 63),
        _set_stat("mean", "not base64!"),
        _set_stat("m2", "AAAA"),
        _set_stat("norm_sum", "1"),
        _set_stat("nonfinite_rows", -2),
        *[
            _drop(k)
            for k in (
                "format_version",
                "segment",
                "path",
                "seq",
                "rows",
                "shard_rows",
                "time",
                "actstore_version",
                "stats",
            )
        ],
    ],
    ids=lambda e: (
        f"{e.__name__}-{e.__closure__[0].cell_contents}-"
        f"{e.__closure__[1].cell_contents if len(e.__closure__) > 1 else ''}"
    ),
)
def test_every_commit_record_field_is_checked(store, edit):
    _edit_commit(store, edit)
    with pytest.raises(StoreError) as e:  # at open: no array allocated from a bad row count
        actstore.open(store)
    assert "commit record" in _one_line(e.value)
    with pytest.raises(StoreError):  # the writer's resume reads the same record
        actstore.create(store, segment="seg0")


def test_commit_rows_past_the_shards_is_corrupt_data(store):
    # Up to 2**48 rows pass the range check (and are then refused: no shard holds them).
    for rows in (2**40, 2**48):
        _edit_commit(store, _set("rows", rows))
        with pytest.raises(CorruptDataError) as e:
            actstore.open(store)
        assert "does not exist" in _one_line(e.value)
    _edit_commit(store, _set("rows", 2**48 + 1))
    with pytest.raises(StoreError) as e:
        actstore.open(store)
    assert "not an integer in [0, 2**48]" in _one_line(e.value)


def test_a_commit_record_of_another_format_version_is_refused(store):
    _edit_commit(store, _set("format_version", 99))
    with pytest.raises(FormatVersionError) as e:
        actstore.open(store)
    msg = _one_line(e.value)
    assert "commit record" in msg and "format_version 99" in msg and "upgrade actstore" in msg


def _edit_schema(store, edit):
    root = pathlib.Path(store) / "zarr.json"
    doc = json.loads(root.read_text())
    edit(doc["attributes"]["actstore"])
    root.write_text(json.dumps(doc))


def _hook(field, value):
    def edit(attrs):
        if value is _MISSING:
            del attrs["hooks"]["h"][field]
        else:
            attrs["hooks"]["h"][field] = value

    return edit


def _top(field, value):
    def edit(attrs):
        if value is _MISSING:
            del attrs[field]
        else:
            attrs[field] = value

    return edit


_MISSING = object()


@pytest.mark.parametrize(
    "edit",
    [
        _hook("d", "64"),
        _hook("d", 64.0),
        _hook("d", 0),
        _hook("d", -64),
        _hook("d", True),
        _hook("d", 2**40),
        _hook("d", _MISSING),
        _hook("chunk_rows", 0),
        _hook("chunk_rows", 48),
        _hook("chunk_rows", "32"),
        _hook("dtype", "fp64"),
        _hook("dtype", None),
        _hook("stored_dtype", "float32"),
        _hook("logical_dtype", "int8"),
        _hook("array", None),
        _top("shard_rows", 0),
        _top("shard_rows", -128),
        _top("shard_rows", "128"),
        _top("shard_rows", 2**40),
        _top("shard_rows", _MISSING),
        _top("hooks", {}),
        _top("hooks", [1]),
        _top("hooks", _MISSING),
        _top("codec", {"preset": "brotli"}),
        _top("codec", "zstd"),
        _top("codec", _MISSING),
        _top("provenance", [1]),
        _top("columns", {"token": {"dtype": "int64", "array": "tokens/token"}}),
        _top("flags", {"bos": 2}),
    ],
)
def test_every_schema_field_is_checked(store, edit):
    _edit_schema(store, edit)
    with pytest.raises(StoreError) as e:
        actstore.open(store)
    _one_line(e.value)
    with pytest.raises(StoreError):
        actstore.create(store, segment="seg1")
