"""ActivationLoader on real stores: exactly once per epoch across ranks, determinism,
resume, multi-hook alignment, flag filtering, dequantization, normalization, errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import actstore
from actstore import ActivationLoader, CorruptDataError, LoaderError, UnknownHookError
from actstore.loader import EpochPlan
from helpers.loader_store import NARROW, TOTAL, WIDE, acts, build


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build(tmp_path_factory.mktemp("loader") / "acts")


def _tokens(loader) -> list[np.ndarray]:
    return [b["token"].numpy().copy() for b in loader]


def test_layout_of_the_fixture(store):
    # The test store must exercise: several blocks per segment, unequal chunk rows.
    assert store.rows == TOTAL and len(store.segments) == 2
    assert store.schema.hooks["narrow"].chunk_rows == 2 * store.schema.hooks["wide"].chunk_rows
    ld = ActivationLoader(store, ["wide", "narrow"], 64, tokens=True, buffer_rows=200)
    assert ld.block_rows == max(h.chunk_rows for h in store.schema.hooks.values())
    assert len(ld.blocks) > 10 and ld.window_blocks > 1


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_row_exactly_once_per_epoch_across_ranks(store, world):
    per_rank = []
    for r in range(world):
        ld = ActivationLoader(store, "wide", 97, tokens=True, seed=3, rank=r, world_size=world, buffer_rows=300)
        toks = _tokens(ld)
        assert len(toks) == len(ld)
        assert all(t.size == 97 for t in toks[:-1]) and 0 < toks[-1].size <= 97
        per_rank.append(np.concatenate(toks))
    got = np.concatenate(per_rank)
    assert got.size == TOTAL and np.array_equal(np.sort(got), np.arange(TOTAL))
    sizes = [p.size for p in per_rank]
    assert max(sizes) - min(sizes) <= 1  # balanced to one row
    if world == 1:
        assert not np.array_equal(got, np.arange(TOTAL))  # actually shuffled


def test_batches_hold_the_stored_rows_of_every_hook(store):
    ld = ActivationLoader(store, ["wide", "narrow"], 128, tokens=True, seed=5, buffer_rows=256)
    n = 0
    for b in ld:
        t = b["token"].numpy()
        assert torch.equal(b["wide"], acts(t, WIDE, 1.0))  # fp32 storage: exact
        assert torch.equal(b["narrow"], acts(t, NARROW, 2.0))
        assert torch.equal(b["doc"], torch.from_numpy(t // 50)) and torch.equal(
            b["pos"], torch.from_numpy(t % 50).int()
        )
        assert b["wide"].dtype == torch.float32 and b["token"].dtype == torch.int32
        n += t.size
    assert n == TOTAL


def test_same_seed_same_batches_other_seed_or_epoch_other_order(store):
    a = _tokens(ActivationLoader(store, "wide", 100, tokens=True, seed=11, epochs=2, buffer_rows=300))
    b = _tokens(
        ActivationLoader(store, "wide", 100, tokens=True, seed=11, epochs=2, buffer_rows=300, threads=1, prefetch=1)
    )
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    c = _tokens(ActivationLoader(store, "wide", 100, tokens=True, seed=12, buffer_rows=300))
    assert not np.array_equal(np.concatenate(a[: len(c)]), np.concatenate(c))
    half = len(a) // 2
    e0, e1 = np.concatenate(a[:half]), np.concatenate(a[half:])
    assert np.array_equal(np.sort(e0), np.arange(TOTAL)) and np.array_equal(np.sort(e1), np.arange(TOTAL))
    assert not np.array_equal(e0, e1)


def test_shuffle_mixes_documents(store):
    # A window spans many blocks: a batch draws from documents all over the window.
    ld = ActivationLoader(store, "wide", 128, tokens=True, seed=0, buffer_rows=1024)
    docs = [np.unique(b["doc"].numpy()).size for b in ld]
    assert np.mean(docs[:-1]) > 15  # rows of 50-token documents from >= 16 blocks
    ordered = ActivationLoader(store, "wide", 128, tokens=True, shuffle=False)
    got = np.concatenate(_tokens(ordered))
    assert np.array_equal(got, np.arange(TOTAL))  # store order


@pytest.mark.parametrize("stop_after", [1, 7, 23])
def test_resume_mid_epoch_gives_the_uninterrupted_batches(store, stop_after):
    opts = dict(tokens=True, seed=2, epochs=2, buffer_rows=300, rank=1, world_size=2)
    full = _tokens(ActivationLoader(store, ["wide", "narrow"], 50, **opts))
    first = ActivationLoader(store, ["wide", "narrow"], 50, **opts)
    it = iter(first)
    head = [next(it)["token"].numpy().copy() for _ in range(stop_after)]
    state = json.loads(json.dumps(first.state_dict()))  # JSON round trip
    first.close()
    second = ActivationLoader(store, ["wide", "narrow"], 50, **opts)
    second.load_state_dict(state)
    tail = _tokens(second)
    assert len(head) + len(tail) == len(full)
    assert all(np.array_equal(x, y) for x, y in zip(head + tail, full))


def test_break_and_iterate_again_continues(store):
    full = _tokens(ActivationLoader(store, "wide", 64, tokens=True, seed=4))
    ld = ActivationLoader(store, "wide", 64, tokens=True, seed=4)
    head = []
    for b in ld:
        head.append(b["token"].numpy().copy())
        if len(head) == 5:
            break
    rest = _tokens(ld)
    assert all(np.array_equal(x, y) for x, y in zip(head + rest, full)) and len(head + rest) == len(full)


def test_resume_at_an_epoch_boundary_on_another_rank_count(store):
    one = ActivationLoader(store, "wide", 100, tokens=True, seed=9, epochs=1)
    _tokens(one)
    state = one.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 0)
    got = []
    for r in range(3):
        ld = ActivationLoader(store, "wide", 100, tokens=True, seed=9, epochs=2, rank=r, world_size=3)
        ld.load_state_dict(state)
        got.append(np.concatenate(_tokens(ld)))
    assert np.array_equal(np.sort(np.concatenate(got)), np.arange(TOTAL))
    # The same batches as 3 ranks that ran epoch 0 themselves.
    ref = ActivationLoader(store, "wide", 100, tokens=True, seed=9, epochs=2, rank=2, world_size=3)
    ref.set_epoch(1)
    assert np.array_equal(np.concatenate(_tokens(ref)), got[2])


def test_mid_epoch_state_refuses_another_rank_count_or_option(store):
    ld = ActivationLoader(store, "wide", 100, seed=9, rank=0, world_size=2)
    it = iter(ld)
    next(it)
    state = ld.state_dict()
    other = ActivationLoader(store, "wide", 100, seed=9, rank=0, world_size=3)
    with pytest.raises(LoaderError, match=r"mid-epoch .* rank 0 of 2, this is rank 0 of 3; resume with 2 ranks"):
        other.load_state_dict(state)
    with pytest.raises(LoaderError, match="batch_size=100, this loader has batch_size=64"):
        ActivationLoader(store, "wide", 64, seed=9, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(LoaderError, match="seed=9, this loader has seed=1"):
        ActivationLoader(store, "wide", 100, seed=1, rank=0, world_size=2).load_state_dict(state)


def test_resume_keeps_the_snapshot_when_the_store_grew(tmp_path):
    st = build(tmp_path / "acts", segments={"a": 700})
    ld = ActivationLoader(st, "wide", 64, tokens=True, seed=1)
    full = _tokens(ActivationLoader(st, "wide", 64, tokens=True, seed=1))
    it = iter(ld)
    head = [next(it)["token"].numpy().copy() for _ in range(3)]
    state = ld.state_dict()
    ld.close()
    with actstore.create(tmp_path / "acts", segment="b", dtype="fp32", durable=False) as w:  # more rows arrive
        t = np.arange(10_000, 10_300)
        w.append({"wide": acts(t, WIDE, 1.0), "narrow": acts(t, NARROW, 2.0)}, tokens=t)
    grown = actstore.open(tmp_path / "acts")
    again = ActivationLoader(grown, "wide", 64, tokens=True, seed=1)
    assert again.rows == 1000
    again.load_state_dict(state)
    assert again.rows == 700
    assert all(np.array_equal(x, y) for x, y in zip(head + _tokens(again), full))


def test_drop_last_gives_every_rank_the_same_full_batches(store):
    counts = []
    for r in range(3):
        toks = _tokens(ActivationLoader(store, "wide", 100, tokens=True, drop_last=True, rank=r, world_size=3))
        assert all(t.size == 100 for t in toks)
        counts.append(len(toks))
    assert counts == [(TOTAL // 3) // 100] * 3


def test_drop_flags_filters_rows_and_keeps_exactly_once(store):
    flagged = np.arange(TOTAL)[np.arange(TOTAL) % 50 == 0]
    got = []
    for r in range(2):
        ld = ActivationLoader(store, "narrow", 77, tokens=True, drop_flags="bos", rank=r, world_size=2)
        assert ld.rows == TOTAL - flagged.size
        got.append(np.concatenate(_tokens(ld)))
    got = np.concatenate(got)
    assert np.array_equal(np.sort(got), np.setdiff1d(np.arange(TOTAL), flagged))
    assert ActivationLoader(store, "narrow", 77, drop_flags=actstore.FLAG_BOS).rows == TOTAL - flagged.size


@pytest.mark.parametrize("dtype", ["fp8", "int8", "q16", "bf16", "fp16"])
def test_quantized_and_half_stores_match_the_reader(tmp_path, dtype):
    st = build(tmp_path / "acts", dtype=dtype, segments={"a": 600})
    for out in (torch.float32, torch.float16):
        for b in ActivationLoader(st, ["wide", "narrow"], 128, tokens=True, dtype=out, seed=1):
            rows = b["token"].long()
            for h in ("wide", "narrow"):
                assert b[h].dtype == out
                assert torch.equal(b[h], st.read(h, rows, dtype=torch.float32).to(out))


def test_bf16_store_read_as_bf16_is_bit_exact(tmp_path):
    st = build(tmp_path / "acts", dtype="bf16", segments={"a": 300})
    for b in ActivationLoader(st, "wide", 64, tokens=True, dtype=torch.bfloat16):
        ref = st.read("wide", b["token"].long(), dtype=torch.bfloat16)
        assert torch.equal(b["wide"].view(torch.int16), ref.view(torch.int16))


def test_mean_norm_normalization_follows_saelens(store):
    ld = ActivationLoader(store, "wide", 256, normalize="mean_norm")
    factor = ld.scale_factors["wide"]
    assert factor == pytest.approx(np.sqrt(WIDE) / store.stats("wide")["mean_norm"], rel=1e-6)
    norms = torch.cat([b.norm(dim=1) for b in ld])
    assert norms.numel() == TOTAL
    assert norms.double().mean().item() == pytest.approx(np.sqrt(WIDE), rel=1e-5)


def test_standardize_gives_zero_mean_unit_std(store):
    x = torch.cat(list(ActivationLoader(store, "narrow", 256, normalize="standardize")))
    assert x.shape == (TOTAL, NARROW)
    assert x.double().mean(0).abs().max().item() < 1e-5
    assert torch.allclose(x.double().std(0, unbiased=False), torch.ones(NARROW, dtype=torch.float64), atol=1e-4)


def test_given_statistics_replace_the_stores_and_survive_a_resume(store):
    """``stats``: the normalization of the rows ``[0, 1000)`` from those rows alone (what the
    trainer does with its training rows); a hook it does not name keeps the store's."""
    x = store.read("wide", slice(0, 1000)).double()
    mine = {"mean": x.mean(0), "std": x.std(0, unbiased=False), "mean_norm": float(x.norm(dim=1).mean())}
    ld = ActivationLoader(store, ["wide", "narrow"], 100, normalize="mean_norm", rows=(0, 1000), stats={"wide": mine})
    assert ld.norm_stats("wide") is mine and ld.norm_stats("narrow")["count"] == store.stats("narrow")["count"]
    assert ld.scale_factors["wide"] == pytest.approx(np.sqrt(WIDE) / mine["mean_norm"], rel=1e-6)
    assert ld.scale_factors["narrow"] == pytest.approx(np.sqrt(NARROW) / store.stats("narrow")["mean_norm"], rel=1e-6)
    norms = torch.cat([b["wide"].norm(dim=1) for b in ld])
    assert norms.double().mean().item() == pytest.approx(np.sqrt(WIDE), rel=1e-5)  # exactly, over these rows
    state = ld.state_dict()
    again = ActivationLoader(store, ["wide", "narrow"], 100, normalize="mean_norm", rows=(0, 1000))
    again.load_state_dict(state)  # the state carries the normalization it was made with
    assert again._norm["wide"][1].tolist() == ld._norm["wide"][1].tolist()
    std = ActivationLoader(store, "wide", 100, normalize="standardize", rows=(0, 1000), stats={"wide": mine})
    z = torch.cat(list(std)).double()
    assert z.mean(0).abs().max().item() < 1e-5
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(WIDE, dtype=torch.float64), atol=1e-4)
    with pytest.raises(LoaderError, match="not among the loader's hooks"):
        ActivationLoader(store, "wide", 100, normalize="mean_norm", stats={"narrow": mine})
    for d in (ld, again, std):
        d.close()


