"""Transcoders and skip transcoders (TopK, BatchTopK, JumpReLU): one interface (a target of
``d_out`` values, every parameter learns, the normalization folds, files round-trip), and
their SAELens and sparsify forms checked against the real packages: the peer's forward on x
equals ``sae.output(x)`` and the latents are equal, both ways; a transcoder trained by
``actstore.sae.train`` and exported gives, in the peer, the held-out FVU the trainer reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import actstore
from actstore.errors import SAEError
from actstore.sae import SAEConfig, build, from_saelens, from_sparsify, load, save, to_saelens, to_sparsify, train
from actstore.sae.config import TRANSCODER_ACTIVATIONS, TRANSCODER_ARCHS
from helpers import loader_store
from helpers.peers import need

D, M, K = 24, 96, 6
PAIRS = [(a, f) for a in TRANSCODER_ARCHS for f in TRANSCODER_ACTIVATIONS]
SOURCE, TARGET = "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out"


def _tc(arch, act, d_out=40, seed=0):
    """A transcoder off its init (every parameter matters), in eval mode; a BatchTopK one has
    its inference threshold from one training batch."""
    # A wide JumpReLU bandwidth, so some pre-activations of a small batch fall in it (theta's gradient).
    kw = {"k": K} if "topk" in act else {"bandwidth": 0.05}
    sae = build(SAEConfig(arch, D, M, activation=act, d_out=d_out, hook=SOURCE, target=TARGET, **kw), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        if act == "jumprelu":
            sae.log_threshold.fill_(-3.0)
    if act == "batchtopk":
        sae.train()
        sae.loss(_x(64, seed + 2), target=_y(64, d_out, seed + 3))
    return sae.eval()


def _x(n=40, seed=9):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 2


def _y(n=40, d_out=40, seed=10):
    return torch.randn(n, d_out, generator=torch.Generator().manual_seed(seed)) + 0.5


def _fvu(y, y_hat):
    y, y_hat = y.double(), y_hat.double()
    return float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


# -- one interface -------------------------------------------------------------------------


@pytest.mark.parametrize("arch,act", PAIRS)
def test_every_parameter_learns_from_the_target(arch, act):
    sae = _tc(arch, act).train()
    x, y = _x(), _y()
    dead = torch.zeros(M, dtype=torch.bool)
    dead[::3] = True
    out = sae.loss(x, dead_mask=dead if sae.uses_auxk else None, target=y)
    out["loss"].backward()
    no_grad = [n for n, p in sae.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"{arch}/{act}: no gradient for {no_grad}"
    assert (sae.W_skip is not None) == (arch == "skip_transcoder")
    assert sae.eval().output(x).shape == (40, 40)


@pytest.mark.parametrize("arch,act", PAIRS)
def test_folding_scale_and_scale_out_gives_the_same_output_on_raw_rows(arch, act):
    sae = _tc(arch, act)
    sae.cfg.scale, sae.cfg.scale_out = 0.37, 2.5
    raw = _x() / 0.37  # rows that training scaled to _x()
    want_lat = sae.encode(raw * 0.37, dense=True)
    want = sae.output(raw * 0.37) / 2.5  # the training-scale output, back in the target's raw units
    sae.fold_scale()
    assert sae.cfg.scale == 1.0 and sae.cfg.scale_out == 1.0
    assert (want_lat > 0).sum() > 0
    torch.testing.assert_close(sae.encode(raw, dense=True), want_lat, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae.output(raw), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,act", PAIRS)
def test_save_and_load_round_trip_exactly(arch, act, tmp_path):
    sae = _tc(arch, act)
    save(sae, tmp_path / "s")
    back = load(tmp_path / "s")
    assert type(back) is type(sae) and back.cfg == sae.export_config()
    assert back.cfg.target == TARGET and back.cfg.d_out == 40 and back.cfg.activation == act
    for (n, a), (_, b) in zip(sae.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n
    # only scale_out to fold: save still folds it (a transcoder whose source was not rescaled)
    sae.cfg.scale_out = 2.5
    want = sae.output(_x()) / 2.5
    save(sae, tmp_path / "t")
    folded = load(tmp_path / "t").eval()
    assert folded.cfg.scale_out == 1.0 and sae.cfg.scale_out == 2.5  # the SAE itself is left as it is
    torch.testing.assert_close(folded.output(_x()), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,act", PAIRS)
def test_a_missing_or_misshapen_target_is_one_line(arch, act):
    sae = _tc(arch, act)
    with pytest.raises(SAEError, match="reconstructs its target hook") as e:
        sae.loss(_x())
    assert "\n" not in str(e.value)
    with pytest.raises(SAEError, match=r"target must be \[n=40, d_out=40\]") as e:
        sae.loss(_x(), target=_y(d_out=24))
    assert "\n" not in str(e.value)


# -- SAELens -------------------------------------------------------------------------------

SAELENS_CLASS = {"transcoder": "JumpReLUTranscoder", "skip_transcoder": "JumpReLUSkipTranscoder"}


@pytest.mark.parametrize("d_out", [24, 40])
@pytest.mark.parametrize("arch,act", [p for p in PAIRS if p[1] != "topk"])
def test_transcoders_export_to_saelens_and_back_with_the_same_output(arch, act, d_out, tmp_path):
    sae_lens = need("sae_lens")
    ours = _tc(arch, act, d_out)
    ours.cfg.scale, ours.cfg.scale_out = 0.37, 2.5  # the export folds both
    x = _x() / 0.37  # raw rows that training scaled to _x()
    want = ours.output(x * 0.37) / 2.5
    want_lat = ours.encode(x * 0.37, dense=True)
    to_saelens(ours, tmp_path / "sl")
    doc = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert doc["apply_b_dec_to_input"] is False and doc["d_out"] == d_out
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sl"))
    assert type(theirs).__name__ == SAELENS_CLASS[arch] and isinstance(theirs, sae_lens.Transcoder)
    assert isinstance(theirs, sae_lens.SkipTranscoder) == (arch == "skip_transcoder")
    assert theirs.cfg.metadata.hook_name == SOURCE and theirs.cfg.metadata.hook_name_out == TARGET
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), want_lat, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), want, atol=1e-5, rtol=1e-5)
    assert (want_lat > 0).sum() > 0
    back = from_saelens(tmp_path / "sl")
    assert type(back) is type(ours) and not back.training  # BatchTopK comes back as BatchTopK
    assert (back.cfg.hook, back.cfg.target, back.cfg.d_out) == (SOURCE, TARGET, d_out)
    if act == "batchtopk":
        assert back.cfg.k == K and back.cfg.threshold == pytest.approx(float(ours.threshold))
    torch.testing.assert_close(back.output(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", TRANSCODER_ARCHS)
def test_saelens_jumprelu_transcoders_import_with_the_same_output(arch, tmp_path):
    sae_lens = need("sae_lens")
    name = SAELENS_CLASS[arch]
    cfg = getattr(sae_lens, name + "Config")(d_in=D, d_sae=M, d_out=40, apply_b_dec_to_input=False)
    cfg.metadata.hook_name, cfg.metadata.hook_name_out = SOURCE, TARGET
    theirs = getattr(sae_lens, name)(cfg)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in theirs.named_parameters():
            p.copy_(torch.full(p.shape, 0.4) if n == "threshold" else torch.randn(p.shape, generator=g) * 0.3)
    theirs.save_model(tmp_path / "sl")
    ours = from_saelens(tmp_path / "sl")
    assert (ours.arch, ours.act, ours.cfg.d_out) == (arch, "jumprelu", 40)
    assert (ours.cfg.hook, ours.cfg.target) == (SOURCE, TARGET)
    x = _x()
    with torch.no_grad():
        lat = theirs.encode(x)
        torch.testing.assert_close(ours.encode(x, dense=True), lat, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.output(x), theirs(x), atol=1e-5, rtol=1e-5)
    assert (lat > 0).sum() > 0


@pytest.mark.parametrize("arch", TRANSCODER_ARCHS)
def test_what_saelens_and_actstore_cannot_share_is_one_line(arch, tmp_path):
    sae_lens = need("sae_lens")
    with pytest.raises(SAEError, match="SAELens has no topk transcoder.*to_sparsify.*batchtopk or jumprelu") as e:
        to_saelens(_tc(arch, "topk"), tmp_path / "topk")
    assert "\n" not in str(e.value) and not (tmp_path / "topk").exists()
    # SAELens' ReLU transcoders: a JumpReLU at theta 0, which actstore's log-parameterized theta cannot hold
    name = {"transcoder": "Transcoder", "skip_transcoder": "SkipTranscoder"}[arch]
    relu = getattr(sae_lens, name)(
        getattr(sae_lens, name + "Config")(d_in=D, d_sae=M, d_out=40, apply_b_dec_to_input=False)
    )
    relu.save_model(tmp_path / "relu")
    with pytest.raises(SAEError, match=f"architecture '{arch}' has no actstore counterpart") as e:
        from_saelens(tmp_path / "relu")
    assert "\n" not in str(e.value)


# -- sparsify ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TRANSCODER_ARCHS)
def test_sparsify_transcoders_round_trip_with_the_same_output(arch, tmp_path):
    sparsify = need("sparsify")
    skip = arch == "skip_transcoder"
    coder = sparsify.SparseCoder(
        D, sparsify.SparseCoderConfig(num_latents=M, k=K, transcode=True, skip_connection=skip)
    )
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    coder.save_to_disk(tmp_path / "sp")
    ours = from_sparsify(tmp_path / "sp")
    assert (ours.arch, ours.act, ours.cfg.d_target, ours.cfg.k) == (arch, "topk", D, K)
    x, y = _x(), _y(d_out=D)
    with torch.no_grad():
        out = coder(x, y)
    lat = ours.encode(x)
    got = torch.zeros(40, M).scatter(1, out.latent_indices, out.latent_acts)
    torch.testing.assert_close(lat.dense(), got, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.output(x), out.sae_out, atol=1e-5, rtol=1e-5)
    assert ours.loss(x, target=y)["fvu"].item() == pytest.approx(out.fvu.item(), rel=1e-5)
    # and ours (normalization folded) back to sparsify
    ours.cfg.scale, ours.cfg.scale_out = 0.37, 2.5
    want = ours.output(x * 0.37) / 2.5
    to_sparsify(ours, tmp_path / "back")
    again = sparsify.SparseCoder.load_from_disk(tmp_path / "back")
    assert again.cfg.transcode and again.cfg.skip_connection == skip
    with torch.no_grad():
        torch.testing.assert_close(again(x, y).sae_out, want, atol=1e-5, rtol=1e-5)


def test_what_sparsify_and_actstore_cannot_share_is_one_line(tmp_path):
    sparsify = need("sparsify")
    for arch, act in [("transcoder", "topk"), ("skip_transcoder", "jumprelu")]:  # d_out 40 != d; a JumpReLU
        with pytest.raises(SAEError, match="d_out=40|TopK SAEs and TopK transcoders only") as e:
            to_sparsify(_tc(arch, act), tmp_path / arch)
        assert "\n" not in str(e.value) and not (tmp_path / arch).exists()
    coder = sparsify.SparseCoder(D, sparsify.SparseCoderConfig(num_latents=M, k=K, skip_connection=True))
    coder.save_to_disk(tmp_path / "sk")
    with pytest.raises(SAEError, match="skip connection without transcode") as e:
        from_sparsify(tmp_path / "sk")
    assert "\n" not in str(e.value)


# -- trained by actstore, run by the peers ----------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return loader_store.build(tmp_path_factory.mktemp("tc") / "acts")


@pytest.fixture(scope="module")
def square_store(tmp_path_factory):
    """Source and target of the same width (sparsify's transcoders write d_in values)."""
    path = tmp_path_factory.mktemp("sq") / "acts"
    t = np.arange(1200, dtype=np.int64)
    with actstore.create(path, {"mlp.in": 20, "mlp.out": 20}, segment="rank00000", dtype="fp32", durable=False) as w:
        w.append({"mlp.in": loader_store.acts(t, 20, 1.0), "mlp.out": loader_store.acts(t, 20, 3.0) ** 2}, tokens=t)
        w.commit()
    return actstore.open(path)


def _train(store, out, source, target, arch, act):
    return train(
        store=store.path,
        source=source,
        target=target,
        arch=arch,
        activation=act,
        latents=64,
        k=4 if "topk" in act else None,
        tokens=32 * 40,
        out=str(out),
        batch_size=32,
        lr=3e-3,
        warmup_steps=5,
        log_every=10,
        checkpoint_every=40,
        buffer_rows=256,
        progress=False,
    )


def _held_out(store, summary, source, target):
    n, rows = store.rows, summary["eval"]["rows"]
    return store.read(source, slice(n - rows, n)).float(), store.read(target, slice(n - rows, n)).float()


@pytest.mark.parametrize("arch,act", [("transcoder", "jumprelu"), ("skip_transcoder", "batchtopk")])
def test_a_trained_transcoder_gives_its_held_out_fvu_in_saelens(store, tmp_path, arch, act):
    sae_lens = need("sae_lens")
    summary = _train(store, tmp_path / "o", "narrow", "wide", arch, act)
    ours = load(tmp_path / "o" / "sae")
    assert (ours.cfg.d, ours.cfg.d_out, ours.cfg.scale, ours.cfg.scale_out) == (20, 40, 1.0, 1.0)
    to_saelens(ours, tmp_path / "sl")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sl"))
    assert isinstance(theirs, sae_lens.SkipTranscoder if arch == "skip_transcoder" else sae_lens.Transcoder)
    assert type(theirs).__name__ == SAELENS_CLASS[arch]
    x, y = _held_out(store, summary, "narrow", "wide")
    with torch.no_grad():
        fvu = _fvu(y, theirs(x))
    assert 0 < summary["eval"]["fvu"] < 1
    assert fvu == pytest.approx(summary["eval"]["fvu"], rel=1e-5)


@pytest.mark.parametrize("arch", TRANSCODER_ARCHS)
def test_a_trained_topk_transcoder_gives_its_held_out_fvu_in_sparsify(square_store, tmp_path, arch):
    sparsify = need("sparsify")
    summary = _train(square_store, tmp_path / "o", "mlp.in", "mlp.out", arch, "topk")
    to_sparsify(load(tmp_path / "o" / "sae"), tmp_path / "sp")
    coder = sparsify.SparseCoder.load_from_disk(tmp_path / "sp")
    assert coder.cfg.transcode and coder.cfg.skip_connection == (arch == "skip_transcoder")
    x, y = _held_out(square_store, summary, "mlp.in", "mlp.out")
    with torch.no_grad():
        fvu = coder(x, y).fvu.item()
    assert 0 < summary["eval"]["fvu"] < 1
    assert fvu == pytest.approx(summary["eval"]["fvu"], rel=1e-5)
