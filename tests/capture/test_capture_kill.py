"""Capture under real faults: SIGKILL at seeded batch numbers, two ranks under torchrun (gloo),
a full disk (a real 1 MiB tmpfs, where mounting is allowed) and a write that fails
with EFBIG (RLIMIT_FSIZE). Every case ends with every token stored exactly once, or a
one-line error and committed rows that read back intact."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import actstore
from helpers import zygote
from helpers.paths import HELPERS
from helpers.procs import torchrun

JOB = HELPERS / "capture_job.py"
TRIALS = int(os.environ.get("ACTSTORE_CAPTURE_KILL_TRIALS", "4"))


def _run(*args, **kw):
    return zygote.run([sys.executable, str(JOB), *map(str, args)], capture_output=True, text=True, timeout=300, **kw)


def _snapshot(path):
    st = actstore.open(path)
    out = {h: st.read(h, dtype=torch.bfloat16).view(torch.int16) for h in st.hooks}
    out.update(st.tokens())
    out["count"] = torch.tensor([st.stats(h)["count"] for h in st.hooks])
    out["mean"] = torch.stack([st.stats(h)["mean"] for h in st.hooks])
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if k == "mean":  # merged in another order across commits: equal to float64 rounding
            assert torch.allclose(a[k], b[k], rtol=1e-9, atol=1e-12), k
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "store"
    r = _run(out)
    assert r.returncode == 0, r.stderr
    return _snapshot(out)


def _start_paused(out, batch, *args):
    """Start the job (``args``: more of its options) and return it stopped (SIGSTOP) right
    after its ``batch``-th batch, or None if it completed the store (exit 0) before
    reaching that batch.

    The child stops itself at that batch, so where the signal lands is fixed by the batch
    number whatever the machine's speed; its writer thread stops with it wherever it was."""
    p = zygote.Popen(
        [sys.executable, str(JOB), str(out), "--pause-at", str(batch), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in p.stdout:
        if line.startswith("paused"):
            break
    else:
        p.wait()
        assert p.returncode == 0, f"the job failed before batch {batch}: {p.stderr.read()}"
        return None
    assert zygote.wait_stopped(p), f"the job ended ({p.returncode}) before it stopped at batch {batch}"
    return p


@pytest.mark.slow
def test_sigkill_at_seeded_batches_then_rerun_matches(tmp_path, reference):
    rng = random.Random(1234)
    out = tmp_path / "store"
    kills = 0
    for trial in range(TRIALS):
        # The job has ~72 batches: with the default 4 trials of at most 12 batches, every trial kills.
        p = _start_paused(out, rng.randint(1, 12))
        if p is None:
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert p.returncode == -signal.SIGKILL
        kills += 1
        # What survived is a clean prefix of the uninterrupted run.
        if (out / "zarr.json").exists():
            snap = _snapshot(out)
            n = snap["token"].numel()
            for k in ("token", "doc", "pos", "flags", "layers.0", "layers.2"):
                assert torch.equal(snap[k], reference[k][:n]), (trial, k)
    assert kills >= min(TRIALS, 4)
    r = _run(out)
    assert r.returncode == 0, r.stderr
    _assert_same(_snapshot(out), reference)


@pytest.mark.slow
def test_sigkill_on_s3_then_the_same_command_resumes_at_once(tmp_path, s3_url, monkeypatch):
    """Object storage: the rerun takes the killed run's lease over at once (same host, its
    pid gone: store/lease.py) instead of being refused until ACTSTORE_LEASE_SECONDS (the
    default 60 s here) have passed, and ends bit-identical to an uninterrupted run."""
    monkeypatch.delenv("ACTSTORE_LEASE_SECONDS", raising=False)
    docs = ("--docs", 40)  # ~21 batches: a short run
    r = _run(tmp_path / "ref", *docs)
    assert r.returncode == 0, r.stderr
    reference, batches = _snapshot(tmp_path / "ref"), r.stdout.count("batch ")
    # Stopped after batch 12, its writer thread wherever it was (mid-PUT or not), then killed.
    p = _start_paused(s3_url, 12, *docs)
    assert p is not None
    p.send_signal(signal.SIGKILL)
    p.wait()
    snap = _snapshot(s3_url)
    n = snap["token"].numel()
    assert 0 < n < reference["token"].numel()  # a prefix was committed: the rerun resumes it
    for k in ("token", "layers.0", "layers.2"):
        assert torch.equal(snap[k], reference[k][:n])
    r = _run(s3_url, *docs)  # at once: the lease the killed run held has 60 s to go
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("batch ") < batches  # it resumed, not started over
    _assert_same(_snapshot(s3_url), reference)


@pytest.mark.slow
def test_ctrl_c_commits_what_is_complete_and_rerun_finishes(tmp_path, reference):
    out = tmp_path / "store"
    p = _start_paused(out, 5)
    assert p is not None
    p.send_signal(signal.SIGINT)  # pending while stopped; delivered inside batch 5's callback once continued
    p.send_signal(signal.SIGCONT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted;" in err and "re-run the same command to resume" in err
    n = int(err.split("interrupted;")[1].split("rows committed")[0].replace(",", ""))
    snap = _snapshot(out)
    assert snap["token"].numel() == n == 5 * 64  # batches 1-5 (64 tokens each), committed on Ctrl-C
    for k in ("token", "layers.0", "layers.2"):
        assert torch.equal(snap[k], reference[k][:n])
    r = _run(out)
    assert r.returncode == 0, r.stderr
    _assert_same(_snapshot(out), reference)


@pytest.mark.slow
def test_two_ranks_under_torchrun_store_every_token_once(tmp_path, reference):
    out = tmp_path / "store"
    r = torchrun(JOB, [out], nproc=2, port_base=29500)
    assert r.returncode == 0, r.stderr[-2000:]
    st = actstore.open(out)
    assert [s.name for s in st.segments] == ["rank00000", "rank00001"]
    assert all(s.rows > 0 for s in st.segments)
    got = st.tokens()
    # Every (doc, pos) of the single-process run exactly once; same activations per token.
    key = lambda t: t["doc"].long() * 100000 + t["pos"].long()  # noqa: E731
    order_got, order_ref = torch.argsort(key(got)), torch.argsort(key(reference))
    assert torch.equal(key(got)[order_got], key(reference)[order_ref])
    assert len(torch.unique(key(got))) == got["doc"].numel()
    for h in ("layers.0", "layers.2"):
        a = st.read(h, dtype=torch.bfloat16).view(torch.int16)[order_got]
        assert torch.equal(a, reference[h][order_ref])


@pytest.mark.slow
def test_failing_write_stops_with_one_line_and_keeps_commits(tmp_path, reference):
    out = tmp_path / "store"
    # 64-chunk shards committed after every batch: the partial shard rewritten at each
    # commit grows past 20 kB after a few batches, and that write fails.
    layout = ("--chunks-per-shard", 64, "--commit-every", 0)
    r = _run(out, "--fsize", 20000, *layout)
    assert r.returncode == 1
    err = r.stderr.strip()
    assert err.count("\n") == 0, err
    assert "store write failed" in err and "File too large" in err and "re-run the same command to resume" in err
    snap = _snapshot(out)
    n = snap["token"].numel()
    assert n > 0
    for k in ("token", "layers.0", "layers.2"):
        assert torch.equal(snap[k], reference[k][:n])
    r = _run(out, *layout)  # the limit lifted: the same command completes the store
    assert r.returncode == 0, r.stderr
    _assert_same(_snapshot(out), reference)


@pytest.mark.slow
def test_full_disk_stops_with_one_line_and_keeps_commits(tmp_path, reference):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or zygote.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root); the EFBIG test covers failing writes")
    try:
        r = _run(mnt / "store")
        assert r.returncode == 1
        err = r.stderr.strip()
        assert err.count("\n") == 0 and "No space left on device" in err, err
        snap = _snapshot(mnt / "store")
        n = snap["token"].numel()
        assert n > 0
        for k in ("token", "layers.0", "layers.2"):
            assert torch.equal(snap[k], reference[k][:n])
        shutil.copytree(mnt / "store", tmp_path / "moved")
    finally:
        zygote.run(["umount", str(mnt)], capture_output=True)
    r = _run(tmp_path / "moved")  # on a disk with room, the same run completes
    assert r.returncode == 0, r.stderr
    _assert_same(_snapshot(tmp_path / "moved"), reference)
