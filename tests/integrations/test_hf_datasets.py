"""to_hf_dataset: a store as a real datasets.IterableDataset (rows, features, shards, shuffle)."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import actstore
from helpers.integration_store import HOOKS, rows_store
from helpers.peers import need

datasets = need("datasets")
from actstore.integrations.hf_datasets import to_hf_dataset  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "s"
    return path, rows_store(path)


def test_rows_in_store_order_with_features(store):
    path, ref = store
    ds = to_hf_dataset(path, ["h.a", "h.b"], rows_per_shard=256)
    assert isinstance(ds, datasets.IterableDataset)
    assert ds.n_shards == -(-ref["h.a"].shape[0] // 256)
    assert ds.features["h.b"].length == HOOKS["h.b"]
    rows = list(ds.with_format("torch"))
    assert len(rows) == ref["h.a"].shape[0]
    assert torch.equal(torch.stack([r["h.a"] for r in rows]), ref["h.a"])
    assert torch.equal(torch.stack([r["h.b"] for r in rows]), ref["h.b"])
    assert [int(r["token"]) for r in rows] == ref["token"].tolist()
    assert [int(r["pos"]) for r in rows[:60]] == [i % 50 for i in range(60)]


def test_shuffle_and_workers_cover_every_row_once(store):
    path, ref = store
    ds = to_hf_dataset(path, "h.a", drop_flags="bos", rows_per_shard=128).shuffle(seed=3, buffer_size=64)
    keep = np.flatnonzero((ref["flags"].numpy() & actstore.FLAG_BOS) == 0)
    got = torch.cat([b["h.a"] for b in DataLoader(ds.with_format("torch"), batch_size=100, num_workers=2)])
    assert got.shape[0] == keep.size
    assert not torch.equal(got, ref["h.a"][keep])  # shuffled
    order = torch.argsort(got[:, 0])
    want = ref["h.a"][keep]
    assert torch.equal(got[order], want[torch.argsort(want[:, 0])])


def test_fp16_and_bad_dtype(store):
    path, ref = store
    ds = to_hf_dataset(path, "h.a", dtype="float16", tokens=False)
    assert ds.features["h.a"].feature.dtype == "float16"
    # the Arrow column holds float16; the numpy format widens floats to float32, as datasets
    # does for any Arrow-backed dataset (the values stay the float16 ones)
    table = next(iter(ds.with_format("arrow")))
    assert table.column_names == ["h.a"] and table.schema.field("h.a").type.value_type == "halffloat"
    row = next(iter(ds.with_format("numpy")))
    assert set(row) == {"h.a"} and row["h.a"].dtype == np.float32
    assert np.array_equal(row["h.a"], ref["h.a"][0].half().float().numpy())
    with pytest.raises(actstore.LoaderError, match="float32 or float16"):
        to_hf_dataset(path, "h.a", dtype="bfloat16")


def test_split_by_node_gives_each_rank_whole_shards(store):
    from datasets.distributed import split_dataset_by_node

    path, ref = store
    ds = to_hf_dataset(path, "h.a", tokens=False, rows_per_shard=256)
    parts = [list(split_dataset_by_node(ds, rank=r, world_size=2).with_format("torch")) for r in range(2)]
    assert all(parts)
    got = torch.stack([row["h.a"] for p in parts for row in p])
    assert got.shape[0] == ref["h.a"].shape[0]
    assert torch.equal(got[torch.argsort(got[:, 0])], ref["h.a"][torch.argsort(ref["h.a"][:, 0])])


def test_torch_format_gives_each_row_as_one_float_tensor_of_width_d(store, monkeypatch):
    # Each hook's row arrives as one [d] float32 tensor equal to the store's row, made by one
    # tensor conversion (not d one-element tensors stacked: what made the format ~100x slower).
    from datasets.formatting.torch_formatter import TorchFormatter

    path, ref = store
    calls = []
    real = TorchFormatter._tensorize
    monkeypatch.setattr(TorchFormatter, "_tensorize", lambda self, v: calls.append(1) or real(self, v))
    ds = to_hf_dataset(path, ["h.a", "h.b"], rows_per_shard=256).with_format("torch")
    rows = list(ds)
    n = ref["h.a"].shape[0]
    assert len(rows) == n
    for h, d in HOOKS.items():
        assert all(r[h].shape == (d,) and r[h].dtype == torch.float32 for r in rows)
        assert torch.equal(torch.stack([r[h] for r in rows]), ref[h])
    assert len(calls) <= n * 5  # at most one per column and row (2 hooks + token, doc, pos)
    batch = next(iter(DataLoader(ds, batch_size=64)))
    assert batch["h.b"].shape == (64, HOOKS["h.b"]) and torch.equal(batch["h.b"], ref["h.b"][:64])
