"""RowDataset: a store as a map-style torch Dataset over its rows, against the rows written."""

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import actstore
from actstore.integrations import RowDataset
from helpers.integration_store import HOOKS, rows_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("rows") / "s"
    return path, rows_store(path)


def test_rows_match_what_was_written(store):
    path, ref = store
    ds = RowDataset(path, "h.a")
    assert len(ds) == ref["h.a"].shape[0]
    for i in (0, 1, 699, 700, len(ds) - 1, -1):  # both segments, and a negative index
        assert torch.equal(ds[i], ref["h.a"][i])
    with pytest.raises(IndexError, match="out of range"):
        ds[len(ds)]


def test_dataloader_batches_are_one_read_and_cover_every_row_once(store, monkeypatch):
    path, ref = store
    ds = RowDataset(path, ["h.a", "h.b"], tokens=True)
    reads = []
    real = actstore.Store.read
    monkeypatch.setattr(actstore.Store, "read", lambda self, *a, **k: reads.append(a[0]) or real(self, *a, **k))
    g = torch.Generator().manual_seed(0)
    seen = []
    for b in DataLoader(ds, batch_size=128, shuffle=True, generator=g):
        assert b["h.a"].shape[1:] == (HOOKS["h.a"],) and b["h.b"].shape[1:] == (HOOKS["h.b"],)
        rows = b["token"].numpy()  # not unique: check the values row by row through the activations
        assert torch.equal(b["h.b"], ref["h.b"][_find(ref["h.a"], b["h.a"])])
        assert np.array_equal(rows, ref["token"][_find(ref["h.a"], b["h.a"])].numpy())
        seen.append(_find(ref["h.a"], b["h.a"]))
    assert len(reads) == 2 * len(seen)  # one Store.read per hook per batch, not one per row
    assert sorted(np.concatenate(seen).tolist()) == list(range(ref["h.a"].shape[0]))


def _find(table, rows):
    # the activations are random floats: each row is unique, so an exact match names its index
    eq = (rows[:, None, :] == table[None, :, :]).all(-1)
    assert bool((eq.sum(1) == 1).all())
    return eq.int().argmax(1).numpy()


def test_drop_flags_and_normalize(store):
    path, ref = store
    ds = RowDataset(path, "h.a", drop_flags="bos", normalize="mean_norm")
    keep = np.flatnonzero((ref["flags"].numpy() & actstore.FLAG_BOS) == 0)
    assert len(ds) == keep.size
    mean_norm = actstore.open(path).stats("h.a")["mean_norm"]
    want = ref["h.a"][keep[5]] * (HOOKS["h.a"] ** 0.5 / mean_norm)
    torch.testing.assert_close(ds[5], want, rtol=1e-6, atol=1e-6)
    std = RowDataset(path, "h.b", normalize="standardize")
    x = torch.stack(std.__getitems__(range(len(std))))
    torch.testing.assert_close(x.mean(0), torch.zeros(HOOKS["h.b"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(HOOKS["h.b"]), atol=1e-4, rtol=0)


def test_workers_open_their_own_store(store):
    path, ref = store
    ds = RowDataset(path, "h.b")
    clone = pickle.loads(pickle.dumps(ds))  # what spawn does
    assert torch.equal(clone[3], ref["h.b"][3])
    got = torch.cat(list(DataLoader(ds, batch_size=200, num_workers=2)))
    assert torch.equal(got, ref["h.b"])


def test_unknown_hook_is_one_line(store):
    path, _ = store
    with pytest.raises(actstore.UnknownHookError) as e:
        RowDataset(path, "h.zzz")
    assert "\n" not in str(e.value) and "h.a" in str(e.value)


def test_tokens_carry_the_global_store_row(store):
    # (doc, pos) repeats and token ids wrap in this store; "row" names the store row itself,
    # also when drop_flags makes dataset indices differ from store rows.
    path, ref = store
    ds = RowDataset(path, "h.a", tokens=True, drop_flags="bos")
    keep = np.flatnonzero((ref["flags"].numpy() & actstore.FLAG_BOS) == 0)
    item = ds[20]
    assert item["row"].dtype == torch.int64 and int(item["row"]) == keep[20]
    g = torch.Generator().manual_seed(1)
    seen = []
    for b in DataLoader(ds, batch_size=100, shuffle=True, generator=g):
        assert b["row"].dtype == torch.int64
        assert torch.equal(b["h.a"], ref["h.a"][b["row"]]) and torch.equal(b["token"], ref["token"][b["row"]].int())
        seen.append(b["row"].numpy())
    assert np.array_equal(np.sort(np.concatenate(seen)), keep)
