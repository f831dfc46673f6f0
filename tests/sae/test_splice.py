"""The SAE spliced into a real (tiny, from config) Llama: windows from stored rows, an SAE
that reconstructs exactly costs no loss, one that outputs zeros costs the zero-ablation
loss, and `train(eval_model=...)` reports it on the held-out tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import actstore
from actstore.sae import SAEConfig, train
from actstore.sae.registry import build
from actstore.sae.splice import lm_loss_increase, windows_from_rows

D, VOCAB, HOOK = 32, 97, "model.layers.0"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    path = tmp_path_factory.mktemp("llama") / "m"
    LlamaForCausalLM(cfg).eval().save_pretrained(path)
    return str(path)


def _identity_sae():
    """TopK with m = 2d, k = d, W = [I; -I]: encode keeps relu(x) and relu(-x), decode gives x back."""
    sae = build(SAEConfig("topk", D, 2 * D, k=D, normalize_decoder=False), seed=0)
    eye = torch.eye(D)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_windows_follow_documents_positions_and_context():
    token = np.arange(10)
    doc = np.array([0, 0, 0, 0, 0, 1, 1, 1, 2, 2])
    pos = np.array([0, 1, 2, 3, 4, 0, 1, 5, 0, 1])  # doc 1 jumps from position 1 to 5
    got = windows_from_rows(token, doc, pos, context=3)
    assert [w.tolist() for w in got] == [[0, 1, 2], [3, 4], [5, 6], [8, 9]]  # [7] alone predicts nothing


def test_an_exact_sae_costs_nothing_and_a_zero_sae_costs_the_ablation(llama):
    windows = [np.random.default_rng(i).integers(1, VOCAB, size=n) for i, n in enumerate([20, 33, 7, 16])]
    exact = lm_loss_increase(llama, _identity_sae(), HOOK, windows, batch=3)
    assert exact["tokens"] == sum(w.size - 1 for w in windows)
    assert abs(exact["increase"]) < 1e-4 and exact["recovered"] == pytest.approx(1.0, abs=1e-3)
    assert exact["zero_ablation"] != pytest.approx(exact["clean"], abs=1e-3)  # the layer matters
    zero = _identity_sae()
    with torch.no_grad():
        zero.W_dec.zero_()
    z = lm_loss_increase(llama, zero, HOOK, windows)
    assert z["spliced"] == pytest.approx(z["zero_ablation"], rel=1e-5) and z["recovered"] == pytest.approx(0, abs=1e-4)


@pytest.mark.slow
def test_train_reports_the_loss_increase_on_the_held_out_tokens(llama, tmp_path):
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(60, 32)).astype(np.int64)
    actstore.capture(llama, HOOK, ids, str(tmp_path / "s"), context=32, batch_size=8, dtype="fp32", progress=False)
    s = train(
        store=str(tmp_path / "s"),
        hook=HOOK,
        arch="topk",
        latents=64,
        k=8,
        tokens=64 * 40,
        batch_size=64,
        lr=3e-3,
        eval_rows=320,
        eval_model=llama,
        out=str(tmp_path / "o"),
        progress=False,
    )
    em = s["eval_model"]
    assert em["model"] == llama and em["tokens"] == 310 and em["windows"] == 10  # 10 windows of 32, 31 predictions each
    assert all(np.isfinite(em[k]) for k in ("clean", "spliced", "zero_ablation", "increase"))
    log = [json.loads(ln) for ln in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["eval_model"] == em and json.loads((tmp_path / "o" / "summary.json").read_text())["eval_model"] == em
