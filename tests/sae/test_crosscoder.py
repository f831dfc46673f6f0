"""Crosscoders: Anthropic's loss (L1 weighted by the sum of per-block decoder norms) by
hand, per-block scale folding, training over K hooks of one store and over one hook of two
stores (each block's held-out FVU checked on the raw rows), the token check of two stores
(one line naming the first row that differs), and exact resume after SIGKILL with two stores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import actstore
from actstore.errors import SAEError
from actstore.sae import TrainConfig, load, train
from actstore.sae.config import SAEConfig
from actstore.sae.registry import build
from helpers import layer_store, train_kill

K, DH, M = 3, 8, 40


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("cc")
    one = layer_store.build(root / "layers")
    a, b = layer_store.build_pair(root / "pair")
    return one, a, b


def _cc(act, seed=0):
    cc = build(SAEConfig("crosscoder", K * DH, M, k=5, activation=act, sources=["a", "b", "c"]), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in cc.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return cc


def test_relu_loss_weights_each_latent_by_the_sum_of_its_block_decoder_norms():
    cc = _cc("relu")
    x = torch.randn(30, K * DH, generator=torch.Generator().manual_seed(2))
    res = cc.loss(x)
    f = torch.relu((x - cc.b_dec) @ cc.W_enc.T + cc.b_enc)
    x_hat = f @ cc.W_dec + cc.b_dec
    norms = cc.W_dec.view(M, K, DH).norm(dim=2).sum(1)  # sum_k ||W_dec,i^k||, not ||W_dec,i||
    l1 = (f * norms).sum(1).mean()
    mse = (x_hat - x).pow(2).sum(1).mean()
    assert float(res["l1"].detach()) == pytest.approx(float(l1.detach()), rel=1e-5)
    assert float(res["loss"].detach()) == pytest.approx(float(mse + cc.cfg.l1_coef * l1), rel=1e-5)
    assert float(l1) > float((f * cc.W_dec.norm(dim=1)).sum(1).mean())  # the sum of norms exceeds the norm
    torch.testing.assert_close(cc.block_norms(), cc.W_dec.detach().view(M, K, DH).norm(dim=2))


@pytest.mark.parametrize("act", ["topk", "batchtopk", "relu"])
def test_folding_each_blocks_scale_gives_the_same_reconstruction_on_raw_rows(act):
    cc = _cc(act).eval()
    if act == "batchtopk":
        cc.threshold.fill_(0.05)
    scales = [0.5, 2.0, 4.0]
    cc.cfg.source_scales = list(scales)
    raw = torch.randn(20, K * DH, generator=torch.Generator().manual_seed(3))
    cols = torch.tensor(scales).repeat_interleave(DH)
    with torch.no_grad():
        want = cc(raw * cols) / cols  # what training saw, brought back to the raw scale
        cc.fold_scale()
        got = cc(raw)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert cc.cfg.source_scales == [1.0] * K


def _raw_block_fvu(stores_and_hooks, cc, rows):
    """Each block's FVU of the saved crosscoder on the raw held-out rows."""
    blocks = [st.read(h, slice(st.rows - rows, st.rows)).double() for st, h in stores_and_hooks]
    x = torch.cat(blocks, 1)
    with torch.no_grad():
        x_hat = cc.double().eval()(x)
    w = blocks[0].shape[1]
    out = []
    for i in range(len(blocks)):
        sl = slice(i * w, (i + 1) * w)
        out.append(float((x_hat[:, sl] - x[:, sl]).pow(2).sum() / (x[:, sl] - x[:, sl].mean(0)).pow(2).sum()))
    return out


def _train(out, **kw):
    opts = dict(latents=64, tokens=32 * 40, batch_size=32, lr=3e-3, warmup_steps=5, log_every=10)
    opts.update(checkpoint_every=20, buffer_rows=256, eval_rows=320)
    return train(arch="crosscoder", out=str(out), progress=False, **{**opts, **kw})


