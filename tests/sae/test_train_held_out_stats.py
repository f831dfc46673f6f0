"""The held-out rows do not shape training: for every family (SAE, transcoder, crosscoder over
the layers of one store or one hook of two stores, CLT) and either held-out split (the last
rows, or the highest document ids, here placed in the middle of the store), the normalization
factor and the decoder bias / encoder centring at init come from the training rows alone.

The store's held-out rows (and the middle documents) are shifted by +40 and scaled by 20 from
the rest, so any of their rows in the statistics moves the figures far past the tolerance."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

import actstore
from actstore.sae import train
from actstore.store.stats import RunningStats

trainer = importlib.import_module("actstore.sae.train")

D, ROWS, HELD_ROWS = 8, 600, 100
HOOKS = [f"model.layers.{ly}.{k}" for ly in range(2) for k in ("mlp:input", "mlp")]
# Twelve documents of 50 rows in store order; ids 10 and 11 (the two highest, what
# --eval-docs 2 holds out) are rows 200..299, in the middle of the store.
DOC_ORDER = [0, 1, 2, 3, 10, 11, 4, 5, 6, 7, 8, 9]
DOC = np.repeat(DOC_ORDER, 50).astype(np.int64)
# Rows unlike the rest: the last HELD_ROWS (what --eval-rows holds out) and docs 10 and 11.
ODD = (np.arange(ROWS) >= ROWS - HELD_ROWS) | (DOC >= 10)


def _write(path, seed):
    g = torch.Generator().manual_seed(seed)
    acts = {}
    for i, h in enumerate(HOOKS):
        x = torch.randn(ROWS, D, generator=g) * (1 + i) + torch.randn(D, generator=g)
        x[torch.from_numpy(ODD)] = x[torch.from_numpy(ODD)] * 20 + 40
        acts[h] = x
    tok = np.arange(ROWS, dtype=np.int64)
    with actstore.create(path, {h: D for h in HOOKS}, dtype="fp32", durable=False, chunk_bytes=64 * D * 4,
                         chunks_per_shard=4) as w:  # fmt: skip
        for lo in range(0, ROWS, 200):
            sl = slice(lo, lo + 200)
            w.append({h: a[sl] for h, a in acts.items()}, tokens=tok[sl], doc=DOC[sl], pos=tok[sl] % 50)
            w.commit()
    return actstore.open(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("held_stats")
    return _write(root / "a", 0), _write(root / "b", 1)


SPLITS = {
    "rows": ({"eval_rows": HELD_ROWS}, np.arange(ROWS) < ROWS - HELD_ROWS),
    "docs": ({"eval_docs": 2}, DOC < 10),
    # Nine of twelve documents held out: more held-out rows than training rows, so the pass
    # reads the training rows instead (docs 0, 1 and 2, rows 0..149).
    "most_docs": ({"eval_docs": 9}, DOC < 3),
}
L0, L1 = HOOKS[0], HOOKS[1]  # layer 0's MLP input and output
FAMILIES = {
    "sae": dict(arch="topk", hook=L1),
    "transcoder": dict(arch="transcoder", source=L0, target=L1),
    "crosscoder": dict(arch="crosscoder", hooks="model.layers.*.mlp"),
    "crosscoder_two_stores": dict(arch="crosscoder", hooks=L1),  # paired_store added below
    "clt": dict(arch="clt", source="model.layers.*.mlp:input", target="model.layers.*.mlp"),
}


def _train_rows_stats(store, hook, keep):
    """Brute force over the training rows: (mean [d] float64, sqrt(d) / mean row norm)."""
    x = store.read(hook)[torch.from_numpy(keep)].double()
    return x.mean(0), math.sqrt(D) / float(x.norm(dim=1).mean())


def _spy(monkeypatch):
    """Record every loader the trainer makes and the SAE ``_new_sae`` returns (before any step)."""
    seen = {"loaders": [], "sae": None}

    class Spy(trainer.ActivationLoader):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen["loaders"].append((kw, self))

    real = trainer._new_sae

    def new_sae(*a, **kw):
        sae = real(*a, **kw)
        seen["sae"] = {k: v.detach().clone() for k, v in sae.state_dict().items()}
        return sae

    monkeypatch.setattr(trainer, "ActivationLoader", Spy)
    monkeypatch.setattr(trainer, "_new_sae", new_sae)
    return seen


def _run(stores, tmp_path, family, split, **kw):
    a, b = stores
    opts = dict(FAMILIES[family], store=a.path, latents=16, k=2, tokens=32, batch_size=32, out=str(tmp_path / "o"))
    if family == "crosscoder_two_stores":
        opts["paired_store"] = str(b.path)
    opts.update(buffer_rows=64, progress=False, **SPLITS[split][0], **kw)
    return train(**opts)


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_normalization_and_the_init_come_from_the_training_rows_alone(stores, tmp_path, monkeypatch, family,
                                                                          split):  # fmt: skip
    seen = _spy(monkeypatch)
    _run(stores, tmp_path, family, split)
    keep = SPLITS[split][1]
    trained = [(kw, ld) for kw, ld in seen["loaders"] if kw.get("shuffle") and kw.get("normalize")]
    evals = [(kw, ld) for kw, ld in seen["loaders"] if not kw.get("shuffle") and kw.get("normalize")]
    paired = family == "crosscoder_two_stores"
    assert len(trained) == len(evals) == (2 if paired else 1)
    want = {}  # (store index, hook) -> (mean in the training scale, scale factor)
    for i, (_, ld) in enumerate(trained):
        for h in ld.hooks:
            mean, scale = _train_rows_stats(stores[i], h, keep)
            assert ld.scale_factors[h] == pytest.approx(scale, rel=1e-6), (i, h)
            want[i, h] = (mean * scale, scale)
    # The held-out evaluation reads in the training scale: its loaders take the same factors.
    assert [ld.scale_factors for _, ld in evals] == [ld.scale_factors for _, ld in trained]
    sd = seen["sae"]

    def close(got, expect):
        torch.testing.assert_close(got.double(), expect, rtol=1e-5, atol=1e-5)

    if family in ("sae", "transcoder"):
        close(sd["b_dec"], want[0, L1][0])
    if family == "transcoder":  # the encoder centred on the source's training mean
        close(sd["b_enc"], -(sd["W_enc"].double() @ want[0, L0][0]))
    if family == "crosscoder":
        close(sd["b_dec"], torch.cat([want[0, h][0] for h in ("model.layers.0.mlp", "model.layers.1.mlp")]))
    if paired:
        close(sd["b_dec"], torch.cat([want[0, L1][0], want[1, L1][0]]))
    if family == "clt":
        src, tgt = HOOKS[0::2], HOOKS[1::2]
        close(sd["b_dec"].reshape(2, D), torch.stack([want[0, h][0] for h in tgt]))
        mean_src = torch.stack([want[0, h][0] for h in src])
        close(sd["b_enc"].reshape(2, -1), -torch.einsum("lmd,ld->lm", sd["W_enc"].double(), mean_src))


@pytest.mark.parametrize("split", ["rows", "docs"])
def test_standardize_and_no_normalization_use_the_training_rows_too(stores, tmp_path, monkeypatch, split):
    keep = SPLITS[split][1]
    seen = _spy(monkeypatch)
    _run(stores, tmp_path / "s", "sae", split, normalize="standardize")
    (_, ld), *_ = [(kw, ld) for kw, ld in seen["loaders"] if kw.get("shuffle")]
    x = stores[0].read(L1)[torch.from_numpy(keep)].double()
    shift, mul = ld._norm[L1]
    torch.testing.assert_close(shift.double(), x.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mul.double(), 1 / x.std(0, unbiased=False), rtol=1e-5, atol=1e-6)
    assert bool((seen["sae"]["b_dec"] == 0).all())  # standardized rows are zero-mean already
    seen = _spy(monkeypatch)
    _run(stores, tmp_path / "n", "sae", split, normalize=None)
    torch.testing.assert_close(seen["sae"]["b_dec"].double(), x.mean(0), rtol=1e-5, atol=1e-5)


def test_nothing_held_out_keeps_the_stores_statistics(stores):
    assert trainer.training_stats(stores[0], HOOKS, {}, None) == {}  # the store's own are the training rows'


def test_store_statistics_that_do_not_count_its_rows_are_not_trusted(stores, monkeypatch):
    """Statistics that count no row (as if lost): the pass reads the training rows instead."""
    monkeypatch.setattr(stores[0], "_merged_stats", lambda h: RunningStats(D))
    got = trainer.training_stats(stores[0], [L1], {"rows": (0, ROWS - HELD_ROWS)}, {"rows": (ROWS - HELD_ROWS, ROWS)})
    mean, scale = _train_rows_stats(stores[0], L1, SPLITS["rows"][1])
    torch.testing.assert_close(got[L1]["mean"], mean, rtol=1e-6, atol=1e-6)
    assert got[L1]["count"] == ROWS - HELD_ROWS and math.sqrt(D) / got[L1]["mean_norm"] == pytest.approx(scale)


def test_running_stats_minus_undoes_a_merge():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(500, D, generator=g) + 2, torch.randn(120, D, generator=g) * 30 - 70
    b[5, 2] = float("nan")  # one non-finite row in the part taken out
    whole, part, rest = RunningStats(D), RunningStats(D), RunningStats(D)
    for x in (a, b):
        whole.update(x)
    part.update(b)
    rest.update(a)
    got = whole.minus(part)
    assert (got.count, got.nonfinite_rows) == (500, 0)
    np.testing.assert_allclose(got.mean, rest.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.m2, rest.m2, rtol=1e-10)
    assert got.norm_sum == pytest.approx(rest.norm_sum, rel=1e-12)
    with pytest.raises(ValueError, match="not a subset"):
        part.minus(whole)
