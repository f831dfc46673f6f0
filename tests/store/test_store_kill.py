"""SIGKILL a real writer subprocess in the middle of its writes; committed rows must survive intact.

Kill points are chosen by write number, never wall time: the child (helpers/kill_writer.py)
stops inside its W-th object write (temporary written, rename not done), says so, and
waits; the parent then SIGKILLs it. So every kill lands mid-protocol, at a seeded point,
however fast or busy the machine is.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import actstore
from helpers import zygote
from helpers.kill_writer import HOOKS, rows
from helpers.paths import HELPERS

HELPER = HELPERS / "kill_writer.py"

TRIALS = int(os.environ.get("ACTSTORE_KILL_TRIALS", "20"))
# After the child stops inside its write, the kill waits this long: the writer's other
# threads run on meanwhile (the pool's other puts, a commit that does not wait for them),
# as they would before a real crash. Killed at once, a commit published before its shard
# writes finished went unseen (no thread had time to publish it).
GRACE = float(os.environ.get("ACTSTORE_KILL_GRACE", "0.3"))
# A shard of this store is 13 writes (6 shards, 6 shapes, 1 commit record) plus the seeded
# commits between shards; 300 writes reach ~20 shards in.
MAX_WRITE = 300


def _spawn(*args):
    # forked from the test zygote (helpers/zygote.py): a real process, without a torch import each
    return zygote.Popen(
        [sys.executable, str(HELPER), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _check_prefix(store, total=None):
    """Every visible row equals the deterministic row with the same token id, in order."""
    n = store.rows
    if total is not None:
        assert n == total
    toks = store.tokens()["token"].long()
    assert torch.equal(toks, torch.arange(n)), "a gap or duplicate in the committed rows"
    want = rows(0, n)
    for h in HOOKS:
        got = store.read(h, dtype=torch.bfloat16)
        assert torch.equal(got.view(torch.int16), want[h].to(torch.bfloat16).view(torch.int16))
    return n


def _kill_at_write(path, seg, seed, write) -> tuple[int | None, int | None]:
    """Run the writer until it stops inside write number ``write``, SIGKILL it; returns the
    committed rows it reported at start (None if it stopped while opening) and at the stop."""
    p = _spawn(path, seg, seed, "--stop-at-write", write)
    ready = None
    while True:
        line = p.stdout.readline()
        assert line, f"the writer ended before write {write}: {p.stderr.read()}"
        if line.startswith("ready"):
            ready = int(line.split()[1])
        elif line.startswith("stopped"):
            break
    time.sleep(GRACE)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    word = line.split()[1]
    return ready, None if word == "none" else int(word)


@pytest.mark.slow
def test_sigkill_mid_write_then_resume(tmp_path):
    rng = random.Random(1234)
    killed_with_rows = []
    for trial in range(TRIALS):
        path = tmp_path / f"s{trial}"
        seg = "rank0"
        committed = 0
        # One to three kills per trial, each inside a seeded write.
        for kill in range(rng.randint(1, 3)):
            ready, stopped = _kill_at_write(path, seg, trial * 10 + kill, rng.randint(1, MAX_WRITE))
            s = actstore.open(path)
            now = _check_prefix(s)
            assert now >= committed and (ready is None or ready == committed)  # commits never go backwards
            if stopped is not None:
                assert now == stopped  # exactly what the writer had committed; the half-done write is not visible
            committed = now
            killed_with_rows.append(committed)
        # Resume and finish: no gap, no duplicate, bytes identical to an uninterrupted run.
        total = committed + rng.randint(1, 3000)
        p = _spawn(path, seg, 999, "--total", total)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.splitlines()[0] == f"ready {committed}"
        assert out.splitlines()[-1] == f"done {total}"
        s = actstore.open(path)
        _check_prefix(s, total)
        assert not list((Path(path) / "segments" / seg).rglob(".tmp-*")), "a resumed writer leaves no temporaries"
        st = s.stats("g")
        ref = rows(0, total)["g"].double()
        assert st["count"] == total
        torch.testing.assert_close(st["mean"], ref.mean(0), rtol=0, atol=1e-9)
    # the kills landed at varied points, some after several commits
    assert len(set(killed_with_rows)) > TRIALS // 2
    assert max(killed_with_rows) > 0
