"""A store on S3 (a real moto server, tests/helpers/s3.py) through every entry point.

actstore.create / open, the loader, ``actstore capture --out s3://...`` and ``actstore
info``; plain zarr over ``zarr.storage.ObjectStore`` reading the committed rows; the
disk cache; ``fork`` after S3 was used; a partial shard replaced under an open reader; a
listing that misses the newest commit; damage named by segment, array and chunk; one-line
errors for a missing bucket and an unreachable endpoint.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys

import numpy as np
import pytest
import torch

import actstore
from actstore.errors import CorruptDataError, StoreError
from actstore.store.reader import Store
from actstore.store.storage import open_storage
from helpers import zygote
from helpers.capture_models import token_array
from helpers.paths import HELPERS
from helpers.s3 import BUCKET, MotoServer, free_port

HOOKS = {"h": 16, "g": 8}


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def _write(url, n=1000, segment="s0", commit_at=None):
    x = {"h": torch.randn(n, 16), "g": torch.randn(n, 8)}
    with actstore.create(url, HOOKS, segment=segment, chunk_bytes=256, chunks_per_shard=4) as w:
        if commit_at:
            w.append({k: v[:commit_at] for k, v in x.items()}, tokens=torch.arange(commit_at))
            w.commit()
            w.append({k: v[commit_at:] for k, v in x.items()}, tokens=torch.arange(commit_at, n))
        else:
            w.append(x, tokens=torch.arange(n))
    return x


def test_create_open_read_and_load_from_s3(s3_url):
    x = _write(s3_url, commit_at=333)
    with actstore.open(s3_url) as s:
        assert s.path == s3_url and s.rows == 1000
        assert torch.equal(s.read("h", dtype=torch.bfloat16), x["h"].bfloat16())
        assert torch.equal(s.read("g", [5, 999, 0], dtype=torch.bfloat16), x["g"][[5, 999, 0]].bfloat16())
        assert torch.equal(s.tokens()["token"], torch.arange(1000, dtype=torch.int32))
        info = s.info()
        assert info["bytes_on_disk"] > 0 and info["segments"][0]["rows"] == 1000
        # Every commit record names its writer (object storage and local alike).
        assert len(s.segments[0].commit["writer"]) == 16
    seen = []
    for b in actstore.ActivationLoader(s3_url, "h", 100, tokens=True, seed=3, dtype=torch.bfloat16):
        seen.append(b["token"].long())
        assert torch.equal(b["h"], x["h"][b["token"].long()].bfloat16())
    assert torch.equal(torch.sort(torch.cat(seen)).values, torch.arange(1000))


def test_plain_zarr_over_obstore_reads_the_committed_rows(s3_url, s3_server):
    zarr = pytest.importorskip("zarr")
    from obstore.store import S3Store
    from zarr.storage import ObjectStore

    x = _write(s3_url, n=700, commit_at=300)
    prefix = s3_url.split("/", 3)[3]
    ob = S3Store(
        BUCKET,
        prefix=prefix,
        endpoint=s3_server.endpoint,
        client_options={"allow_http": True},
        access_key_id="testing",
        secret_access_key="testing",
        region="us-east-1",
    )
    g = zarr.open_group(ObjectStore(ob, read_only=True), mode="r")
    assert g.attrs["actstore"]["format_version"] == 1
    seg = g["segments"]["s0"]
    commits = list(seg["commits"].group_keys())
    rows = seg["commits"][max(commits)].attrs["actstore_commit"]["rows"]
    assert rows == 700
    bits = seg["acts"]["h"][:rows]
    assert np.array_equal(bits, x["h"].bfloat16().view(torch.int16).numpy().view(np.uint16))
    assert np.array_equal(seg["tokens"]["token"][:rows], np.arange(700, dtype=np.int32))


@pytest.mark.slow
def test_capture_cli_and_info_take_an_s3_url(s3_url, tmp_path):
    np.save(tmp_path / "toks.npy", token_array(10, seed=2, length=33))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "actstore.cli"]
    r = zygote.run(
        cmd
        + [
            "capture",
            "--model",
            "python:capture_models:make_tiny",
            "--hooks",
            "layers.0",
            "--data",
            str(tmp_path / "toks.npy"),
            "--out",
            s3_url,
            "--context",
            "16",
            "--tokens",
            "200",
            "--json",
            "--no-progress",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["committed_rows"] == 200
    r = zygote.run(cmd + ["info", s3_url, "--json"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["rows"] == 200
    assert actstore.open(s3_url).hooks == ["layers.0"]


def test_disk_cache_serves_second_reads_and_keeps_its_cap(s3_url, tmp_path, monkeypatch):
    x = _write(s3_url, n=2000)
    monkeypatch.setenv("ACTSTORE_CACHE_DIR", str(tmp_path / "cache"))
    shard = max(open_storage(s3_url).size(f"segments/s0/acts/h/c/{i}/0") for i in range(2000 // 64))
    monkeypatch.setenv("ACTSTORE_CACHE_GB", str(4 * shard / 2**30))  # room for about four shards
    s = actstore.open(s3_url)
    cache = s.storage.cache
    assert torch.equal(s.read("h", slice(0, 64), dtype=torch.bfloat16), x["h"][:64].bfloat16())
    assert cache.misses == 2 and cache.hits == 0  # two shards of 32 rows, fetched whole
    s2 = Store(s.storage)  # a new snapshot: the same shards again, served from disk
    assert torch.equal(s2.read("h", slice(0, 64), dtype=torch.bfloat16), x["h"][:64].bfloat16())
    assert cache.misses == 2 and cache.hits == 2
    # 62 full shards through the cache (the 63rd, partial, is fetched whole and not cached).
    assert torch.equal(s2.read("h", dtype=torch.bfloat16), x["h"].bfloat16())
    assert cache.misses + cache.hits == 4 + 62 and cache.misses >= 62
    assert cache.bytes() <= cache.cap + shard  # the oldest were evicted


def _child_reads(store, q):
    try:
        store = actstore.open(store) if isinstance(store, str) else store
        q.put(store.read("h", dtype=torch.bfloat16).view(torch.int16).numpy().tobytes())
    except BaseException as e:  # reported to the parent, which checks it
        q.put(e)


@pytest.mark.slow
def test_fork_after_s3_was_used_is_a_clear_error_and_spawn_works(s3_url):
    x = _write(s3_url, n=300)
    s = actstore.open(s3_url)
    s.read("h", [0])  # the parent's client is built and used
    want = x["h"].bfloat16().view(torch.int16).numpy().tobytes()
    for method in ("fork", "spawn"):
        ctx = mp.get_context(method)
        q = ctx.Queue()
        # fork: the parent's open Store itself; spawn: the URL (a Store holds threads, it does not pickle)
        p = ctx.Process(target=_child_reads, args=(s if method == "fork" else s3_url, q))
        p.start()
        got = q.get(timeout=120)
        p.join(60)
        if method == "fork":  # obstore's runtime did not cross the fork: one line, never a hang
            assert isinstance(got, StoreError) and "spawn" in _one_line(got), got
        else:  # a spawned child opens the store anew, with its own client
            assert got == want, got
    assert torch.equal(s.read("h", dtype=torch.bfloat16), x["h"].bfloat16())  # the parent still reads


def test_partial_shard_replaced_under_an_open_reader(s3_url):
    x = {"h": torch.randn(200, 16), "g": torch.randn(200, 8)}
    w = actstore.create(s3_url, HOOKS, segment="s0", chunk_bytes=256, chunks_per_shard=4, commit_every_shard=False)
    w.append({k: v[:70] for k, v in x.items()})
    w.commit()  # 70 rows: shard 1 is partial
    s = actstore.open(s3_url)
    assert s.rows == 70
    w.append({k: v[70:] for k, v in x.items()})
    w.close()  # shard 1 replaced (If-Match) by a longer one with the same leading rows
    assert torch.equal(s.read("h", dtype=torch.bfloat16), x["h"][:70].bfloat16())
    assert s.refresh().rows == 200
    assert torch.equal(s.read("h", dtype=torch.bfloat16), x["h"].bfloat16())


class _LaggingListing:
    """An S3 storage whose listing misses the newest commit record (a stale cache in front)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def list(self, prefix):
        names = self._inner.list(prefix)
        return names[:-1] if prefix.endswith("/commits") else names


