"""S3 faults on every data path, between the client and a real moto server (the loopback
FaultProxy, tests/helpers/s3_proxy.py): 503 SlowDown, connection resets, slow, hung and
stalled responses on shard GETs during ``Store.read``, and on shard and commit-record PUTs
while writing. Each fault is either retried and the rows read back exact, or ends, in a
bounded time, in a one-line error that names the key and what to do: never zeros, never
rows that no commit names. The rows are written, or checked, through the proxy-free endpoint.
The loader's and the capture's paths: tests/loader/test_loader_s3_faults.py and
tests/capture/test_capture_s3_faults.py."""

from __future__ import annotations

import re

import pytest
import torch

import actstore
from actstore.errors import CorruptDataError, StoreError
from helpers.s3 import s3_env
from helpers.s3_proxy import SHARD, FaultProxy, bounded

HOOKS = {"h": 16, "g": 8}
# Where faults must be retried: more retries than the faults armed, so that no one request
# can meet them all in a row, whatever the order of the requests.
RETRIES = 10
ROWS = 300  # 32-row shards (8-row chunks of h, 4 a shard): 9 full shards and a partial one per array
GUARD = 20  # seconds: a guard against hanging forever (or against the 1 s timeouts set here not
# applying: obstore's own default is 30 s), far above any run here (at most ~4 s)


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def _data(lo: int = 0, hi: int = ROWS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    full = {name: torch.randn(ROWS * 2, d, generator=g) for name, d in HOOKS.items()}
    return {name: x[lo:hi] for name, x in full.items()}


def _writer(url: str):
    return actstore.create(url, HOOKS, segment="s0", chunk_bytes=256, chunks_per_shard=4, commit_every_shard=False)


def _append(w, lo: int, hi: int) -> None:
    idx = torch.arange(lo, hi)
    w.append(_data(lo, hi), tokens=idx, doc=idx // 10, pos=idx % 10)


def _assert_exact(store, rows: int) -> None:
    assert store.rows == rows
    want = _data(0, rows)
    for name in HOOKS:
        got = store.read(name, dtype=torch.bfloat16)
        assert torch.equal(got.view(torch.int16), want[name].bfloat16().view(torch.int16)), name
    assert torch.equal(store.tokens()["token"].long(), torch.arange(rows))


@pytest.fixture
def proxy(s3_server, monkeypatch):
    p = FaultProxy(s3_server.endpoint)
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def direct(s3_server, monkeypatch):
    """Point actstore at moto itself (no proxy): to write the rows, or to check them."""

    def go():
        for k, v in s3_env(s3_server.endpoint).items():
            monkeypatch.setenv(k, v)

    return go


def _through(proxy, monkeypatch, retries=3, retry_seconds=20, timeout=None):
    monkeypatch.setenv("ACTSTORE_S3_ENDPOINT", proxy.endpoint)
    monkeypatch.setenv("ACTSTORE_S3_RETRIES", str(retries))
    monkeypatch.setenv("ACTSTORE_S3_RETRY_SECONDS", str(retry_seconds))
    if timeout is not None:
        monkeypatch.setenv("ACTSTORE_S3_TIMEOUT_SECONDS", str(timeout))


@pytest.fixture
def written(s3_url):
    """A committed store of ROWS rows, written without faults."""
    w = _writer(s3_url)
    _append(w, 0, ROWS)
    w.close()
    return s3_url


def _shard_paths(rule) -> None:
    assert rule.hits > 0
    assert all(re.search(SHARD, p) for p in rule.paths), rule.paths[:3]


# -- Store.read: shard GETs -------------------------------------------------------------


def test_shard_get_503s_and_resets_are_retried_and_read_exact(written, proxy, monkeypatch):
    _through(proxy, monkeypatch, retries=RETRIES)
    s = actstore.open(written)
    slow_down = proxy.arm("503", kind="shard-get", every=2, times=6)
    reset = proxy.arm("reset", kind="ranged-get", times=4)
    whole = proxy.arm("503", kind="shard-get", ranged=False, times=2)  # the partial shards: whole GETs
    _assert_exact(s, ROWS)
    assert (slow_down.hits, reset.hits, whole.hits) == (6, 4, 2)
    for rule in (slow_down, reset, whole):
        _shard_paths(rule)


@pytest.mark.parametrize(
    "fault,method",
    [("503", "GET"), ("reset", "GET"), ("503", "HEAD")],
    ids=["503-get", "reset-get", "503-head"],
)
def test_shard_reads_failing_past_the_retries_are_one_line_never_zeros(written, proxy, monkeypatch, fault, method):
    _through(proxy, monkeypatch, retries=1, retry_seconds=1)
    s = actstore.open(written)
    _assert_exact(s, ROWS)  # the full shards' indexes are cached now: only their data GETs are left
    rule = proxy.arm(fault, method, SHARD)
    # The rows of the full shards (ranged GETs of their chunks), then all (and the partial
    # shard's whole GET): each read fails in one line, none returns rows.
    for rows in (slice(0, ROWS // 32 * 32), None):
        with pytest.raises(StoreError) as e:
            s.read("h", rows)
        msg = _one_line(e.value)
        # Not damage: the shard is there, the service failed. The key and the cure are named.
        assert not isinstance(e.value, CorruptDataError) and "damaged" not in msg, msg
        assert re.search(r"'segments/s0/acts/h/c/\d+/0'", msg) and "failed after 1 retries" in msg, msg
        assert "check the service" in msg and "retry" in msg
        assert ("SlowDown" if method == "GET" and fault == "503" else "503" if fault == "503" else "dropped") in msg
    _shard_paths(rule)
    proxy.clear()  # the service is back: the same Store reads every row
    _assert_exact(s, ROWS)


def test_a_read_stops_at_the_first_failed_shard(written, proxy, monkeypatch):
    """A server that stopped answering costs one timeout per worker, not one per shard."""
    _through(proxy, monkeypatch, retries=0, retry_seconds=1, timeout=0.5)
    s = actstore.open(written, threads=2)
    rule = proxy.arm("hung", kind="ranged-get")  # every full shard's index read hangs
    with pytest.raises(StoreError, match="timed out"):
        bounded(GUARD, s.read, "h")
    assert 0 < rule.hits <= 4  # 2 workers (+1 each that raced the cancellation); 9 full shards


# -- Store.read: slow, hung and stalled responses ---------------------------------------


def test_slow_shard_responses_read_exact(written, proxy, monkeypatch):
    _through(proxy, monkeypatch, timeout=10)
    s = actstore.open(written)
    rule = proxy.arm("slow", kind="shard-get", every=3, times=8, delay=0.2)
    bounded(GUARD, _assert_exact, s, ROWS)
    _shard_paths(rule)


def test_slower_than_the_timeout_then_hung_then_stalled_are_retried_and_read_exact(written, proxy, monkeypatch):
    _through(proxy, monkeypatch, retries=RETRIES, retry_seconds=20, timeout=1)
    s = actstore.open(written)
    rules = [
        proxy.arm("slow", kind="shard-get", times=1, delay=3),  # past the 1 s timeout: abandoned, retried
        proxy.arm("hung", kind="ranged-get", times=2),
        proxy.arm("stall", kind="shard-get", times=2),  # half the body, then silence
    ]
    bounded(GUARD, _assert_exact, s, ROWS)
    for rule in rules:
        _shard_paths(rule)


@pytest.mark.parametrize("fault", ["hung", "stall"])
def test_a_server_that_never_answers_is_a_bounded_one_line_error(written, proxy, monkeypatch, fault):
    _through(proxy, monkeypatch, retries=1, retry_seconds=1, timeout=1)
    s = actstore.open(written)
    rule = proxy.arm(fault, kind="shard-get")
    with pytest.raises(StoreError) as e:
        bounded(GUARD, s.read, "g")
    msg = _one_line(e.value)
    _shard_paths(rule)
    assert re.search(r"'segments/s0/acts/g/c/\d+/0'", msg) and "timed out" in msg, msg
    assert "ACTSTORE_S3_TIMEOUT_SECONDS=1 s" in msg and "check the service" in msg


def test_the_timeout_setting_is_checked():
    from actstore.store.storage import open_storage

    for bad in ("soon", "0", "-1", "inf"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ACTSTORE_S3_TIMEOUT_SECONDS", bad)
            with pytest.raises(StoreError, match="ACTSTORE_S3_TIMEOUT_SECONDS") as e:
                open_storage("s3://bucket/x")
            _one_line(e.value)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACTSTORE_S3_TIMEOUT_SECONDS", "2.5")
        assert open_storage("s3://bucket/x").timeout == 2.5
        mp.delenv("ACTSTORE_S3_TIMEOUT_SECONDS")
        assert open_storage("s3://bucket/x").timeout == 30


# -- writing: shard and commit-record PUTs ----------------------------------------------


def test_shard_and_commit_put_faults_are_retried_and_the_store_exact(s3_url, proxy, monkeypatch, direct):
    _through(proxy, monkeypatch, retries=RETRIES, retry_seconds=20, timeout=1)
    rules = [
        proxy.arm("503", kind="shard-put", every=2, times=3),
        proxy.arm("reset", kind="shard-put", times=2),
        proxy.arm("hung", kind="shard-put", times=1),  # timed out before it landed: retried
        proxy.arm("lost", kind="shard-put", times=1),  # timed out after it landed: resolved by the read-back
        proxy.arm("503", kind="commit-put", times=1),
        proxy.arm("reset", kind="commit-put", times=1),
        proxy.arm("lost", kind="commit-put", times=1),
    ]
    w = bounded(GUARD, _writer, s3_url)
    for lo in range(0, ROWS, 100):
        _append(w, lo, lo + 100)
        bounded(GUARD, w.commit)
    w.close()
    assert [r.hits for r in rules] == [3, 2, 1, 1, 1, 1, 1]
    direct()
    _assert_exact(actstore.open(s3_url), ROWS)


@pytest.mark.parametrize("fault", ["503", "reset", "hung"])
@pytest.mark.parametrize("kind", ["shard-put", "commit-put"])
def test_put_faults_past_the_retries_leave_the_commits_and_a_new_writer_resumes(
    s3_url, proxy, monkeypatch, direct, fault, kind
):
    _through(proxy, monkeypatch, retries=1, retry_seconds=1, timeout=1)
    w = _writer(s3_url)
    _append(w, 0, 100)
    w.commit()
    _append(w, 100, 200)
    rule = proxy.arm(fault, kind=kind)  # every such PUT, until cleared
    with pytest.raises(StoreError) as e:
        bounded(GUARD, w.commit)
    msg = _one_line(e.value)
    where = r"/c/\d+(/0)?" if kind == "shard-put" else r"/commits/\d+/zarr\.json"
    assert re.search(rf"write 'segments/s0(/[^']*)?{where}'", msg) and "committed rows are intact" in msg, msg
    assert {"503": "SlowDown", "reset": "dropped", "hung": "timed out"}[fault] in msg
    assert 0 < rule.hits <= 5 * 2 * 2  # 5 arrays' shards (or 1 record), 1 + 1 tries, 2 for a timed-out write
    w.abort()  # the writer gives up (its lease is released)
    direct()
    _assert_exact(actstore.open(s3_url), 100)  # only the committed rows, exact
    w = _writer(s3_url)  # a new writer resumes from the last commit and finishes
    assert w.committed_rows == 100
    _append(w, 100, ROWS)
    w.close()
    _assert_exact(actstore.open(s3_url), ROWS)
