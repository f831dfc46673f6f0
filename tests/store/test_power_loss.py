"""Crash at every durable step of the writer and the lease, lose what was not synced, check.

The power-loss recorders (tests/helpers/power_loss.py) run the real writer over a recorded
disk or object store: once to count its steps, then once per crash point, with the power
cut after that step. What survives is rebuilt two ways on local disk (only what was
fsynced; every metadata change in order but file bytes only as synced) and one way on
object storage (acknowledged puts). After each crash:

- every committed row is readable and exact: the store opens, its rows are the exact
  prefix of the deterministic rows, and no commit the writer had returned is lost;
- nothing uncommitted is visible: no more rows than had been appended, no row out of place;
- a rerun resumes and finishes bit-identically: the same rows, tokens and statistics as a
  run that never crashed.

A planted writer that publishes its commit record without waiting for its shard writes
must fail this (``test_planted_commit_before_shards_is_caught``).
"""

from __future__ import annotations

import datetime as _dt

import numpy as np
import pytest
import torch

import actstore
from actstore.store import lease as lease_mod
from actstore.store import writer as writer_mod
from helpers import power_loss
from helpers.kill_writer import HOOKS, rows
from helpers.power_loss import (
    LocalDisk,
    ObjectCloud,
    PowerLoss,
    count_steps,
    crash_each_step,
    crash_points,
    mount,
    sample_size,
    seed_of_run,
    verdict,
)

TOTAL = 260
SEED = 3
# Crash points per run: a seeded sample on local disk (of ~570; the seed changes with the
# commit), every one on object storage (~180); ACTSTORE_POWER_LOSS_SAMPLE=all: every one.
LOCAL_SAMPLE = sample_size(60)
OBJECT_SAMPLE = sample_size(200)


class Progress:
    """What the writing process knew before the crash: rows appended, rows acknowledged."""

    def __init__(self):
        self.appended = 0
        self.acked = 0