def test_a_listing_that_misses_the_newest_commit(s3_url):
    _write(s3_url, n=500, commit_at=100)
    st = _LaggingListing(open_storage(s3_url))
    s = Store(st)
    assert s.rows == 500  # the newest commit is found past the listing


def test_flipped_byte_and_truncated_shard_name_segment_array_chunk(s3_url):
    _write(s3_url, n=300)
    st = open_storage(s3_url)
    key = "segments/s0/acts/h/c/1/0"
    good = st.read(key)
    bad = bytearray(good)
    bad[40] ^= 0x10
    st.write_atomic(key, bytes(bad))
    with pytest.raises(CorruptDataError) as e:
        actstore.open(s3_url).read("h")
    msg = _one_line(e.value)
    assert "segment 's0'" in msg and "array 'acts/h'" in msg and "chunk" in msg
    st.write_atomic(key, good[: len(good) // 2])
    with pytest.raises(CorruptDataError) as e:
        actstore.open(s3_url).read("h")
    msg = _one_line(e.value)
    assert "segment 's0'" in msg and "array 'acts/h'" in msg and "shard 1" in msg


def test_no_bucket_and_unreachable_endpoint_are_one_line(s3_url, monkeypatch):
    with pytest.raises(StoreError) as e:
        actstore.create(f"s3://no-such-bucket-{os.getpid()}/x", HOOKS)
    assert "does not exist" in _one_line(e.value)
    monkeypatch.setenv("ACTSTORE_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("ACTSTORE_S3_RETRIES", "1")
    with pytest.raises(StoreError) as e:
        actstore.open(s3_url)
    assert "cannot reach the endpoint" in _one_line(e.value)
    with pytest.raises(StoreError) as e:
        open_storage("s3:///prefix")
    assert "names no bucket" in _one_line(e.value)


def test_bad_credentials_are_one_line(monkeypatch, s3_url):
    """A second moto server that checks signatures (IAM auth from its first request on): the
    test credentials are unknown there, as a wrong key would be on AWS."""
    server = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        monkeypatch.setenv("ACTSTORE_S3_ENDPOINT", server.endpoint)
        with pytest.raises(StoreError) as e:
            actstore.open(s3_url)
        msg = _one_line(e.value)
        assert "access denied" in msg and "InvalidAccessKeyId" in msg and "AWS_ACCESS_KEY_ID" in msg
    finally:
        server.stop()


@pytest.mark.slow
def test_train_and_analyze_take_an_s3_url(s3_url, tmp_path, capsys):
    from actstore.cli import main as cli

    n = 2000
    idx = torch.arange(n)
    with actstore.create(s3_url, {"wide": 32}, segment="s0", chunk_bytes=1024, chunks_per_shard=4) as w:
        w.append({"wide": torch.randn(n, 32)}, tokens=idx % 97, doc=idx // 50, pos=idx % 50)
    args = ["--hook", "wide", "--arch", "topk", "--latents", "64", "--k", "4", "--tokens", "384", "--batch-size", "32"]
    assert cli(["train", "--store", s3_url, *args, "--out", str(tmp_path / "o"), "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 12
    rc = cli(["analyze", "--store", s3_url, "--sae", str(tmp_path / "o"), "--out", str(tmp_path / "a"), "--no-progress",
              "--json"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows_seen"] == n and summary["m"] == 64
