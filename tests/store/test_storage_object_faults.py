"""S3 faults between the client and a real moto server, injected by a loopback proxy
(tests/helpers/s3_proxy.py): 503 SlowDown below and above the retry limit, connection
resets, a PUT that keeps failing, and a create whose write landed but whose response was
dropped. Readers check through the proxy-free endpoint what is committed."""

from __future__ import annotations

import pytest
import torch

import actstore
from actstore.errors import StoreError
from helpers.s3 import s3_env
from helpers.s3_proxy import FaultProxy

HOOKS = {"h": 16}
COMMIT = r"/commits/\d+/zarr\.json"


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)
    return msg


@pytest.fixture
def proxy(s3_server, s3_url, monkeypatch):
    p = FaultProxy(s3_server.endpoint)
    monkeypatch.setenv("ACTSTORE_S3_ENDPOINT", p.endpoint)
    monkeypatch.setenv("ACTSTORE_S3_RETRIES", "3")
    try:
        yield p
    finally:
        p.stop()


def _direct(s3_server, monkeypatch):
    """Read what is committed without the proxy."""
    for k, v in s3_env(s3_server.endpoint).items():
        monkeypatch.setenv(k, v)


def _writer(url):
    return actstore.create(url, HOOKS, segment="s0", chunk_bytes=256, chunks_per_shard=4, commit_every_shard=False)


def test_503_below_the_retry_limit_pass_and_resets_are_retried(proxy, s3_url):
    x = torch.randn(100, 16)
    proxy.arm("503", "PUT", times=2)
    proxy.arm("reset", "GET", times=2)
    w = _writer(s3_url)
    w.append({"h": x})
    w.close()
    assert torch.equal(actstore.open(s3_url).read("h", dtype=torch.bfloat16), x.bfloat16())
    assert proxy.hits["503"] == 2 and proxy.hits["reset"] == 2


def test_a_put_that_keeps_failing_is_one_line_and_a_retry_succeeds(proxy, s3_url, s3_server, monkeypatch):
    x = torch.randn(200, 16)
    w = _writer(s3_url)
    w.append({"h": x[:100]})
    w.commit()
    w.append({"h": x[100:]})
    proxy.arm("503", "PUT")  # every PUT, until cleared
    with pytest.raises(StoreError) as e:
        w.commit()
    # Bounded: each of the shard's 5 array PUTs (acts/h and the 4 token columns), sent at once,
    # is tried 1 + 3 times (ACTSTORE_S3_RETRIES), then the commit gives up.
    assert 0 < proxy.hits["503"] <= 5 * 4
    assert "failed after 3 retries" in _one_line(e.value) and "SlowDown" in str(e.value)
    assert actstore.open(s3_url).rows == 100  # committed rows untouched
    proxy.clear()
    w.commit()  # the same writer retries once the fault clears
    w.close()
    s = actstore.open(s3_url)
    assert s.rows == 200 and torch.equal(s.read("h", dtype=torch.bfloat16), x.bfloat16())


def test_a_create_whose_response_was_lost_is_resolved_by_reading_back(proxy, s3_url):
    x = torch.randn(100, 16)
    w = _writer(s3_url)
    w.append({"h": x[:50]})
    w.commit()
    proxy.arm("drop", "PUT", COMMIT, times=1)  # the commit record lands; its answer never comes
    w.append({"h": x[50:]})
    w.commit()  # obstore retries, S3 answers 412 (exists), the read-back finds our own record
    assert proxy.hits["drop"] == 1
    w.close()
    s = actstore.open(s3_url)
    assert s.rows == 100 and torch.equal(s.read("h", dtype=torch.bfloat16), x.bfloat16())
    assert s.segments[0].commit["writer"] == w.writer_id