@pytest.mark.parametrize("act", ["topk", "relu"])
def test_a_crosscoder_over_the_layers_of_one_store_reports_each_hooks_fvu(stores, tmp_path, act):
    one = stores[0]
    s = _train(tmp_path / "o", store=one.path, hooks="model.layers.*.mlp", activation=act,
               k=6 if act == "topk" else None, sae={"l1_coef": 0.05} if act == "relu" else {})  # fmt: skip
    hooks = [f"model.layers.{i}.mlp" for i in range(3)]
    ev = s["eval"]
    assert list(ev["block_fvu"]) == hooks and s["source"] == hooks
    cc = load(tmp_path / "o" / "sae")
    assert cc.cfg.sources == hooks and cc.cfg.d == 3 * 16 and cc.cfg.source_scales == [1.0] * 3
    got = _raw_block_fvu([(one, h) for h in hooks], cc, ev["rows"])
    assert got == pytest.approx(list(ev["block_fvu"].values()), rel=1e-4)
    assert 0 < ev["fvu"] < 0.95


def test_a_crosscoder_over_two_models_normalizes_each_and_labels_the_blocks(stores, tmp_path):
    _, a, b = stores
    s = _train(tmp_path / "o", store=a.path, paired_store=str(b.path), hooks="model.layers.1.mlp", k=6)
    ev = s["eval"]
    assert list(ev["block_fvu"]) == ["base:model.layers.1.mlp", "chat:model.layers.1.mlp"]
    cc = load(tmp_path / "o" / "sae")
    h = "model.layers.1.mlp"
    got = _raw_block_fvu([(a, h), (b, h)], cc, ev["rows"])
    assert got == pytest.approx(list(ev["block_fvu"].values()), rel=1e-4)
    norms = cc.block_norms()
    assert norms.shape == (64, 2) and bool((norms > 0).all())


def test_two_stores_with_different_tokens_are_refused_naming_the_first_row(stores, tmp_path):
    _, a, _ = stores
    tok = np.arange(layer_store.ROWS, dtype=np.int64)
    tok[517] += 5  # one token differs
    acts = layer_store.activations(tok, 2, 1)
    with actstore.create(tmp_path / "c", {h: layer_store.D for h in acts}, dtype="fp32", durable=False) as w:
        w.append(acts, tokens=tok, doc=tok // 40, pos=tok % 40)
        w.commit()
    cfg = TrainConfig(store=a.path, paired_store=str(tmp_path / "c"), arch="crosscoder", hooks="model.layers.1.mlp",
                      latents=16, k=2, tokens=64, out=str(tmp_path / "o"))  # fmt: skip
    with pytest.raises(SAEError, match=r"row 517 is token 517 in .* and 522 in") as e:
        train(cfg, progress=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"hooks": "model.layers.1.mlp"}, "K >= 2 hooks"),
        ({"hooks": "model.layers.*.attn"}, "names no hook of the store"),
        ({"hook": "model.layers.1.mlp"}, "reads --hooks"),
    ],
)
def test_crosscoder_hook_errors_are_one_line(stores, tmp_path, kw, msg):
    with pytest.raises(SAEError, match=msg) as e:
        train(
            store=stores[0].path, arch="crosscoder", latents=16, k=2, tokens=64, out=str(tmp_path), progress=False, **kw
        )
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_two_model_crosscoder_killed_mid_run_resumes_to_the_same_weights(stores, tmp_path):
    _, a, b = stores
    env = {"TRAIN_RUN_PAIRED": str(b.path)}
    stops = ["step:5", "written:9", "ckpt:30"]
    run = train_kill.kill_and_resume(a.path, tmp_path, "crosscoder:batchtopk", 30, stops, env)
    ck = json.loads((run / "latest.json").read_text())["checkpoint"]
    assert (run / ck / "loader-b-rank0.json").exists()  # the second store's position is kept too


def test_open_stores_given_as_objects_checkpoint_and_resume(stores, tmp_path):
    """``train(store=<Store>, paired_store=<Store>)``: the checkpoint records their paths
    (the config once deep-copied the open stores and failed at the first checkpoint)."""
    _, a, b = stores
    kw = dict(store=a, paired_store=b, hooks="model.layers.1.mlp", k=4, checkpoint_every=5)
    first = _train(tmp_path / "o", **{**kw, "tokens": 32 * 10})
    doc = json.loads((tmp_path / "o" / "latest.json").read_text())
    assert doc["train_config"]["store"] == str(a.path) and doc["train_config"]["paired_store"] == str(b.path)
    assert first["steps"] == 10
