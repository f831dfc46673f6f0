"""The loader across real processes: torchrun ranks (gloo) and DataLoader workers
started by fork and by spawn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import actstore
from helpers.loader_store import TOTAL, build
from helpers.paths import HELPERS
from helpers.procs import torchrun


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build(tmp_path_factory.mktemp("dist") / "acts")


@pytest.mark.slow
def test_three_ranks_under_torchrun_read_every_row_once_per_epoch(store, tmp_path):
    r = torchrun(HELPERS / "loader_rank.py", [store.path, tmp_path], nproc=3, port_base=29700)
    assert r.returncode == 0, r.stderr[-3000:]
    per_rank = [np.load(tmp_path / f"rank{k}.npy") for k in range(3)]
    # Two epochs: each rank's first half (its epoch-0 share) and second half together
    # cover every row once per epoch.
    ep0 = np.concatenate([p[: p.size // 2] for p in per_rank])
    ep1 = np.concatenate([p[p.size // 2 :] for p in per_rank])
    for ep in (ep0, ep1):
        assert np.array_equal(np.sort(ep), np.arange(TOTAL))
    # The same batches as in-process loaders told their rank explicitly.
    for k in range(3):
        ld = actstore.ActivationLoader(
            store, "wide", 64, tokens=True, seed=7, epochs=2, buffer_rows=256, rank=k, world_size=3
        )
        assert np.array_equal(np.concatenate([b["token"].numpy() for b in ld]), per_rank[k])


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])  # spawn: ~9 s
def test_dataloader_workers_read_every_row_once_deterministically(store, context):
    ds = actstore.ActivationDataset(store.path, ["wide", "narrow"], 50, tokens=True, seed=3, buffer_rows=256)

    def run(epoch):
        ds.set_epoch(epoch)
        dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context)
        out = []
        for b in dl:
            assert torch.equal(b["wide"], store.read("wide", b["token"].long()))
            out.append(b["token"].numpy().copy())
        return np.concatenate(out)

    first, again, other = run(0), run(0), run(1)
    assert np.array_equal(np.sort(first), np.arange(TOTAL))
    assert np.array_equal(first, again)  # deterministic
    assert np.array_equal(np.sort(other), np.arange(TOTAL)) and not np.array_equal(first, other)


def test_dataset_refuses_a_device_and_checks_options_up_front(store):
    with pytest.raises(actstore.LoaderError, match="does not take device="):
        actstore.ActivationDataset(store.path, "wide", 8, device="cuda")
    with pytest.raises(actstore.UnknownHookError):
        actstore.ActivationDataset(store.path, "nope", 8)
