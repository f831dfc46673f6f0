"""One writer per segment on object storage (store/lease.py, store/writer.py), on S3.

A second writer is refused in one line naming the holder; a released lease is free at
once; an expired one is taken over, and the writer that held it (stopped by SIGSTOP, a
real subprocess) is refused when it wakes, while readers see exactly the new writer's
commits. An unexpired lease whose holder is a dead process of this host (gone, a zombie,
or its pid reused) is taken over at once; a live holder, or one on another host, boot or
pid namespace, is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import actstore
from actstore.errors import StoreError
from helpers import zygote
from helpers.kill_writer import HOOKS, rows
from helpers.paths import HELPERS


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg, repr(msg)
    return msg


def _create(url, **kw):
    return actstore.create(url, HOOKS, segment="s0", chunk_bytes=1024, chunks_per_shard=4, **kw)


def _start_tick(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat: the process's start, in clock ticks after boot."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def _lease_writer(url: str) -> subprocess.Popen:
    """helpers/lease_writer.py: a real subprocess that holds segment s0's lease, 100 rows
    committed, until it reads a line (the environment as the test left it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")])}
    return zygote.Popen(
        [sys.executable, str(HELPERS / "lease_writer.py"), url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


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
    p = _lease_writer(s3_url)
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


on_linux = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="dead holders are told by /proc (Linux)")


@on_linux
def test_a_live_holder_is_refused_and_a_killed_one_taken_over_at_once(s3_url, monkeypatch):
    monkeypatch.delenv("ACTSTORE_LEASE_SECONDS", raising=False)  # the default: 60 s
    p = _lease_writer(s3_url)
    try:
        line = p.stdout.readline()
        assert line.startswith("ready"), p.stderr.read()
        holder = line.split()[1]
        with pytest.raises(StoreError) as e:  # alive, on this host: refused
            _create(s3_url)
        assert f"is being written by writer {holder} (host {socket.gethostname()}, pid {p.pid}" in _one_line(e.value)
        p.send_signal(signal.SIGSTOP)  # stopped is not dead: still refused
        assert zygote.wait_stopped(p)
        with pytest.raises(StoreError) as e:
            _create(s3_url)
        assert "is being written by writer " + holder in _one_line(e.value)
        p.kill()
        p.wait()
        t0 = time.monotonic()
        new = _create(s3_url)  # its lease has ~60 s to go, but its process is gone
        assert time.monotonic() - t0 < 10
        assert new.committed_rows == 100 and new._lease.took_over["writer"] == holder
        assert new._lease.took_over["pid"] == p.pid
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    new.append(rows(100, 130), tokens=torch.arange(100, 130))
    new.close()
    s = actstore.open(s3_url)
    assert s.rows == 130 and s.segments[0].commit["writer"] == new.writer_id
    assert torch.equal(s.tokens()["token"].long(), torch.arange(130))
    assert torch.equal(s.read("h", dtype=torch.bfloat16), rows(0, 130)["h"].bfloat16())


@on_linux
def test_a_lease_record_is_taken_over_only_when_its_holder_is_dead_here(s3_url):
    """The record of a real writer of this process (alive, its heartbeat stopped), changed in
    one respect at a time and written back unexpired: taken over exactly when the process it
    names is certainly dead on this host."""
    gone = zygote.Popen(["true"])
    gone.wait()  # a pid with no process (reaped)
    live = zygote.Popen(["sleep", "60"])  # another live process of this host
    zombie = zygote.Popen(["sleep", "60"])
    zombie_start = _start_tick(zombie.pid)
    zombie.kill()  # exited, not reaped: its /proc entry stays, state Z
    old = lambda r: {k: v for k, v in r.items() if k not in ("boot_id", "pid_ns", "pid_start")}  # noqa: E731
    cases = {  # name: (the record changed, taken over?)
        "this live process": (lambda r: r, False),
        "another live process": (lambda r: {**r, "pid": live.pid, "pid_start": _start_tick(live.pid)}, False),
        "pid reused: a live pid, another start tick": (lambda r: {**r, "pid_start": r.get("pid_start", 0) + 1}, True),
        "pid gone": (lambda r: {**r, "pid": gone.pid}, True),
        "a zombie": (lambda r: {**r, "pid": zombie.pid, "pid_start": zombie_start}, True),
        "pid gone, another host": (lambda r: {**r, "pid": gone.pid, "host": "elsewhere"}, False),
        "pid gone, another boot (a reboot, another machine)": (lambda r: {**r, "pid": gone.pid, "boot_id": "x"}, False),
        "pid gone, another pid namespace (a container)": (lambda r: {**r, "pid": gone.pid, "pid_ns": 1}, False),
        "older record, live pid": (lambda r: old(r), False),
        "older record, pid gone": (lambda r: old({**r, "pid": gone.pid}), True),
    }
    wrong = []
    try:
        for i, (name, (change, dead)) in enumerate(cases.items()):
            url = f"{s3_url}/c{i}"
            w = _create(url)
            w.append(rows(0, 10), tokens=torch.arange(10))
            w.commit()
            w._lease._stop.set()  # no more renewals: the record below stays as written
            w._lease._thread.join()
            doc = json.loads(w.storage.read(w._lease.key))
            rec = change(doc["attributes"]["actstore_lease"])
            rec["expires"] = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
            doc["attributes"]["actstore_lease"] = rec
            w.storage.write_atomic(w._lease.key, json.dumps(doc).encode())
            try:
                new = _create(url)
            except StoreError as e:
                assert "is being written by writer " + w.writer_id in _one_line(e)
                if dead:
                    wrong.append(f"{name}: refused")
                w.abort()
                continue
            if not dead:
                wrong.append(f"{name}: taken over")
            assert new.committed_rows == 10 and new._lease.took_over == rec
            w.append(rows(10, 20), tokens=torch.arange(10, 20))  # the old holder, were it alive: fenced
            with pytest.raises(StoreError) as e:
                w.commit()
            assert "taken over by writer " + new.writer_id in _one_line(e.value)
            w.abort()
            new.close()
            assert actstore.open(url).segments[0].commit["writer"] == new.writer_id
    finally:
        live.kill()
        live.wait()
        zombie.wait()
    assert not wrong, wrong


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


def test_proc_stat_reads_a_command_name_with_spaces_and_parentheses(tmp_path):
    """/proc/<pid>/stat's field 2 is the command name in parentheses, which may itself hold
    " (" and ")": the fields after it are found after the last ")", the pid before the first " (".
    """
    from actstore.store.lease import _proc_stat

    exe = tmp_path / "w (1) )x"  # the command name is the name the program was started by
    exe.symlink_to(sys.executable)
    p = subprocess.Popen([str(exe), "-c", "import time; time.sleep(60)"])
    try:
        deadline = time.monotonic() + 30
        while open(f"/proc/{p.pid}/comm").read().strip() != exe.name:  # until it has exec'd
            assert time.monotonic() < deadline, "the child never ran under its new name"
            time.sleep(0.01)
        got = _proc_stat(p.pid)
        assert got is not None and got[0] == p.pid and got[1] in "RSD" and got[2] == _start_tick(p.pid)
    finally:
        p.kill()
        p.wait()


def test_a_pid_of_another_user_exists(monkeypatch):
    # os.kill(pid, 0) on another user's process fails with EPERM: it exists (the tests run as
    # root, who may signal anyone, so the answer is forced here).
    from actstore.store import lease

    def kill(pid, sig, error=PermissionError):
        raise error(1, "Operation not permitted")

    monkeypatch.setattr(lease.os, "kill", kill)
    assert lease._pid_exists(4242)
    monkeypatch.setattr(lease.os, "kill", lambda pid, sig: kill(pid, sig, ProcessLookupError))
    assert not lease._pid_exists(4242)
