"""The v1 store: round trips, selections, statistics, commits and resume, plain zarr."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr

import actstore
from actstore import AppendError, StoreError
from actstore.store.format import chunk_rows_for
from actstore.store.stats import RunningStats


def _bf16_bits(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def _fill(w, batches, seed=0, hooks=None):
    """Append ``batches`` (row counts) of fresh random rows; returns all rows per hook."""
    g = torch.Generator().manual_seed(seed)
    hooks = hooks or {h: s.d for h, s in w.schema.hooks.items()}
    start = w.rows
    out = {h: [] for h in hooks}
    for n in batches:
        acts = {h: torch.randn(n, d, generator=g) * 3 + 0.5 for h, d in hooks.items()}
        rows = torch.arange(start, start + n)
        w.append(acts, tokens=rows % 30000, doc=rows // 100, pos=rows % 100, flags=(rows % 100 == 0).to(torch.uint8))
        for h in hooks:
            out[h].append(acts[h])
        start += n
    return {h: torch.cat(v) for h, v in out.items()}


@pytest.fixture
def small(tmp_path):
    """A store with small chunks (many shards), two hooks of odd widths, two segments."""
    path = tmp_path / "s"
    hooks = {"blocks.0.hook_resid_post": 48, "model.layers.1.mlp": 100}
    w = actstore.create(path, hooks, segment="b-seg", chunk_bytes=4096, chunks_per_shard=4)
    data1 = _fill(w, [300, 1, 517, 64], seed=1)
    w.close()
    w = actstore.create(path, hooks, segment="a-seg", chunk_bytes=4096, chunks_per_shard=4)
    data0 = _fill(w, [999], seed=2)
    w.close()
    # Segments are read in name order: a-seg first.
    data = {h: torch.cat([data0[h], data1[h]]) for h in hooks}
    return path, hooks, data


def test_chunk_rows_are_powers_of_two_near_2mib():
    for row_bytes in (96, 768, 1000, 8192, 3 * 4096):
        r = chunk_rows_for(row_bytes)
        assert r & (r - 1) == 0
        assert 2**20 / 1.5 <= r * row_bytes <= 2**21 * 1.5


def test_bf16_round_trip_is_bit_exact(small):
    path, hooks, data = small
    s = actstore.open(path)
    assert s.rows == sum(v.shape[0] for v in data.values()) // 2
    assert s.hooks == list(hooks)
    for h in hooks:
        got = s.read(h, dtype=torch.bfloat16)
        assert torch.equal(got.view(torch.int16), data[h].to(torch.bfloat16).view(torch.int16))
        assert torch.equal(s.read(h), data[h].to(torch.bfloat16).float())
        assert s.read(h, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("sel", ["slice", "step", "neg", "perm", "dups", "mask", "int", "empty", "tensor"])
def test_selections(small, sel):
    path, hooks, data = small
    s = actstore.open(path)
    h = "model.layers.1.mlp"
    ref = data[h].to(torch.bfloat16).float()
    n = s.rows
    rng = np.random.default_rng(3)
    sels = {
        "slice": (slice(250, 1500), ref[250:1500]),
        "step": (slice(3, None, 7), ref[3::7]),
        "neg": (np.array([-1, -n, 5]), ref[[n - 1, 0, 5]]),
        "perm": (p := rng.permutation(n)[:700], ref[p]),
        "dups": (np.array([9, 9, 1000, 9]), ref[[9, 9, 1000, 9]]),
        "mask": (m := rng.random(n) < 0.3, ref[torch.from_numpy(m)]),
        "int": (17, ref[17]),
        "empty": (np.array([], dtype=np.int64), ref[:0]),
        "tensor": (t := torch.randint(0, n, (50,)), ref[t]),
    }
    rows, want = sels[sel]
    got = s.read(h, rows)
    assert got.shape == want.shape
    assert torch.equal(got, want)


def test_tokens_columns_align_with_rows(small):
    path, hooks, data = small
    s = actstore.open(path)
    t = s.tokens()
    # a-seg (999 rows, appended from 0) then b-seg (882 rows, appended from 0)
    expect = torch.cat([torch.arange(999), torch.arange(882)])
    assert torch.equal(t["token"].long(), expect % 30000)
    assert torch.equal(t["doc"], expect // 100)
    assert torch.equal(t["pos"].long(), expect % 100)
    assert torch.equal(t["flags"], (expect % 100 == 0).to(torch.uint8))
    assert t["token"].dtype == torch.int32 and t["doc"].dtype == torch.int64
    one = s.tokens(1000)
    assert int(one["token"]) == 1 and int(one["doc"]) == 0


def test_stats_merge_across_segments(small):
    path, hooks, data = small
    s = actstore.open(path)
    for h in hooks:
        x = data[h].double()
        st = s.stats(h)
        assert st["count"] == x.shape[0]
        torch.testing.assert_close(st["mean"], x.mean(0), rtol=0, atol=1e-12)
        torch.testing.assert_close(st["var"], x.var(0, unbiased=False), rtol=1e-10, atol=1e-10)
        assert abs(st["mean_norm"] - float(x.norm(dim=1).mean())) < 1e-9
        assert st["nonfinite_rows"] == 0


@pytest.mark.parametrize(
    "dtype,bound", [("fp8", "fp8"), ("int8", "int8"), ("q16", "q16"), ("fp16", None), ("fp32", None)]
)
def test_other_dtypes(tmp_path, dtype, bound):
    w = actstore.create(tmp_path / "s", {"h": 64}, dtype=dtype, chunk_bytes=2048, chunks_per_shard=2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(700, 64, generator=g) * torch.logspace(-3, 3, 700)[:, None]
    x[3] = 0  # a zero row must decode to zeros, not NaN
    w.append({"h": x})
    w.close()
    s = actstore.open(tmp_path / "s")
    got = s.read("h")
    assert torch.isfinite(got).all()
    assert torch.equal(got[3], torch.zeros(64))
    absmax = x.abs().amax(1, keepdim=True)
    if bound == "fp8":
        limit = 2**-4 * x.abs() + 2**-10 * absmax / 448
        assert ((got - x).abs() <= limit * (1 + 1e-6)).all()
        rel = ((got - x).norm() / x.norm()).item()
        assert 0 < rel < 0.05
    elif bound == "int8":
        assert ((got - x).abs() <= absmax / 254 * (1 + 1e-6)).all()
    elif bound == "q16":
        # Half a step of rms/32 per element, so at most 1/64 of the row's norm; about 0.9% in all.
        rms = x.pow(2).mean(1, keepdim=True).sqrt()
        assert ((got - x).abs() <= rms / 64 * (1 + 1e-6)).all()
        rel = (got - x).norm(dim=1) / x.norm(dim=1).clamp_min(1e-30)
        assert float(rel.max()) <= 1 / 64 and 0.006 < float(rel[x.norm(dim=1) > 0].median()) < 0.011
    else:
        t = torch.float16 if dtype == "fp16" else torch.float32
        assert torch.equal(got, x.to(t).float())
    # plain zarr sees the stored dtype and the scales
    grp = zarr.open_group(tmp_path / "s", mode="r")
    arr = grp["segments"][list(grp["segments"].group_keys())[0]]["acts/h"]
    assert (
        arr.attrs["logical_dtype"]
        == {"fp8": "float8_e4m3fn", "int8": "int8", "q16": "int16", "fp16": "float16", "fp32": "float32"}[dtype]
    )


def test_commit_visibility_and_mid_shard_commits(tmp_path):
    path = tmp_path / "s"
    w = actstore.create(path, {"h": 32}, segment="r0", chunk_bytes=1024, chunks_per_shard=4)
    shard = w.schema.shard_rows
    data = []
    r = actstore.open(path)
    assert r.rows == 0
    total = 0
    for n in (5, shard - 7, 1, 3, shard + 11, 2):
        data.append(_fill(w, [n], seed=len(data))["h"])
        # A reader opened before the commit sees exactly the committed rows: the last explicit
        # commit, or the last shard boundary crossed (the writer commits every full shard).
        # No total here is a shard multiple, so the uncommitted tail is never empty.
        committed = max(total, (total + n) // shard * shard)
        total += n
        before = actstore.open(path).rows
        assert before == w.committed_rows == committed < w.rows == total
        w.commit()
        assert actstore.open(path).rows == w.rows == w.committed_rows
    w.close()
    want = torch.cat(data)
    s = actstore.open(path)
    assert torch.equal(s.read("h", dtype=torch.bfloat16), want.to(torch.bfloat16))
    assert r.rows == 0 and r.refresh().rows == want.shape[0]


def test_uncommitted_rows_are_invisible_and_resume_continues(tmp_path):
    path = tmp_path / "s"
    hooks = {"h": 40}
    w = actstore.create(path, hooks, segment="r0", chunk_bytes=1024, chunks_per_shard=2, commit_every_shard=False)
    a = _fill(w, [100, 50], seed=1)["h"]
    w.commit()
    _fill(w, [3 * w.schema.shard_rows + 5], seed=2)  # full shards written, never committed
    assert actstore.open(path).rows == 150
    w.abort()  # like a crash: no commit
    w2 = actstore.create(path, hooks, segment="r0", chunk_bytes=1024, chunks_per_shard=2)
    assert w2.committed_rows == 150 and w2.rows == 150
    b = _fill(w2, [77], seed=3)["h"]
    w2.close()
    s = actstore.open(path)
    assert s.rows == 227
    assert torch.equal(s.read("h", dtype=torch.bfloat16), torch.cat([a, b]).to(torch.bfloat16))
    st = s.stats("h")
    assert st["count"] == 227
    torch.testing.assert_close(st["mean"], torch.cat([a, b]).double().mean(0), rtol=0, atol=1e-12)
    # the discarded shards are gone from disk, not just hidden
    grp = zarr.open_group(path, mode="r")
    assert grp["segments/r0/acts/h"].shape[0] == 227


def test_numpy_rows_and_columns_left_out(tmp_path):
    # numpy activations are taken as torch's; a column not given is stored as -1 (token, doc,
    # pos: "unknown") and flags as 0 (no flag), never as a value a real row could have.
    path = tmp_path / "s"
    x = np.random.default_rng(0).standard_normal((70, 24)).astype(np.float32)
    w = actstore.create(path, {"h": 24}, chunk_bytes=1024, chunks_per_shard=2)
    w.append({"h": x[:30]}, tokens=np.arange(30))
    w.append({"h": x[30:]})
    w.close()
    s = actstore.open(path)
    assert torch.equal(s.read("h"), torch.from_numpy(x).bfloat16().float())
    t = s.tokens()
    assert torch.equal(t["token"][:30].long(), torch.arange(30))
    for col in ("token", "doc", "pos"):
        assert (t[col][30:] == -1).all(), col
    assert (t["doc"][:30] == -1).all() and (t["flags"] == 0).all()


def test_commit_records_new_meta_and_skips_a_commit_with_nothing_new(tmp_path):
    path = tmp_path / "s"

    def newest():
        return max(int(p.name) for p in (path / "segments" / "r0" / "commits").iterdir() if p.name.isdigit())

    w = actstore.create(path, {"h": 16}, segment="r0", chunk_bytes=1024, chunks_per_shard=2)
    _fill(w, [10])
    w.commit({"step": 1})
    seq = newest()
    w.commit()  # nothing new, meta kept: no record
    w.commit({"step": 1})
    assert newest() == seq
    w.commit({"step": 2})  # no new rows, but new meta: recorded
    assert newest() == seq + 1
    w.close()
    assert newest() == seq + 1
    w = actstore.create(path, segment="r0")
    assert w.resume_meta == {"step": 2} and w.committed_rows == 10
    w.abort()


def test_a_closed_writer_refuses_writes_and_has_stopped_its_threads(tmp_path):
    w = actstore.create(tmp_path / "s", {"h": 16}, chunk_bytes=1024, chunks_per_shard=2)
    _fill(w, [40])
    w.close()
    w.close()  # idempotent
    for call in (lambda: _fill(w, [1]), w.commit):
        with pytest.raises(StoreError) as e:
            call()
        assert "closed" in str(e.value)
    assert not any(t.is_alive() for t in w._pool._threads)  # the encoder pool was shut down
    assert actstore.open(tmp_path / "s").rows == 40


def test_append_packed_takes_stored_rows_and_their_statistics(tmp_path):
    # The capture pipeline's path: rows already converted (bf16 bits) with their statistics.
    path = tmp_path / "s"
    x = torch.randn(50, 16)
    bits = _bf16_bits(x)
    st = RunningStats(16)
    st.update(x)
    w = actstore.create(path, {"h": 16}, chunk_bytes=1024, chunks_per_shard=2, commit_every_shard=False)
    bad = [
        ({"acts/h": bits, "acts/g": bits}, {"h": st}),  # an array the store does not have
        ({"acts/h": bits}, {}),  # no statistics
        ({"acts/h": bits.astype(np.int16)}, {"h": st}),  # not the stored dtype
        ({"acts/h": bits[:, :8]}, {"h": st}),  # not the stored width
    ]
    for arrays, stats in bad:
        with pytest.raises(AppendError):
            w.append_packed(arrays, stats)
    assert w.rows == 0
    w.append_packed({"acts/h": bits}, {"h": st}, tokens=np.arange(50))
    w.close()
    s = actstore.open(path)
    assert torch.equal(s.read("h", dtype=torch.bfloat16), x.bfloat16())
    assert s.stats("h")["count"] == 50 and torch.equal(s.tokens()["token"].long(), torch.arange(50))
    w = actstore.create(path, {"h": 16}, chunk_bytes=1024, chunks_per_shard=2)  # commits every shard
    with pytest.raises(AppendError) as e:
        w.append_packed({"acts/h": bits}, {"h": st})
    assert "commit_every_shard=False" in str(e.value)
    w.abort()


def test_plain_zarr_reads_the_bits(small):
    path, hooks, data = small
    grp = zarr.open_group(path, mode="r")
    assert grp.attrs["actstore"]["format_version"] == 1
    h = "blocks.0.hook_resid_post"
    parts, toks = [], []
    for seg in sorted(grp["segments"].group_keys()):
        g = grp["segments"][seg]
        commits = g["commits"]
        newest = max(commits.group_keys())
        rows = commits[newest].attrs["actstore_commit"]["rows"]
        arr = g["acts"][h]
        assert arr.dtype == np.uint16 and arr.attrs["logical_dtype"] == "bfloat16"
        parts.append(arr[:rows])
        toks.append(g["tokens/token"][:rows])
    assert np.array_equal(np.concatenate(parts), _bf16_bits(data[h]))
    assert np.array_equal(np.concatenate(toks), actstore.open(path).tokens()["token"].numpy())
    # the documented bf16 conversion
    got = torch.from_numpy(np.concatenate(parts).view(np.int16)).view(torch.bfloat16)
    assert torch.equal(got, data[h].to(torch.bfloat16))


def test_q16_plain_zarr_decodes_it(tmp_path):
    """zarr-python reads q16's zigzag codes (uint16, typesize 2 under the preset's shuffle) and
    scales that, decoded the documented way, give what actstore reads."""
    w = actstore.create(tmp_path / "s", {"h": 96}, dtype="q16", chunk_bytes=4096, chunks_per_shard=2)
    x = torch.randn(300, 96, generator=torch.Generator().manual_seed(2)) * 4
    w.append({"h": x})
    w.close()
    seg = next(p for p in (tmp_path / "s" / "segments").iterdir() if p.is_dir())  # not segments/zarr.json
    docs = {a: json.loads((seg / a / "zarr.json").read_text()) for a in ("acts/h", "scales/h", "tokens/token")}
    blosc = {a: d["codecs"][0]["configuration"]["codecs"][1]["configuration"] for a, d in docs.items()}
    assert blosc["acts/h"]["shuffle"] == blosc["scales/h"]["shuffle"] == "shuffle"
    assert blosc["acts/h"]["typesize"] == 2 and blosc["scales/h"]["typesize"] == 4
    grp = zarr.open_group(tmp_path / "s", mode="r")
    g = grp["segments"][seg.name]
    assert g["acts/h"].dtype == np.uint16 and g["acts/h"].attrs["logical_dtype"] == "int16"
    assert g["acts/h"].attrs["codes"] == "zigzag"
    z = g["acts/h"][:300].astype(np.int32)
    q = (z >> 1) ^ -(z & 1)  # the documented decode
    plain = torch.from_numpy(q.astype(np.float32) * g["scales/h"][:300][:, None])
    assert torch.equal(plain, actstore.open(tmp_path / "s").read("h"))
    assert float(((plain - x).norm(dim=1) / x.norm(dim=1)).max()) <= 1 / 64


def test_q16_refuses_rows_wide_enough_to_clip(tmp_path):
    with pytest.raises(StoreError, match=r"too wide for q16 \(at most 1048512 columns"):
        actstore.create(tmp_path / "s", {"h": 1048513}, dtype="q16")


def test_info_and_codecs(tmp_path):
    for codec in ("zstd", "lz4", "none"):
        w = actstore.create(tmp_path / codec, {"h": 256}, codec=codec)
        _fill(w, [8192], seed=0)  # whole chunks: edge chunks are stored padded
        w.close()
        info = actstore.open(tmp_path / codec).info()
        json.dumps(info)
        hi = info["hooks"]["h"]
        assert info["rows"] == 8192 and info["codec"] == codec and hi["dtype"] == "bf16"
        assert hi["stored_bytes"] == 8192 * 256 * 2
        if codec == "none":
            assert 0.9 < hi["compression_ratio"] <= 1.0
        else:
            assert hi["compression_ratio"] > 1.1  # gaussian bf16: the exponent byte compresses
        assert info["segments"][0]["rows"] == 8192
        assert abs(hi["stats"]["mean_std"] - 3) < 0.1


def test_provenance_is_recorded(tmp_path):
    prov = {"model": "m", "revision": "abc", "dataset": "d", "context_size": 128, "hooks": ["h"]}
    w = actstore.create(tmp_path / "s", {"h": 8}, provenance=prov)
    w.close()
    p = actstore.open(tmp_path / "s").info()["provenance"]
    assert {k: p[k] for k in prov} == prov
    assert p["actstore_version"] == actstore.__version__ and p["created"]


def test_bf16_input_is_stored_bit_exact(tmp_path):
    w = actstore.create(tmp_path / "s", {"h": 16})
    x = torch.randn(33, 16).to(torch.bfloat16)
    w.append({"h": x})
    w.close()
    assert torch.equal(actstore.open(tmp_path / "s").read("h", dtype=torch.bfloat16), x)


def test_nonfinite_rows_are_counted(tmp_path):
    w = actstore.create(tmp_path / "s", {"h": 8})
    x = torch.randn(10, 8)
    x[2, 3] = float("nan")
    x[7, 0] = float("inf")
    w.append({"h": x})
    w.close()
    s = actstore.open(tmp_path / "s")
    st = s.stats("h")
    assert st["nonfinite_rows"] == 2 and st["count"] == 8
    torch.testing.assert_close(st["mean"], x[[0, 1, 3, 4, 5, 6, 8, 9]].double().mean(0), rtol=0, atol=1e-12)
    got = s.read("h")
    assert torch.isnan(got[2, 3]) and torch.isinf(got[7, 0])  # stored faithfully, not as garbage
    assert s.info()["hooks"]["h"]["stats"]["nonfinite_rows"] == 2


@pytest.mark.slow
def test_many_segments_and_shards_random_reads(tmp_path):
    path = tmp_path / "s"
    rng = np.random.default_rng(0)
    chunks = []
    for i in range(4):
        w = actstore.create(path, {"h": 24}, segment=f"s{i}", chunk_bytes=512, chunks_per_shard=3 if i else 1)
        chunks.append(_fill(w, list(rng.integers(1, 300, size=5)), seed=i)["h"])
        w.close()
    ref = torch.cat(chunks).to(torch.bfloat16)
    s = actstore.open(path, threads=3)
    idx = rng.integers(0, s.rows, size=2000)
    assert torch.equal(s.read("h", idx, dtype=torch.bfloat16), ref[idx])
