"""Capture resume under power loss: crash at every durable step of a capture
(tests/helpers/power_loss.py), rebuild the disk as only-synced and as metadata-ordered,
check the store, rerun the same capture, and get the store of a run that never crashed.

After each crash the store opens (or, before its first commit, is absent), its rows are
an exact prefix of the uncrashed run's (nothing uncommitted, no row twice), and the rerun
resumes from the committed rows to exactly the uncrashed store: rows, token columns and
statistics.
"""

from __future__ import annotations

import pytest
import torch

import actstore
from actstore.capture import CaptureConfig
from actstore.capture.runner import _run_capture
from actstore.errors import CaptureError
from helpers.capture_models import TinyLM, token_docs
from helpers.power_loss import count_steps, crash_each_step, sample_size, verdict

HOOKS = "layers.0,layers.2"
# Commit after every batch: each commit is a crash point of its own.
OPTIONS = dict(context=16, batch_size=4, chunk_bytes=1024, chunks_per_shard=2, progress=False, commit_every=0.0)
DEFAULT_SAMPLE = 40  # of ~280 points; ACTSTORE_POWER_LOSS_SAMPLE=all runs every one


def capture(path) -> None:
    _run_capture(TinyLM(), HOOKS, token_docs(6, seed=11), str(path), CaptureConfig(**OPTIONS))


def snapshot(path) -> dict:
    st = actstore.open(path)
    out = {h: st.read(h, dtype=torch.bfloat16).view(torch.int16) for h in st.hooks}
    out.update({f"tokens/{k}": v for k, v in st.tokens().items()})
    for h in st.hooks:
        out[f"count/{h}"] = torch.tensor(st.stats(h)["count"])
        out[f"mean/{h}"] = torch.as_tensor(st.stats(h)["mean"])
    return out


def prefix_of(got: dict, want: dict, where: str) -> None:
    n = got["tokens/token"].shape[0]
    for k, v in got.items():
        if k.startswith(("count/", "mean/")):
            continue
        assert torch.equal(v, want[k][:n]), f"{where}: {k} is not a prefix of the uncrashed capture's"


def same(got: dict, want: dict, where: str) -> None:
    assert got.keys() == want.keys(), where
    for k in want:
        if k.startswith("mean/"):  # merged over other commits: equal to float64 rounding
            assert torch.allclose(got[k], want[k], rtol=1e-9, atol=1e-12), f"{where}: {k}"
        else:
            assert torch.equal(got[k], want[k]), f"{where}: {k} differs from the uncrashed capture"


@pytest.mark.slow
def test_capture_resumes_to_the_same_store_after_power_loss_at_every_step(tmp_path):
    torch.set_num_threads(1)

    def flow(base, ctx):
        capture(base / "store")

    total = count_steps(tmp_path / "count", flow)
    assert total > 100, f"only {total} steps recorded"
    want = snapshot(tmp_path / "count" / "store")

    def verify(base, where, ctx):
        if (base / "store" / "zarr.json").exists():
            prefix_of(snapshot(base / "store"), want, where)
        capture(base / "store")
        same(snapshot(base / "store"), want, where + ", rerun")

    # the capture's writer thread reports the power loss as a store error (CaptureError)
    bad, missed = crash_each_step(
        tmp_path, flow, verify, total=total, sample=sample_size(DEFAULT_SAMPLE), tolerate=(CaptureError,)
    )
    assert not missed, f"crash points {missed} were never reached: the runs differ in length"
    assert not bad, verdict(bad)
