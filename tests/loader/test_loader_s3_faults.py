"""A full ``ActivationLoader`` epoch over an ``s3://`` store with faults on its shard GETs
(503 SlowDown, resets, hung and stalled responses) between the client and a real moto server
(the loopback FaultProxy, tests/helpers/s3_proxy.py): retried, every row served once with
its exact stored values; or, past the retries, the batches already served are exact and the
epoch ends in a one-line error naming the key, never in a batch of zeros."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import actstore
from actstore import ActivationLoader
from helpers.loader_store import NARROW, SEGMENTS, WIDE, acts, build
from helpers.s3_proxy import SHARD, FaultProxy, bounded

TOTAL = sum(SEGMENTS.values())
GUARD = 25  # seconds: a guard against hanging forever (or against the 1 s timeouts set here not
# applying: obstore's own default is 30 s), far above any run here (at most ~5 s)


@pytest.fixture
def store_url(s3_url):
    build(s3_url)  # written without faults: 2 segments, fp32, 256-row shards
    return s3_url


@pytest.fixture
def proxy(s3_server, monkeypatch):
    p = FaultProxy(s3_server.endpoint)
    monkeypatch.setenv("ACTSTORE_S3_ENDPOINT", p.endpoint)
    try:
        yield p
    finally:
        p.stop()


def _check(batch) -> np.ndarray:
    t = batch["token"].numpy()
    assert torch.equal(batch["wide"], acts(t, WIDE, 1.0))  # fp32 storage: exact
    assert torch.equal(batch["narrow"], acts(t, NARROW, 2.0))
    return t


def _epoch(loader) -> np.ndarray:
    return np.concatenate([_check(b) for b in loader])


def test_an_epoch_retries_shard_get_faults_and_serves_every_row_exact(store_url, proxy, monkeypatch):
    monkeypatch.setenv("ACTSTORE_S3_RETRIES", "16")  # more than the faults armed: no request meets them all
    monkeypatch.setenv("ACTSTORE_S3_TIMEOUT_SECONDS", "1")
    rules = [
        proxy.arm("503", kind="shard-get", every=2, times=8),
        proxy.arm("reset", kind="ranged-get", times=4),
        proxy.arm("hung", kind="shard-get", times=1),
        proxy.arm("stall", kind="shard-get", times=1),
    ]
    ld = ActivationLoader(actstore.open(store_url), ["wide", "narrow"], 128, tokens=True, seed=7, buffer_rows=512)
    got = bounded(GUARD, _epoch, ld)
    assert got.size == TOTAL and np.array_equal(np.sort(got), np.arange(TOTAL))  # every row once
    assert [r.hits for r in rules] == [8, 4, 1, 1]
    assert all(re.search(SHARD, p) for r in rules for p in r.paths)


@pytest.mark.parametrize("fault", ["503", "reset", "hung"])
def test_shard_gets_failing_past_the_retries_end_the_epoch_in_one_line_never_zeros(
    store_url, proxy, monkeypatch, fault
):
    monkeypatch.setenv("ACTSTORE_S3_RETRIES", "1")
    monkeypatch.setenv("ACTSTORE_S3_RETRY_SECONDS", "1")
    monkeypatch.setenv("ACTSTORE_S3_TIMEOUT_SECONDS", "1")
    ld = ActivationLoader(actstore.open(store_url), ["wide", "narrow"], 64, tokens=True, seed=3, buffer_rows=256)
    served = []

    def run():
        for b in ld:
            served.append(_check(b))  # every batch served is exact
            if len(served) == 1:  # the service fails after the first batch, for good
                proxy.arm(fault, kind="shard-get")

    with pytest.raises(actstore.StoreError) as e:
        bounded(GUARD, run)
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    assert re.search(r"'segments/rank0000[01]/(acts|tokens)/\w+/c/\d+(/0)?'", msg), msg  # a shard of a hook or a column
    assert {"503": "SlowDown", "reset": "dropped", "hung": "timed out"}[fault] in msg and "retry" in msg
    rows = np.concatenate(served)
    assert 0 < rows.size < TOTAL and np.unique(rows).size == rows.size
