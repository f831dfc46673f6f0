"""The SAE spliced into a real (tiny, from config) Llama: windows from stored rows, an SAE
that reconstructs exactly costs no loss, one that outputs zeros costs the zero-ablation
loss, and `train(eval_model=...)` reports it on the held-out tokens. Transcoders replace
the MLP they stand in for: in a Llama whose layer-0 MLP is affine, a skip transcoder
holding that map reproduces it (no loss), fed from the MLP's input or from the norm before
it; a source after its target is a one-line error; `train` reports a transcoder's splice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import actstore
from actstore.errors import ModelError, SAEError
from actstore.sae import SAEConfig, load, train
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
    exact = lm_loss_increase(llama, _identity_sae(), windows, hook=HOOK, batch=3)
    assert exact["tokens"] == sum(w.size - 1 for w in windows)
    assert abs(exact["increase"]) < 1e-4 and exact["recovered"] == pytest.approx(1.0, abs=1e-3)
    assert exact["zero_ablation"] != pytest.approx(exact["clean"], abs=1e-3)  # the layer matters
    zero = _identity_sae()
    with torch.no_grad():
        zero.W_dec.zero_()
    z = lm_loss_increase(llama, zero, windows, hook=HOOK)
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


# -- transcoders --------------------------------------------------------------------------------

MLP_IN, MLP_OUT = "model.layers.0.mlp:input", "model.layers.0.mlp"


@pytest.fixture(scope="module")
def affine_llama(tmp_path_factory):
    """A Llama whose layer-0 MLP is affine: ``down(act(gate x + 1) * up(x))`` with ``gate``
    zero and ``act`` the identity is ``W_d (W_u x + b_u) + b_d``; returns (folder, A, b)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, hidden_act="linear", mlp_bias=True, initializer_range=0.2,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.gate_proj.weight.zero_()
        mlp.gate_proj.bias.fill_(1.0)
        for lin in (mlp.up_proj, mlp.down_proj):
            lin.bias.normal_(std=0.2)
    a = mlp.down_proj.weight @ mlp.up_proj.weight
    b = mlp.down_proj.weight @ mlp.up_proj.bias + mlp.down_proj.bias
    path = tmp_path_factory.mktemp("affine") / "m"
    model.save_pretrained(path)
    x = torch.randn(5, D)
    assert torch.allclose(mlp(x), x @ a.T + b, atol=1e-5)  # the MLP is this map
    return str(path), a.detach(), b.detach()


def _skip_transcoder(source, a, b, m=8):
    """A skip transcoder whose dictionary adds nothing (W_dec 0) and whose skip holds ``x -> x A^T + b``."""
    cfg = SAEConfig("skip_transcoder", D, m, k=2, hook=source, target=MLP_OUT, d_out=D, activation="topk")
    sae = build(cfg, seed=0)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.W_skip.copy_(a)
        sae.b_dec.copy_(b)
    return sae


WINDOWS = [np.random.default_rng(10 + i).integers(1, VOCAB, size=n) for i, n in enumerate([24, 9, 17])]


@pytest.mark.parametrize("source", [MLP_IN, "model.layers.0.post_attention_layernorm"])
def test_a_transcoder_that_reproduces_the_mlp_costs_nothing(affine_llama, source):
    path, a, b = affine_llama
    r = lm_loss_increase(path, _skip_transcoder(source, a, b), WINDOWS, batch=2)
    assert (r["source"], r["target"]) == (source, MLP_OUT)
    assert r["tokens"] == sum(w.size - 1 for w in WINDOWS)
    assert abs(r["zero_ablation"] - r["clean"]) > 0.05  # zeroing the MLP's output matters (a random model: either way)
    assert abs(r["increase"]) < 1e-4 and r["recovered"] == pytest.approx(1.0, abs=1e-3)


def test_a_transcoder_that_outputs_zeros_costs_the_ablation(affine_llama):
    path, a, b = affine_llama
    sae = _skip_transcoder(MLP_IN, torch.zeros_like(a), torch.zeros_like(b))
    r = lm_loss_increase(path, sae, WINDOWS)
    assert r["spliced"] == pytest.approx(r["zero_ablation"], rel=1e-6) and r["recovered"] == pytest.approx(0, abs=1e-4)
    # another map moves the loss (the skip's matrix transposed is not the MLP)
    other = lm_loss_increase(path, _skip_transcoder(MLP_IN, a.T, b), WINDOWS)
    assert abs(other["increase"]) > 0.01 and other["clean"] == pytest.approx(r["clean"])


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_a_source_after_its_target_is_one_line(affine_llama):
    from transformers import LlamaForCausalLM

    path, a, b = affine_llama
    model = LlamaForCausalLM.from_pretrained(path).eval()
    model(torch.ones(1, 2, dtype=torch.long))  # transformers adds its own hooks on a first forward
    before = _hooks(model)
    sae = _skip_transcoder("model.layers.1.mlp:input", a, b)
    with pytest.raises(SAEError) as e:
        lm_loss_increase(model, sae, WINDOWS)
    msg = str(e.value)
    assert "\n" not in msg and "model.layers.1.mlp:input" in msg and repr(MLP_OUT) in msg and "before" in msg
    sae.cfg.target = "model.layers.0.nope"
    with pytest.raises(ModelError, match="unknown hook 'model.layers.0.nope'"):
        lm_loss_increase(model, sae, WINDOWS)
    assert _hooks(model) == before  # the tap and the edit are gone after either failure
    with pytest.raises(SAEError, match="leave hook= out"):
        lm_loss_increase(path, _skip_transcoder(MLP_IN, a, b), WINDOWS, hook="model.layers.1")


@pytest.mark.slow
def test_train_reports_a_transcoder_spliced_in_place_of_the_mlp(llama, tmp_path):
    ids = np.random.default_rng(1).integers(1, VOCAB, size=(40, 32)).astype(np.int64)
    actstore.capture(llama, [MLP_IN, MLP_OUT], ids, str(tmp_path / "s"), context=32, batch_size=8, dtype="fp32",
                     progress=False)  # fmt: skip
    s = train(
        store=str(tmp_path / "s"),
        source=MLP_IN,
        target=MLP_OUT,
        arch="skip_transcoder",
        latents=64,
        k=8,
        tokens=64 * 30,
        batch_size=64,
        lr=3e-3,
        eval_rows=256,
        eval_model=llama,
        out=str(tmp_path / "o"),
        progress=False,
    )
    em = s["eval_model"]
    assert (em["source"], em["target"]) == (MLP_IN, MLP_OUT)
    assert em["tokens"] == 248 and em["windows"] == 8  # 8 windows of 32, 31 predictions each
    assert all(np.isfinite(em[k]) for k in ("clean", "spliced", "zero_ablation", "increase", "recovered"))
    assert em["clean"] < em["zero_ablation"]
    # the same figures from the saved transcoder and the held-out windows, outside the trainer
    cols = {k: v.numpy() for k, v in actstore.open(str(tmp_path / "s")).tokens(slice(40 * 32 - 256, None)).items()}
    again = lm_loss_increase(llama, load(tmp_path / "o" / "sae"), windows_from_rows(cols["token"], cols["doc"],
                             cols["pos"], 32))  # fmt: skip
    assert again["spliced"] == pytest.approx(em["spliced"], rel=1e-6)
