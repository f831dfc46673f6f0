"""``lens``: the logit lens agrees with a dense ``(W_dec * gain) @ W_U^T``; the outlier and
unseen masks; a model whose vocabulary misses the store's token ids is a one-line error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import actstore.analysis as an
from actstore.analysis import AnalysisError
from actstore.analysis.lens import logit_lens
from helpers.analysis_store import BLOCK


def llama(vocab=64, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.model.norm.weight.copy_(torch.rand(16) * 2 + 0.1)  # a gain that matters
    return m


def gpt2(vocab=64, seed=0):
    torch.manual_seed(seed)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=64)).eval()
    with torch.no_grad():
        m.transformer.ln_f.weight.copy_(torch.rand(16) * 2 + 0.1)
    return m


def dense(sae, w_u, gain):
    w = sae.W_dec.detach().double().numpy()
    return (w * gain.detach().double().numpy()) @ w_u.detach().double().numpy().T  # [m, V]


@pytest.mark.parametrize("make, norm", [(llama, "model.norm"), (gpt2, "transformer.ln_f")])
def test_lens_agrees_with_dense(planted, relu, tmp_path, make, norm):
    path, _ = planted
    model = make()
    out = an.run(path, relu, {"stats": {}, "lens": {"t": 5}}, tmp_path / "o", model=model, block_rows=BLOCK)
    a = an.open(out)
    want = dense(relu, model.get_output_embeddings().weight, model.get_submodule(norm).weight)
    order = np.argsort(-want, axis=1, kind="stable")
    assert (a.array("lens/top_ids") == order[:, :5]).all()
    assert (a.array("lens/bottom_ids") == order[:, ::-1][:, :5]).all()
    np.testing.assert_allclose(a.array("lens/top_values"), np.take_along_axis(want, order[:, :5], 1), rtol=1e-4,
                               atol=1e-4)  # fmt: skip
    np.testing.assert_allclose(a.array("lens/bottom_values"), np.sort(want, axis=1)[:, :5], rtol=1e-4, atol=1e-4)
    assert a.attrs["model"]["name"] == type(model).__name__ and len(a.attrs["model"]["hash"]) == 64
    assert a.attrs["jobs"]["lens"] == {"t": 5, "outlier_z": 0.0, "unseen": False}


def test_blocks_of_latents_give_the_same_lists(relu):
    model = llama()
    w_u, g = model.lm_head.weight, model.model.norm.weight
    whole = logit_lens(relu.W_dec.detach(), w_u, g, 7)
    small = logit_lens(relu.W_dec.detach(), w_u, g, 7, block_bytes=4 * 64 * 5)  # 5 latents per block
    for k in whole:  # ids equal; values to GEMM rounding (the block's row count changes the kernel)
        np.testing.assert_allclose(whole[k], small[k], rtol=1e-6, atol=1e-6, err_msg=k)


def test_masks(planted, relu, tmp_path):
    path, cols = planted
    model = llama()
    with torch.no_grad():
        model.lm_head.weight[[3, 7]] *= 100.0  # outlier norms: they would top every list
    out = an.run(path, relu, {"lens": {"t": 6, "outlier_z": 5, "unseen": True}}, tmp_path / "o", model=model,
                 rows=(0, 40), block_rows=BLOCK)  # fmt: skip
    a = an.open(out)
    seen = set(cols["token"][:40].tolist())
    want = {3, 7} | (set(range(64)) - seen)
    assert set(np.flatnonzero(a.array("lens/masked")).tolist()) == want
    for k in ("top_ids", "bottom_ids"):
        ids = a.array(f"lens/{k}")
        assert not (set(ids.ravel().tolist()) & want) and (ids >= 0).all()
    unmasked = an.run(path, relu, {"lens": {"t": 6}}, tmp_path / "u", model=model, rows=(0, 40), block_rows=BLOCK)
    top = an.open(unmasked).array("lens/top_ids")
    assert np.isin(top[:, 0], [3, 7]).mean() > 0.5  # without the mask the outliers dominate


def test_vocabulary_not_covering_the_store_is_one_line(planted, relu, tmp_path):
    path, _ = planted
    with pytest.raises(AnalysisError) as e:
        an.run(path, relu, ["stats", "lens"], tmp_path / "o", model=gpt2(vocab=40), block_rows=BLOCK)
    msg = str(e.value)
    assert "\n" not in msg and "vocabulary has 40 tokens" in msg and "token id 49" in msg
    assert not (tmp_path / "o").exists()
    with pytest.raises(AnalysisError) as e:
        an.run(path, relu, ["lens"], tmp_path / "o")
    assert "pass model=" in str(e.value)
    with pytest.raises(AnalysisError) as e:
        an.run(path, relu, {"lens": {"top": 3}}, tmp_path / "o", model=llama())
    assert "lens takes t, outlier_z, unseen" in str(e.value)


def test_model_from_a_folder(planted, relu, tmp_path):
    path, _ = planted
    model = llama()
    model.save_pretrained(tmp_path / "m")
    out = an.run(path, relu, ["lens"], tmp_path / "o", model=tmp_path / "m", block_rows=BLOCK)
    ref = an.run(path, relu, ["lens"], tmp_path / "r", model=model, block_rows=BLOCK)
    a, b = an.open(out), an.open(ref)
    assert (a.array("lens/top_ids") == b.array("lens/top_ids")).all()