def write(path, prog: Progress | None = None, total: int = TOTAL) -> None:
    """Append the deterministic rows up to ``total`` (resuming from the committed rows), with
    seeded commits between appends, then close."""
    prog = prog or Progress()
    w = actstore.create(path, HOOKS, segment="s", chunk_bytes=1024, chunks_per_shard=2)
    try:
        r = prog.acked = w.committed_rows
        prog.appended = r
        rng = np.random.default_rng(SEED + r)
        while r < total:
            n = min(int(rng.integers(1, 90)), total - r)
            idx = torch.arange(r, r + n)
            prog.appended = r + n  # before the append: its rows may be committed inside it
            w.append(rows(r, r + n), tokens=idx, doc=idx // 50, pos=idx % 50)
            r += n
            prog.acked = w.committed_rows  # shard-boundary commits inside the append
            if rng.random() < 0.3:
                prog.acked = w.commit()
        w.close()
    except BaseException:
        w.abort()  # the process is gone: its pool threads stop too (they meet the power loss)
        raise
    prog.acked = w.committed_rows


def contents(path) -> dict:
    store = actstore.open(path)
    out = {"rows": store.rows, "tokens": store.tokens()["token"].clone()}
    for h in HOOKS:
        out[h] = store.read(h, dtype=torch.bfloat16).view(torch.int16).clone()
        out[f"stats/{h}"] = {k: np.asarray(v) for k, v in store.stats(h).items()}
    return out


def check_after_crash(path, prog: Progress, where: str) -> int:
    """The invariants on a reopened store; returns its visible rows."""
    try:
        store = actstore.open(path)
    except actstore.StoreError as e:
        if "no store" in str(e) or "not an actstore" in str(e) or "does not exist" in str(e):
            assert prog.acked == 0, f"{where}: {prog.acked} acknowledged rows lost, the store is gone ({e})"
            return 0
        raise AssertionError(f"{where}: the store does not open after the crash: {e}") from None
    n = store.rows
    assert n >= prog.acked, f"{where}: {prog.acked} rows were acknowledged, {n} survived"
    assert n <= prog.appended, f"{where}: {n} rows visible, only {prog.appended} were ever appended"
    toks = store.tokens()["token"].long()
    assert torch.equal(toks, torch.arange(n)), f"{where}: a gap or duplicate in the visible rows"
    want = rows(0, n)
    for h in HOOKS:
        try:
            got = store.read(h, dtype=torch.bfloat16)
        except actstore.StoreError as e:
            raise AssertionError(f"{where}: committed rows of {h!r} unreadable: {e}") from None
        assert torch.equal(got.view(torch.int16), want[h].to(torch.bfloat16).view(torch.int16)), where
    return n


def same(a: dict, b: dict, where: str) -> None:
    assert a["rows"] == b["rows"], where
    assert torch.equal(a["tokens"], b["tokens"]), where
    for h in HOOKS:
        assert torch.equal(a[h], b[h]), f"{where}: rows of {h!r} differ from the uncrashed run"
        for k, v in a[f"stats/{h}"].items():
            np.testing.assert_allclose(b[f"stats/{h}"][k], v, rtol=1e-9, atol=1e-12, err_msg=f"{where}: stats {k}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("ref") / "store"
    write(path)
    return contents(path)


def _local_flow(base, ctx) -> None:
    ctx["prog"] = Progress()
    write(base / "store", ctx["prog"])


def local_violations(tmp_path, reference, *, sample=LOCAL_SAMPLE, first=False) -> list[str]:
    """Run the crash points on local disk; the invariant failures, one line each."""
    total = count_steps(tmp_path / "count", _local_flow)
    assert total > 100, f"only {total} steps recorded: is the recorder below LocalStorage?"

    def verify(base, where, ctx):
        check_after_crash(base / "store", ctx["prog"], where)
        write(base / "store")
        same(reference, contents(base / "store"), where + ", rerun")

    bad, missed = crash_each_step(tmp_path, _local_flow, verify, total=total, sample=sample, first=first)
    # a run of another length: only a planted bug's racing threads
    assert len(missed) <= len(bad), f"crash points {missed} were never reached: the runs differ in length"
    return bad


@pytest.mark.slow
def test_writer_survives_power_loss_at_every_step_local(tmp_path, reference):
    bad = local_violations(tmp_path, reference)
    assert not bad, verdict(bad)


# -- object storage: acknowledged puts survive, the lease is taken over after the crash --------


def _after_reboot(monkeypatch) -> None:
    """The machine came back later than the lease lasts: the dead writer's lease has expired.
    (The clock is the one thing mocked: a reboot cannot be produced in a test.)"""
    later = _dt.timedelta(seconds=lease_mod.lease_seconds() + 1)
    real = lease_mod._now
    monkeypatch.setattr(lease_mod, "_now", lambda: real() + later)


def _cloud_run(name, objects=None, crash_after=None) -> tuple[ObjectCloud, Progress]:
    prog = Progress()
    cloud = ObjectCloud(name, objects=objects, crash_after=crash_after)
    with mount(cloud):
        try:
            write(f"memory://{name}", prog)
        except PowerLoss:
            pass
    return cloud, prog


def _reopen_and_finish(name, objects, prog: Progress, reference, where: str) -> list[str]:
    """After the reboot: the surviving objects reopened by a new writer process, checked, the
    segment finished and compared with the uncrashed run; the broken invariants, one line each."""
    reopened = ObjectCloud(name, objects=objects, hold=None)
    with mount(reopened):
        url = f"memory://{name}"
        try:
            check_after_crash(url, prog, where)
            write(url)
            same(reference, contents(url), where + ", rerun")
        except AssertionError as e:
            return [str(e).splitlines()[0]]
        except actstore.StoreError as e:
            return [f"{where}: {str(e).splitlines()[0]}"]
    return []


def object_violations(reference, monkeypatch, *, sample=OBJECT_SAMPLE, first=False) -> list[str]:
    cloud, _ = _cloud_run("pl-count")
    total = cloud.steps
    assert total > 40, f"only {total} puts recorded"
    bad, missed = [], []
    for n in crash_points(total, sample, seed=seed_of_run()):
        if first and bad:
            break
        cloud, prog = _cloud_run(f"pl-{n}", crash_after=n)
        if cloud.after is None:
            missed.append(n)
            continue
        where = f"power lost after put {n} ({cloud.trace[n - 1]})"
        with monkeypatch.context() as m:
            _after_reboot(m)
            bad += _reopen_and_finish(f"pl-{n}-after", cloud.after, prog, reference, where)
    assert len(missed) <= len(bad), f"crash points {missed} were never reached: the runs differ in length"
    return bad


@pytest.mark.slow
def test_writer_and_lease_survive_power_loss_at_every_put_object(reference, monkeypatch):
    bad = object_violations(reference, monkeypatch)
    assert not bad, verdict(bad)


@pytest.mark.slow
def test_lease_takeover_survives_power_loss_at_every_put(reference, monkeypatch):
    """A writer cut mid-way; after the reboot a second writer takes the expired lease over,
    fences the first with a commit of its own and goes on, and is itself cut at every put
    (the takeover, the fencing commit, the renewals); after a second reboot a third writer
    finishes the segment exactly."""
    first, before = _cloud_run("tk-first", crash_after=60)
    assert first.after is not None and before.acked > 0
    with monkeypatch.context() as m:
        _after_reboot(m)
        second, _ = _cloud_run("tk-count", objects=first.after)
    total = second.steps
    assert any("lease" in t for t in second.trace[:3]), second.trace[:3]  # the takeover comes first
    bad = []
    for n in crash_points(total, OBJECT_SAMPLE, seed=seed_of_run()):
        with monkeypatch.context() as m:
            _after_reboot(m)
            cut, prog = _cloud_run(f"tk-{n}", objects=first.after, crash_after=n)
            if cut.after is None:
                bad.append(f"takeover run cut at put {n}: it made only {cut.steps}")
                continue
            where = f"takeover cut after put {n} ({cut.trace[n - 1]})"
            # what both processes knew: the first writer's commits stand, its appended rows bound
            prog.acked, prog.appended = max(prog.acked, before.acked), max(prog.appended, before.appended)
            _after_reboot(m)
            bad += _reopen_and_finish(f"tk-{n}-after", cut.after, prog, reference, where)
    assert not bad, verdict(bad)


# -- the planted bug: the commit record published before the shard writes finish ------------------


def _put_shard_without_waiting(self, shard, encoded, shapes=None):
    """store/writer.py's _put_shard without waiting for its puts (the planted bug): every
    shard, full or partial, and the shapes written with it, are handed to the put pool and
    the commit goes on."""
    writes = [
        (writer_mod.shard_key(self.segment, a, shard), writer_mod.build_shard(encoded[a.path])) for a in self._arrays
    ]
    for key, data in writes + (self._shape_docs(shapes) if shapes is not None else []):
        self._puts.submit(self._put, key, data)


@pytest.mark.slow
def test_planted_commit_before_shards_is_caught(tmp_path, reference, monkeypatch):
    monkeypatch.setattr(writer_mod.SegmentWriter, "_put_shard", _put_shard_without_waiting)
    # Nothing waits on the planted writer's puts, so each is held for the whole valve.
    monkeypatch.setattr(power_loss, "HOLD_SECONDS", 0.2)
    bad = local_violations(tmp_path, reference, sample=40, first=True)
    assert bad, "a writer that commits before its shards are written passed every local crash point"
    bad = object_violations(reference, monkeypatch, sample=40, first=True)
    assert bad, "a writer that commits before its shards are written passed every object-store crash point"


def test_recorder_counts_the_steps_of_one_put(tmp_path):
    """The recorder sees LocalStorage's protocol: temporary fsynced, renamed, folder fsynced;
    a new folder's entry is only durable once its parent folder is fsynced."""
    from actstore.store.storage import LocalStorage

    with LocalDisk(tmp_path) as disk:
        LocalStorage(tmp_path / "s").write_atomic("a/b/key", b"bytes")
    ops = [t.split()[0] for t in disk.trace]
    assert ops.count("fsync") >= 2 and "replace" in ops and "mkdir" in ops, disk.trace
    # cut after the data fsync, before the rename: the key is absent on both disks
    with LocalDisk(tmp_path / "c", crash_after=ops.index("replace")) as disk:
        with pytest.raises(PowerLoss):
            LocalStorage(tmp_path / "c" / "s").write_atomic("a/b/key", b"bytes")
    assert all("s/a/b/key" not in disk.after[m] for m in ("synced", "ordered"))
