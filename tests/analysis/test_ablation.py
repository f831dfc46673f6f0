"""``ablation``: deleting a token after the example changes nothing (causal model); each
delta equals a hand computation with unbatched forwards through HF's hidden states."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import actstore
import actstore.analysis as an
from actstore.analysis import AnalysisError
from actstore.analysis.ablation import Forward
from actstore.models import prepare_model
from actstore.sae import ReLUSAE, SAEConfig

HOOK, D, VOCAB = "model.layers.0", 16, 40


def llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(50.0)  # activations of order 1
        m.model.layers[0].self_attn.o_proj.weight.mul_(50.0)  # earlier tokens matter as much as the token
    return m


def layer0(model, ids: list[int]) -> torch.Tensor:
    """``[len, D]``: the output of layer 0 for one unpadded sequence, through HF's hidden states."""
    with torch.no_grad():
        return model(torch.tensor([ids]), output_hidden_states=True).hidden_states[1][0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = llama()
    g = np.random.default_rng(3)
    docs = [g.integers(0, VOCAB, int(g.integers(4, 14))).tolist() for _ in range(12)]
    path = tmp_path_factory.mktemp("s") / "s"
    with actstore.create(path, {HOOK: D}, segment="a", dtype="fp32", codec="none") as w:
        for i, doc in enumerate(docs):
            n = len(doc)
            w.append({HOOK: layer0(model, doc)}, tokens=np.array(doc, np.int32), doc=np.full(n, i, np.int64),
                     pos=np.arange(n, dtype=np.int32), flags=np.zeros(n, np.uint8))  # fmt: skip
    sae = ReLUSAE(SAEConfig("relu", D, 6, hook=HOOK), seed=1)
    with torch.no_grad():
        sae.W_enc.mul_(3.0)
    return model, sae, path, docs


def test_deleting_a_later_token_changes_nothing(setup):
    model, sae, _, docs = setup
    fwd = Forward(prepare_model(model, device=torch.device("cpu")), HOOK, sae, batch=4)
    seq, t = docs[0][:10] + [1, 2, 3], 5
    seqs = [seq] + [seq[:j] + seq[j + 1 :] for j in range(t + 1, len(seq))] + [seq[:2] + seq[3:]]
    lats = [int(np.argmax(sae.encode(layer0(model, seq)[t : t + 1], dense=True).detach().numpy()))] * len(seqs)
    targets = [t] * (len(seqs) - 1) + [t - 1]
    v = fwd(seqs, targets, lats)
    fwd.close()
    assert v[0] > 0
    np.testing.assert_allclose(v[1:-1], v[0], rtol=1e-5, atol=1e-6)  # later tokens: no change
    assert abs(v[-1] - v[0]) > 1e-3  # an earlier one does change it (1000x the tolerance above)


def test_ablation_by_hand(setup, tmp_path):
    model, sae, path, docs = setup
    jobs = {"top": {"k": 4}, "ablation": {"examples": 2, "tokens": 3, "batch": 5}}
    a = an.open(an.run(path, sae, jobs, tmp_path / "o", model=model, block_rows=32))
    rows, base, delta, toks = (a.array(f"ablation/{k}") for k in ("rows", "base", "delta", "tokens"))
    assert rows.shape == (6, 2) and delta.shape == (6, 2, 3) and toks.shape == (6, 2, 4)
    assert (rows == a.array("top/rows")[:, :2]).all()
    flat_tok = np.concatenate(docs)
    flat_doc = np.concatenate([[i] * len(d) for i, d in enumerate(docs)])
    checked = 0
    for lat, e in np.ndindex(rows.shape):
        r = rows[lat, e]
        if r < 0:
            assert (toks[lat, e] == -1).all() and np.isnan(delta[lat, e]).all()
            continue
        lo = max(r - 3, int(np.flatnonzero(flat_doc == flat_doc[r])[0]))
        prefix = flat_tok[lo : r + 1].tolist()
        assert toks[lat, e, 4 - len(prefix) :].tolist() == prefix and (toks[lat, e, : 4 - len(prefix)] == -1).all()

        def act(ids, lat=lat):
            f = sae.encode(layer0(model, ids)[-1:], dense=True).detach().numpy()[0, lat]
            return max(float(f), 0.0)

        a0 = act(prefix)
        assert base[lat, e] == pytest.approx(a0, abs=1e-5)
        for j in range(len(prefix) - 1):
            col = 3 + j - (len(prefix) - 1)
            assert delta[lat, e, col] == pytest.approx(act(prefix[:j] + prefix[j + 1 :]) - a0, abs=1e-5)
        assert np.isnan(delta[lat, e, : 3 - (len(prefix) - 1)]).all()
        checked += 1
    assert checked >= 8


def test_ablation_errors(setup, tmp_path):
    model, sae, path, _ = setup
    with pytest.raises(AnalysisError) as e:
        an.run(path, sae, ["stats", "ablation"], tmp_path / "o", model=model)
    assert "add top" in str(e.value)
    with pytest.raises(AnalysisError) as e:
        an.run(path, sae, {"top": {}, "ablation": {"latents": [99]}}, tmp_path / "o", model=model)
    assert "unknown latent(s) [99]" in str(e.value) and "\n" not in str(e.value)
    other = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=D, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(actstore.errors.ActstoreError) as e:  # the model has no module model.layers.0
        an.run(path, sae, ["top", "ablation"], tmp_path / "p", model=other)
    assert "unknown hook 'model.layers.0'" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "p").exists()