def test_plan_is_exactly_once_for_many_shapes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        kept = rng.integers(0, 40, size=rng.integers(1, 30))
        world = int(rng.integers(1, 6))
        B = int(rng.integers(1, 50))
        seen = []
        for r in range(world):
            p = EpochPlan(
                kept,
                seed=1,
                epoch=2,
                rank=r,
                world=world,
                shuffle=True,
                window_blocks=int(rng.integers(1, 5)),
                batch_size=B,
                drop_last=False,
            )
            for w, win in enumerate(p.windows):
                assert sorted(p.window_order(w)) == list(range(sum(x.hi - x.lo for x in win)))
                assert all(x.hi > x.lo for x in win)  # no empty piece: it would read a block for nothing
                seen += [(x.block, i) for x in win for i in range(x.lo, x.hi)]
            assert p.batches == -(-p.rows // B)
        want = [(b, i) for b, k in enumerate(kept) for i in range(k)]
        assert sorted(seen) == want


def test_plan_shuffles_blocks_and_windows_by_every_key():
    # Block order: SeedSequence([seed, epoch]); a window's rows: SeedSequence([seed, epoch, W, r, w]).
    # 16 blocks of 8 rows, windows of 2 blocks: every window of every rank below holds 16 rows.
    def plan(seed=1, epoch=0, rank=0, world=2, shuffle=True):
        kept = np.full(16, 8)
        return EpochPlan(
            kept, seed=seed, epoch=epoch, rank=rank, world=world, shuffle=shuffle, window_blocks=2, batch_size=8,
            drop_last=False,
        )  # fmt: skip

    base = plan()
    assert sorted(base.order) == list(range(16)) and not np.array_equal(base.order, np.arange(16))
    assert not np.array_equal(plan(seed=2).order, base.order)
    assert not np.array_equal(plan(epoch=1).order, base.order)
    assert np.array_equal(plan(seed=2, rank=1, world=3).order, plan(seed=2).order)  # one order for all ranks
    w0 = base.window_order(0)
    others = {
        "seed": plan(seed=2).window_order(0),
        "epoch": plan(epoch=1).window_order(0),
        "rank": plan(rank=1).window_order(0),
        "world": plan(world=4).window_order(0),
        "window": base.window_order(1),
    }
    for key, order in others.items():
        assert sorted(order) == list(range(16)) and not np.array_equal(order, w0), key
    flat = plan(shuffle=False)
    assert np.array_equal(flat.order, np.arange(16)) and np.array_equal(flat.window_order(1), np.arange(16))


# -- errors --------------------------------------------------------------------------------


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_unknown_hook_is_one_line_naming_the_hooks(store):
    with pytest.raises(UnknownHookError) as e:
        ActivationLoader(store, ["wide", "blocks.9"], 10)
    assert "unknown hook 'blocks.9'" in _one_line(e) and "wide" in str(e.value)


@pytest.mark.parametrize("bad", [0, -3, 2.5, None])
def test_bad_batch_size_is_one_line(store, bad):
    with pytest.raises(LoaderError) as e:
        ActivationLoader(store, "wide", bad)
    assert "batch_size must be a positive integer" in _one_line(e)


def test_store_with_no_rows_is_one_line(tmp_path):
    w = actstore.create(tmp_path / "empty", {"h": 8}, segment="s", durable=False)
    w.close()
    with pytest.raises(LoaderError) as e:
        ActivationLoader(tmp_path / "empty", "h", 4)
    assert "has no committed rows" in _one_line(e)


def test_other_bad_options_are_one_line(store):
    for kwargs, text in [
        (dict(dtype=torch.int32), "dtype"),
        (dict(normalize="l2"), "unknown normalize"),
        (dict(drop_flags="eos"), "unknown flag 'eos'"),
        (dict(rank=2, world_size=2), "rank 2"),
        (dict(buffer_rows=0), "buffer_rows"),
    ]:
        with pytest.raises(LoaderError) as e:
            ActivationLoader(store, "wide", 8, **kwargs)
        assert text in _one_line(e)
    with pytest.raises(LoaderError) as e:
        ActivationLoader(store, "wide", 8).load_state_dict({"version": 99})
    assert "not an ActivationLoader state" in _one_line(e)


def test_every_row_filtered_is_one_line(tmp_path):
    with actstore.create(tmp_path / "s", {"h": 8}, segment="s", durable=False) as w:
        w.append({"h": torch.randn(10, 8)}, flags=np.full(10, actstore.FLAG_BOS, np.uint8))
    with pytest.raises(LoaderError) as e:
        ActivationLoader(tmp_path / "s", "h", 4, drop_flags="bos")
    assert "leaves no rows" in _one_line(e)


def test_a_corrupt_chunk_is_an_error_naming_it_never_zeros(tmp_path):
    st = build(tmp_path / "acts", segments={"a": 600})
    shard = tmp_path / "acts" / "segments" / "a" / "acts" / "wide" / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[100:120] = bytes(20)  # zero bytes inside the first chunk
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptDataError, match=r"segment 'a', array 'acts/wide', chunk 0"):
        for _ in ActivationLoader(st, "wide", 64, shuffle=False):
            pass


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the pinned copy and the Triton kernel path")
@pytest.mark.parametrize("dtype", ["fp8", "bf16"])
def test_cuda_batches_equal_the_cpu_batches(tmp_path, dtype):
    st = build(tmp_path / "acts", dtype=dtype, segments={"a": 900})
    opts = dict(tokens=True, seed=4, normalize="mean_norm", dtype=torch.float32)
    cpu = list(ActivationLoader(st, ["wide", "narrow"], 100, **opts))
    gpu = list(ActivationLoader(st, ["wide", "narrow"], 100, device="cuda", **opts))
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu):
        assert b["wide"].is_cuda and b["token"].is_cuda
        for k in a:
            assert torch.equal(a[k], b[k].cpu()), k


