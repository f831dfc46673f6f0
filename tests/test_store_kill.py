"""SIGKILL a real writer subprocess at random moments; committed rows must survive intact."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import actstore

HELPER = Path(__file__).parent / "helpers" / "kill_writer.py"
sys.path.insert(0, str(HELPER.parent))
from kill_writer import HOOKS, rows  # noqa: E402

TRIALS = int(os.environ.get("ACTSTORE_KILL_TRIALS", "20"))


def _spawn(*args):
    return subprocess.Popen([sys.executable, str(HELPER), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


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


def test_sigkill_at_random_moments_then_resume(tmp_path):
    rng = random.Random(1234)
    killed_with_rows = []
    for trial in range(TRIALS):
        path = tmp_path / f"s{trial}"
        seg = "rank0"
        # One to three kills per trial, each mid-append, at a random moment.
        for kill in range(rng.randint(1, 3)):
            p = _spawn(path, seg, trial * 10 + kill)
            line = p.stdout.readline()
            assert line.startswith("ready"), p.stderr.read()
            time.sleep(rng.uniform(0.0, 0.6))
            p.send_signal(signal.SIGKILL)
            p.wait()
            assert p.returncode == -signal.SIGKILL
            s = actstore.open(path)
            committed = _check_prefix(s)
            assert int(line.split()[1]) <= committed  # commits never go backwards
            killed_with_rows.append(committed)
        # Resume and finish: no gap, no duplicate, bytes identical to an uninterrupted run.
        total = committed + rng.randint(1, 3000)
        p = _spawn(path, seg, 999, total)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.splitlines()[0] == f"ready {committed}"
        s = actstore.open(path)
        _check_prefix(s, total)
        st = s.stats("g")
        ref = rows(0, total)["g"].double()
        assert st["count"] == total
        torch.testing.assert_close(st["mean"], ref.mean(0), rtol=0, atol=1e-9)
    # the kills landed at varied points, some after several commits
    assert len(set(killed_with_rows)) > TRIALS // 2
    assert max(killed_with_rows) > 0
