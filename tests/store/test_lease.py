"""One writer per segment on object storage (store/lease.py, store/writer.py), on S3.

A second writer is refused in one line naming the holder; a released lease is free at
once; an expired one is taken over, and the writer that held it (stopped by SIGSTOP, a
real subprocess) is refused when it wakes, while readers see exactly the new writer's
commits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import actstore
from actstore.errors import StoreError
from helpers.kill_writer import HOOKS, rows
from helpers.paths import HELPERS


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def _create(url, **kw):
    return actstore.create(url, HOOKS, segment="s0", chunk_bytes=1024, chunks_per_shard=4, **kw)


def test_a_second_writer_is_refused_and_a_released_lease_is_free(s3_url):
    w = _create(s3_url)
    w.append(rows(0, 50), tokens=torch.arange(50))
    w.commit()
    with pytest.raises(StoreError) as e:
        _create(s3_url)
    msg = _one_line(e.value)
    assert "is being written by writer " + w.writer_id in msg and "another segment" in msg
    other = actstore.create(s3_url, HOOKS, segment="s1", chunk_bytes=1024, chunks_per_shard=4)  # another segment: fine
    other.close()
    w.close()  # the lease is written back expired: the next writer need not wait
    w2 = _create(s3_url)
    assert w2.committed_rows == 50 and w2.writer_id != w.writer_id
    w2.append(rows(50, 80), tokens=torch.arange(50, 80))
    w2.close()
    assert actstore.open(s3_url).segments[0].rows == 80


def test_an_expired_lease_is_taken_over_and_the_stale_writer_refused(s3_url, monkeypatch):
    monkeypatch.setenv("ACTSTORE_LEASE_SECONDS", "1")
    stale = _create(s3_url, commit_every_shard=False)
    stale.append(rows(0, 70), tokens=torch.arange(70))
    stale.commit()
    stale._lease._stop.set()  # its heartbeat stops, as if the process were suspended
    stale._lease._thread.join()
    time.sleep(1.2)
    new = _create(s3_url)  # takes the expired lease over and fences with a commit of its own
    assert new.committed_rows == 70 and new._lease.took_over["writer"] == stale.writer_id
    new.append(rows(70, 150), tokens=torch.arange(70, 150))
    new.commit()
    stale.append(rows(70, 90), tokens=torch.arange(70, 90))  # buffered only
    with pytest.raises(StoreError) as e:
        stale.commit()
    assert "taken over by writer " + new.writer_id in _one_line(e.value)
    stale.abort()
    new.close()
    s = actstore.open(s3_url)
    assert s.rows == 150 and s.segments[0].commit["writer"] == new.writer_id
    assert torch.equal(s.tokens()["token"].long(), torch.arange(150))
    assert torch.equal(s.read("h", dtype=torch.bfloat16), rows(0, 150)["h"].bfloat16())


@pytest.mark.slow
def test_a_sigstopped_zombie_wakes_up_refused(s3_url, monkeypatch):
    monkeypatch.setenv("ACTSTORE_LEASE_SECONDS", "2")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen(
        [sys.executable, str(HELPERS / "lease_writer.py"), s3_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = p.stdout.readline()
        assert line.startswith("ready"), p.stderr.read()
        zombie = line.split()[1]
        with pytest.raises(StoreError) as e:  # alive: refused
            _create(s3_url)
        assert zombie in _one_line(e.value)
        p.send_signal(signal.SIGSTOP)
        time.sleep(2.5)  # its lease expires while it is stopped
        new = _create(s3_url)
        assert new.committed_rows == 100 and new._lease.took_over["writer"] == zombie
        new.append(rows(100, 130), tokens=torch.arange(100, 130))
        new.commit()
        p.send_signal(signal.SIGCONT)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=120)
        assert p.returncode == 3, (out, err)
        refusal = out.strip().splitlines()[-1]
        assert refusal.startswith("refused ") and "taken over" in refusal and new.writer_id in refusal
        new.close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    s = actstore.open(s3_url)
    assert s.rows == 130 and s.segments[0].commit["writer"] == new.writer_id
    assert torch.equal(s.tokens()["token"].long(), torch.arange(130))
    assert torch.equal(s.read("g", dtype=torch.bfloat16), rows(0, 130)["g"].bfloat16())


def test_writing_is_refused_where_puts_are_not_conditional(s3_url, monkeypatch):
    """A server that ignores If-None-Match (an old S3-compatible one): refused, with a hint."""
    from actstore.store.storage._object import ObjectStorage

    def ignoring(self, key, data, expect):  # what such a server does: every PUT lands
        self.write_atomic(key, data)
        return "etag"

    monkeypatch.setattr(ObjectStorage, "write_if", ignoring)
    with pytest.raises(StoreError) as e:
        _create(s3_url)
    assert "ignores conditional writes" in _one_line(e.value)
