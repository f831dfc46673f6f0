"""``analyze --sae`` with a transcoder: the latents are encoded from the SOURCE hook's rows and
the logit lens reads the decoder rows, which live in the TARGET's space. A store with a
source of width 12 and a target of width 16 (so reading the wrong one cannot pass): stats,
top, contexts and the lens match brute force from the source rows and ``W_dec``; ``scan``
of the decoder rows reads the target; a store without either hook, a target of another
width or another hook are one-line errors (also from ``actstore analyze``, whose summary line
names the target). Over a real tiny Llama captured at ``mlp:input`` and ``mlp``,
``ablation`` runs the model to the source hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from transformers import LlamaConfig, LlamaForCausalLM

import actstore
import actstore.analysis as an
from actstore.analysis import AnalysisError
from actstore.analysis.output import read_attrs
from actstore.analysis.report import render
from actstore.cli import main
from actstore.sae import SAEConfig, build, save
from helpers.analysis_store import dense_code

N, DS, DT, M, K, BLOCK, VOCAB = 160, 12, 16, 10, 3, 64, 64
SRC, TGT = "model.layers.0.mlp:input", "model.layers.0.mlp"


def llama(hidden=DT, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.model.norm.weight.copy_(torch.rand(hidden) * 2 + 0.1)  # a gain that matters
    return m


def write(path, hooks: dict[str, int], seed=0) -> dict:
    """A store of ``N`` rows holding ``hooks`` (name -> width): random rows, documents of 3-30 rows."""
    g = np.random.default_rng(seed)
    x = {h: (g.standard_normal((N, d)) * 2).astype(np.float32) for h, d in hooks.items()}
    lens = []
    while sum(lens) < N:
        lens.append(int(g.integers(3, 31)))
    doc = np.repeat(np.arange(len(lens)), lens)[:N].astype(np.int64)
    pos = np.concatenate([np.arange(k) for k in lens])[:N].astype(np.int32)
    tok = g.integers(0, 50, N).astype(np.int32)
    with actstore.create(path, hooks, segment="a", dtype="fp32", codec="none") as w:
        w.append(x, tokens=tok, doc=doc, pos=pos, flags=np.zeros(N, np.uint8))
    return {"x": x, "doc": doc, "pos": pos, "token": tok}


def transcoder(arch="transcoder", d=DS, d_out=DT, hook=SRC, target=TGT, seed=3):
    sae = build(SAEConfig(arch, d, M, k=K, hook=hook, target=target, d_out=d_out, activation="topk"), seed=seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.mul_(3.0)
        sae.b_enc.copy_(torch.linspace(-1.0, 1.0, M))
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, M)[:, None])  # rows of different norms
        sae.b_dec.normal_()
        if sae.W_skip is not None:
            sae.W_skip.normal_()  # nothing the feature jobs read
    return sae


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tc")
    cols = write(root / "s", {SRC: DS, TGT: DT, "other": DT})
    sae = transcoder("skip_transcoder")
    return root, cols, sae, save(sae, root / "sae")


def test_features_come_from_the_source_and_the_lens_from_the_decoder(setup, tmp_path):
    root, cols, sae, folder = setup
    model = llama()
    jobs = {"stats": {}, "top": {"k": 4}, "contexts": {"window": 2}, "lens": {"t": 5}}
    out = an.run(root / "s", folder, jobs, tmp_path / "o", model=model, block_rows=BLOCK)
    a = an.open(out)
    assert a.attrs["hook"] == SRC and a.attrs["target"] == TGT
    f = dense_code(sae, cols["x"][SRC], block=BLOCK)  # [N, M] from the source rows, as the pass encodes
    assert (f > 0).any(0).sum() >= M - 1  # the latents fire
    np.testing.assert_array_equal(a.array("latents/count"), (f > 0).sum(0))
    np.testing.assert_allclose(a.array("latents/max"), f.max(0), rtol=1e-6)
    for j in range(M):  # top: each latent's highest rows of the source code (no ties in random rows)
        want = np.argsort(-f[:, j], kind="stable")[:4]
        want = np.where(f[want, j] > 0, want, -1)
        np.testing.assert_array_equal(a.array("top/rows")[j], want, err_msg=f"latent {j}")
        np.testing.assert_allclose(a.array("top/values")[j], np.where(want >= 0, f[want, j], 0), rtol=1e-6)
    # contexts re-encode the source rows: the example's own activation is its top value
    np.testing.assert_allclose(a.array("contexts/top/acts")[:, :, 2], a.array("top/values"), rtol=1e-6)
    # the lens: the decoder rows (d_out = 16 wide, the target's space) through the unembedding
    w = sae.W_dec.detach().double().numpy() * model.model.norm.weight.detach().double().numpy()
    want = w @ model.lm_head.weight.detach().double().numpy().T  # [M, V]
    order = np.argsort(-want, axis=1, kind="stable")
    np.testing.assert_array_equal(a.array("lens/top_ids"), order[:, :5])
    np.testing.assert_allclose(a.array("lens/top_values"), np.take_along_axis(want, order[:, :5], 1), atol=1e-4)
    np.testing.assert_array_equal(a.array("lens/bottom_ids"), order[:, ::-1][:, :5])
    html = render(out, tmp_path / "r").read_text()
    assert f"<h1>{SRC} → {TGT} · {M} latents</h1>" in html  # the report's header names both hooks


def test_scan_of_the_decoder_reads_the_target(setup, tmp_path):
    root, cols, sae, folder = setup
    out = an.run_all(root / "s", {"scan": {"latents": "2,5", "k": 3}}, tmp_path / "o", sae=folder, block_rows=BLOCK)
    assert read_attrs(out / "scan")["hook"] == TGT
    g = zarr.open_group(str(out / "scan"), mode="r")
    proj = cols["x"][TGT].astype(np.float64) @ sae.W_dec.detach().double().numpy()[[2, 5]].T  # [N, 2]
    np.testing.assert_array_equal(g["scan/top_rows"][...], np.argsort(-proj, axis=0, kind="stable")[:3].T)
    np.testing.assert_allclose(g["scan/top_values"][...], -np.sort(-proj, axis=0)[:3].T, rtol=1e-5)


def test_hooks_the_transcoder_needs_are_one_line_errors(setup, tmp_path):
    root, _, sae, folder = setup
    write(tmp_path / "no_tgt", {SRC: DS, "other": DT})
    write(tmp_path / "no_src", {TGT: DT})
    write(tmp_path / "narrow", {SRC: DS, TGT: 8})
    cases = [
        (tmp_path / "no_tgt", {}, f"lacks '{TGT}'"),
        (tmp_path / "no_src", {}, f"lacks '{SRC}'"),
        (tmp_path / "narrow", {}, f"writes width {DT} but hook '{TGT}' has width 8"),
        (root / "s", {"hook": "other"}, f"reads hook '{SRC}', not 'other'"),
    ]
    for store, kw, want in cases:
        with pytest.raises(AnalysisError) as e:
            an.run(store, folder, ["stats"], tmp_path / "o", block_rows=BLOCK, **kw)
        msg = str(e.value)
        assert "\n" not in msg and want in msg, msg
        assert not (tmp_path / "o").exists()


def test_ablation_runs_the_model_to_the_source_hook(tmp_path):
    model = llama()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(50.0)  # activations of order 1
    ids = np.random.default_rng(4).integers(1, VOCAB, size=(6, 12)).astype(np.int64)
    actstore.capture(model, [SRC, TGT], ids, str(tmp_path / "s"), context=12, batch_size=6, dtype="fp32",
                     progress=False)  # fmt: skip
    store = actstore.open(str(tmp_path / "s"))
    sae = transcoder(d=DT, seed=5)
    with torch.no_grad():
        sae.W_enc.mul_(2.0)
    jobs = {"stats": {}, "top": {"k": 3}, "lens": {"t": 3}, "ablation": {"examples": 3, "tokens": 4}}
    a = an.open(an.run(store, sae, jobs, tmp_path / "o", model=model, block_rows=32))
    x = store.read(SRC, slice(0, store.rows))
    f = dense_code(sae, x.numpy(), block=32)
    rows, base = a.array("ablation/rows"), a.array("ablation/base")
    pos = store.tokens(slice(0, store.rows))["pos"].numpy()
    checked = 0
    for j in range(M):
        for e in range(3):
            r = rows[j, e]
            if r >= 0 and pos[r] <= 4:  # the prefix holds the whole document: the stored row's activation
                assert base[j, e] == pytest.approx(f[r, j], rel=1e-4, abs=1e-4)
                checked += 1
    assert checked >= 3
    after_first = (rows >= 0) & (pos[np.maximum(rows, 0)] > 0)  # a token before the example to delete
    assert after_first.any() and np.isfinite(a.array("ablation/delta")[..., -1][after_first]).all()


def test_the_cli_analyses_a_transcoder_and_refuses_a_store_without_its_target(setup, tmp_path, capsys):
    root, _, _, folder = setup
    cli = lambda *a: main(["analyze", *map(str, a)])  # noqa: E731 - in process: the CLI's own code path
    assert cli("--store", root / "s", "--sae", folder, "--jobs", "stats,top", "--out", tmp_path / "o") == 0
    assert f"rows of {SRC} (a transcoder into {TGT}) with {M} latents" in capsys.readouterr().out
    write(tmp_path / "no_tgt", {SRC: DS})
    assert cli("--store", tmp_path / "no_tgt", "--sae", folder, "--jobs", "stats", "--out", tmp_path / "p") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("actstore: ") and f"lacks '{TGT}'" in err and "capture both hooks" in err, err
