"""Several nodes on one bucket, shown with torchrun + gloo on this machine against the local
S3 server (moto): each rank writes its own segment, rank 0 pins the snapshot of committed
rows and broadcasts it, and the loader's rank split reads every row exactly once."""

from __future__ import annotations

import numpy as np
import pytest

import actstore
from helpers.paths import HELPERS
from helpers.procs import torchrun


@pytest.mark.slow
def test_ranks_write_their_segments_and_read_rank0s_snapshot_from_s3(s3_url, tmp_path):
    r = torchrun(HELPERS / "s3_rank.py", [s3_url, tmp_path], nproc=2, port_base=29850)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.concatenate([np.load(tmp_path / f"rank{i}.npy") for i in range(2)])
    # rank 0's snapshot: its 400 rows (the 100 appended after the others opened) and rank 1's 300
    want = np.concatenate([np.arange(400), 10000 + np.arange(300)])
    assert np.array_equal(np.sort(got), np.sort(want))  # every row once, none from an older snapshot
    s = actstore.open(s3_url)
    assert [(seg.name, seg.rows) for seg in s.segments] == [("rank0", 400), ("rank1", 300)]
