"""A capture into an ``s3://`` store with faults on its shard and commit-record PUTs (503
SlowDown, resets, writes that landed but whose answer never came), between
the client and a real moto server (the loopback FaultProxy, tests/helpers/s3_proxy.py):
retried, and the store is bit-identical to a fault-free local capture; or, past the retries,
a one-line error, the store holds an exact prefix of committed rows, and the same command
resumes it to the full store."""

from __future__ import annotations

import pytest
import torch

import actstore
from actstore.capture import CaptureConfig
from actstore.capture.runner import _run_capture
from helpers.capture_models import TinyLM, token_docs
from helpers.s3 import s3_env
from helpers.s3_proxy import FaultProxy, bounded

HOOKS = "layers.0,layers.2"
OPTIONS = dict(context=16, batch_size=4, chunk_bytes=1024, chunks_per_shard=2, progress=False, commit_every=0.0)
DOCS = 20
GUARD = 25  # seconds: a guard against hanging forever (or against the 1 s timeouts set here not
# applying: obstore's own default is 30 s), far above any run here (at most ~5 s)


def _capture(out, after_batch=None):
    docs = token_docs(DOCS, seed=11)
    return _run_capture(TinyLM(), HOOKS, docs, out, CaptureConfig(**OPTIONS), after_batch=after_batch)


def _snapshot(path) -> dict[str, torch.Tensor]:
    st = actstore.open(path)
    out = {h: st.read(h, dtype=torch.bfloat16).view(torch.int16) for h in st.hooks}
    out.update(st.tokens())
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "store"
    _capture(out)
    return _snapshot(out)


@pytest.fixture
def proxy(s3_server, s3_url, monkeypatch):
    p = FaultProxy(s3_server.endpoint)
    monkeypatch.setenv("ACTSTORE_S3_ENDPOINT", p.endpoint)
    monkeypatch.setenv("ACTSTORE_S3_TIMEOUT_SECONDS", "1")
    try:
        yield p
    finally:
        p.stop()


def _direct(s3_server, monkeypatch):
    for k, v in s3_env(s3_server.endpoint).items():
        monkeypatch.setenv(k, v)


def _assert_prefix(snap, reference, n=None):
    n = snap["token"].numel() if n is None else n
    for k in reference:
        assert torch.equal(snap[k], reference[k][:n]), k
    return n


def test_put_faults_during_a_capture_are_retried_and_the_store_exact(proxy, s3_url, s3_server, monkeypatch, reference):
    monkeypatch.setenv("ACTSTORE_S3_RETRIES", "12")  # more than the faults armed: no request meets them all
    rules = [
        proxy.arm("503", kind="shard-put", every=2, times=4),
        proxy.arm("reset", kind="shard-put", times=2),
        proxy.arm("lost", kind="shard-put", times=1),  # timed out, landed (hung ones: the store's tests)
        proxy.arm("503", kind="commit-put", times=1),
        proxy.arm("lost", kind="commit-put", times=1),
    ]
    bounded(GUARD, _capture, s3_url)
    assert [r.hits for r in rules] == [4, 2, 1, 1, 1]
    _direct(s3_server, monkeypatch)
    snap = _snapshot(s3_url)
    assert snap["token"].numel() == reference["token"].numel()
    _assert_prefix(snap, reference)


@pytest.mark.parametrize("kind", ["shard-put", "commit-put"])
def test_a_capture_whose_puts_keep_failing_stops_in_one_line_and_the_same_command_resumes(
    proxy, s3_url, s3_server, monkeypatch, reference, kind
):
    monkeypatch.setenv("ACTSTORE_S3_RETRIES", "1")
    monkeypatch.setenv("ACTSTORE_S3_RETRY_SECONDS", "1")

    def fail_from(n):
        if n == 6:  # from the 6th batch on, every such PUT fails
            proxy.arm("503", kind=kind)

    with pytest.raises(actstore.StoreError) as e:
        bounded(GUARD, _capture, s3_url, fail_from)
    msg = str(e.value)
    assert msg and "\n" not in msg and "SlowDown" in msg and "committed rows are intact" in msg, msg
    proxy.clear()
    _direct(s3_server, monkeypatch)
    n = _assert_prefix(_snapshot(s3_url), reference)  # only committed rows, exact
    assert 0 < n < reference["token"].numel()
    bounded(GUARD, _capture, s3_url)  # the same command again: resumes from the last commit
    snap = _snapshot(s3_url)
    assert snap["token"].numel() == reference["token"].numel()
    _assert_prefix(snap, reference)