def test_a_rank_with_no_batch_and_endless_epochs_is_an_error_not_a_hang(tmp_path):
    st = build(tmp_path / "acts", segments={"a": 10})
    with pytest.raises(LoaderError) as e:
        next(iter(ActivationLoader(st, "wide", 16, drop_last=True, epochs=None)))
    assert "gets no batch" in _one_line(e)
    # Finite epochs: an empty share simply yields nothing.
    assert list(ActivationLoader(st, "wide", 4, rank=0, world_size=20, epochs=2)) == []  # rows [0, 10//20)


@pytest.mark.parametrize("how", ["iter", "set_epoch", "load_state_dict", "close"])
def test_an_older_iterator_ends_when_the_loader_is_restarted(store, how):
    ld = ActivationLoader(store, "wide", 4, tokens=True, prefetch=1, buffer_rows=8, shuffle=False)
    old = iter(ld)
    next(old)
    state = ld.state_dict()
    if how == "iter":
        new = iter(ld)
    elif how == "set_epoch":
        ld.set_epoch(0)
    elif how == "load_state_dict":
        ld.load_state_dict(state)
    else:
        ld.close()
    assert list(old) == []  # ends at once: no hang, no stale batch
    if how != "close":
        assert ld.state_dict()["batch"] == (0 if how == "set_epoch" else 1)  # the old one moved nothing
        got = next(iter(ld) if how != "iter" else new)["token"].numpy()
        assert np.array_equal(got, np.arange(4) + (0 if how == "set_epoch" else 4))


def test_drop_flags_true_is_refused(store):
    with pytest.raises(LoaderError, match="is not a flag"):
        ActivationLoader(store, "wide", 8, drop_flags=True)


def test_odd_chunks_per_shard_with_unequal_hooks_reads_back(tmp_path):
    # 3 chunks of the widest hook would split a chunk of the narrower one: shards round up.
    with actstore.create(
        tmp_path / "s", {"a": 16, "b": 8}, segment="s", dtype="fp32", durable=False, chunk_bytes=256, chunks_per_shard=3
    ) as w:
        t = np.arange(100)
        w.append({"a": acts(t, 16, 1.0), "b": acts(t, 8, 2.0)}, tokens=t)
    st = actstore.open(tmp_path / "s")
    assert all(st.schema.shard_rows % h.chunk_rows == 0 for h in st.schema.hooks.values())
    for b in ActivationLoader(st, ["a", "b"], 32, tokens=True):
        assert torch.equal(b["b"], acts(b["token"].numpy(), 8, 2.0))
    assert torch.equal(st.read("a"), acts(t, 16, 1.0))


@pytest.mark.parametrize(
    "script",
    [
        "it = iter(loader)\nnext(it)\n",  # an iterator left unfinished at exit
        "for x in loader:\n    break\n",  # a loop left early, loader still alive
        "it = iter(loader)\nnext(it)\nit2 = iter(loader)\nnext(it2)\n",  # a second iterator stops the first
    ],
)
def test_unfinished_iterator_ends_the_script_quietly(store, script):
    """A real interpreter exit with a loader mid-iteration prints nothing: its threads are
    stopped before module teardown, not by a generator finalized after it."""
    import subprocess

    code = (
        f"import actstore\nloader = actstore.ActivationLoader({str(store.path)!r}, 'wide', batch_size=64, "
        f"seed=0, threads=2, prefetch=2, epochs=None)\n{script}print('done')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout == "done\n", p.stderr
    assert p.stderr == ""


def test_rows_and_docs_select_exactly_those_rows_across_segments_and_ranks(store):
    # rows [500, 1500) crosses the segment boundary at 1337; the flag filter applies on top
    want = np.array([t for t in range(500, 1500) if t % 50 != 0])
    got = []
    for r in range(2):
        ld = ActivationLoader(store, "wide", 64, tokens=True, drop_flags="bos", rows=(500, 1500), rank=r, world_size=2)
        assert ld.rows == want.size
        got.append(np.concatenate(_tokens(ld)))
    assert np.array_equal(np.sort(np.concatenate(got)), want)
    # documents 10..19 are the token ids 500..999 (doc = token // 50 in the fixture)
    ld = ActivationLoader(store, "wide", 64, tokens=True, docs=(10, 20), shuffle=False)
    batches = list(ld)
    assert np.array_equal(np.concatenate([b["doc"].numpy() for b in batches]), np.repeat(np.arange(10, 20), 50))
    x = torch.cat([b["wide"] for b in batches])
    assert torch.equal(x, store.read("wide", slice(500, 1000)))
    # the complement of a split holds the rest, exactly once
    rest = (
        ActivationLoader(store, "narrow", 100, tokens=True, rows=(0, 500)).rows
        + ActivationLoader(store, "narrow", 100, rows=(500, TOTAL)).rows
    )
    assert rest == TOTAL


def test_a_state_with_another_row_selection_is_refused(store):
    ld = ActivationLoader(store, "wide", 32, rows=(0, 1000))
    it = iter(ld)
    next(it)
    state = ld.state_dict()
    assert state["rows"] == (0, 1000)
    with pytest.raises(LoaderError) as e:
        ActivationLoader(store, "wide", 32, rows=(0, 900)).load_state_dict(json.loads(json.dumps(state)))
    assert "rows=[0, 1000]" in _one_line(e)
    ActivationLoader(store, "wide", 32, rows=(0, 1000)).load_state_dict(json.loads(json.dumps(state)))  # same: fine


@pytest.mark.parametrize("bad", [(5, 5), (-1, 4), "ab", (0, TOTAL * 2, 3)])
def test_a_bad_row_range_is_one_line(store, bad):
    with pytest.raises(LoaderError) as e:
        ActivationLoader(store, "wide", 32, rows=bad)
    assert "rows" in _one_line(e)


def test_a_selection_with_no_rows_is_one_line(store):
    with pytest.raises(LoaderError) as e:
        ActivationLoader(store, "wide", 32, docs=(10_000, 20_000))
    assert "leave no rows" in _one_line(e)


def test_row_column_is_each_rows_global_store_index(store):
    # tokens=True batches carry "row" (int64): the row's index in the store, as Store.read
    # counts, also under a flag filter, a row selection, a rank split and a mid-epoch resume.
    opts = dict(tokens=True, seed=2, drop_flags="bos", rows=(500, 2000), buffer_rows=256)
    got = []
    for r in range(2):
        for b in ActivationLoader(store, ["wide", "narrow"], 61, rank=r, world_size=2, **opts):
            row = b["row"]
            assert row.dtype == torch.int64 and row.shape == b["token"].shape
            assert torch.equal(b["wide"], store.read("wide", row))
            assert torch.equal(b["narrow"], store.read("narrow", row))
            t = store.tokens(row)
            assert all(torch.equal(b[k], t[k]) for k in ("token", "doc", "pos"))
            got.append(row.numpy().copy())
    want = np.array([i for i in range(500, 2000) if i % 50 != 0])  # the fixture's row i has token i, BOS at % 50
    assert np.array_equal(np.sort(np.concatenate(got)), want)
    full = [b["row"].numpy().copy() for b in ActivationLoader(store, "wide", 61, **opts)]
    first = ActivationLoader(store, "wide", 61, **opts)
    it = iter(first)
    head = [next(it)["row"].numpy().copy() for _ in range(3)]
    state = first.state_dict()
    first.close()
    second = ActivationLoader(store, "wide", 61, **opts)
    second.load_state_dict(state)
    tail = [b["row"].numpy().copy() for b in second]
    assert len(head + tail) == len(full) and all(np.array_equal(x, y) for x, y in zip(head + tail, full))


def test_a_hook_named_row_collides_with_tokens(tmp_path):
    with actstore.create(tmp_path / "s", {"row": 4}, segment="s", durable=False) as w:
        w.append({"row": torch.zeros(8, 4)})
    with pytest.raises(LoaderError, match="'row' collides with the token columns"):
        ActivationLoader(tmp_path / "s", "row", 4, tokens=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_native_decode_gives_the_per_chunk_paths_batches(tmp_path, monkeypatch, dtype):
    from actstore import _native

    if not _native.decode_scatter_ready(True):
        pytest.skip(f"no fused native decode here ({_native.NATIVE_ERROR or 'no numcodecs Blosc symbol'})")
    st = build(tmp_path / "acts", dtype="bf16", segments={"a": 700, "b": 333})

    def epoch():
        ld = ActivationLoader(st, ["wide", "narrow"], 96, tokens=True, dtype=dtype, seed=2, buffer_rows=200)
        out = [{k: v.clone() for k, v in b.items()} for b in ld]
        return out, sorted(ld._fetcher._codecs)

    fused, paths = epoch()
    assert paths == ["acts/narrow", "acts/wide"]  # both hooks went through decode_scatter
    monkeypatch.setattr(_native, "decode_scatter_ready", lambda blosc: False)
    plain, paths = epoch()
    assert paths == []
    assert len(fused) == len(plain)
    for f, p in zip(fused, plain):
        for k in f:  # bit for bit (bf16 compared as its bits)
            a, b = (f[k].view(torch.int16), p[k].view(torch.int16)) if f[k].dtype == torch.bfloat16 else (f[k], p[k])
            assert torch.equal(a, b), k


def test_a_held_batch_is_never_overwritten_and_dropped_ones_are_reused(store):
    kw = dict(tokens=True, seed=4, epochs=3, buffer_rows=128)
    held = list(ActivationLoader(store, "wide", 64, **kw))  # every batch kept alive
    copies = [{k: v.clone() for k, v in b.items()} for b in ActivationLoader(store, "wide", 64, **kw)]
    assert len(held) == len(copies) > 20
    for h, c in zip(held, copies):
        assert all(torch.equal(h[k], c[k]) for k in c)
    # Batches dropped as they come are served again from the same host buffers.
    ptrs = [b["wide"].data_ptr() for b in ActivationLoader(store, "wide", 64, **kw)]
    assert len(set(ptrs)) < len(ptrs) // 2
