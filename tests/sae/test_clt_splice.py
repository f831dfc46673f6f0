"""A cross-layer transcoder spliced into a real (tiny, from config) Llama as the replacement
model: every layer's MLP output replaced in one forward, from the codes of that layer and
every earlier one. In a Llama whose MLPs are all affine, a skip CLT holding those maps
reproduces the model (no loss); a CLT with decoders across layers gives the loss of the same
replacement written by hand with plain torch hooks; a target before its source and a hook
the model lacks are one-line errors; `train(arch="clt", eval_model=...)` reports the splice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import actstore
from actstore.errors import SAEError
from actstore.sae import SAEConfig, load, train
from actstore.sae.registry import build
from actstore.sae.splice import lm_loss_increase, windows_from_rows

D, VOCAB, M = 32, 97, 16
WINDOWS = [np.random.default_rng(20 + i).integers(1, VOCAB, size=n) for i, n in enumerate([24, 9, 17])]


def _ins(layers: int) -> list[str]:
    return [f"model.layers.{i}.mlp:input" for i in range(layers)]


def _outs(layers: int) -> list[str]:
    return [f"model.layers.{i}.mlp" for i in range(layers)]


def _llama(layers: int, seed: int, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, **kw,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def affine_llama():
    """A 2-layer Llama whose every MLP is affine (``gate`` zero with bias 1, ``act`` the
    identity: ``W_d (W_u x + b_u) + b_d``); returns (model, [A_l], [b_l])."""
    model = _llama(2, 1, hidden_act="linear", mlp_bias=True, initializer_range=0.2)
    maps, biases = [], []
    with torch.no_grad():
        for layer in model.model.layers:
            mlp = layer.mlp
            mlp.gate_proj.weight.zero_()
            mlp.gate_proj.bias.fill_(1.0)
            for lin in (mlp.up_proj, mlp.down_proj):
                lin.bias.normal_(std=0.2)
            maps.append(mlp.down_proj.weight @ mlp.up_proj.weight)
            biases.append(mlp.down_proj.weight @ mlp.up_proj.bias + mlp.down_proj.bias)
            x = torch.randn(5, D)
            assert torch.allclose(mlp(x), x @ maps[-1].T + biases[-1], atol=1e-5)  # the MLP is this map
    return model, maps, biases


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    """A random 3-layer Llama (weights large enough that its MLPs move the loss), saved: (model, folder)."""
    model = _llama(3, 0, initializer_range=0.2)
    path = tmp_path_factory.mktemp("llama3") / "m"
    model.save_pretrained(path)
    return model, str(path)


def _clt(arch: str, layers: int, activation: str = "topk", **kw):
    cfg = SAEConfig(arch, D, M, k=4, d_out=D, activation=activation, sources=_ins(layers), targets=_outs(layers), **kw)
    return build(cfg, seed=0)


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_a_skip_clt_that_reproduces_every_mlp_costs_nothing(affine_llama):
    model, maps, biases = affine_llama
    clt = _clt("skip_clt", 2)
    with torch.no_grad():  # decoders stay zero: the skip maps alone are the MLPs
        clt.W_skip.copy_(torch.stack(maps))
        clt.b_dec.copy_(torch.stack(biases))
    r = lm_loss_increase(model, clt, WINDOWS, batch=2)
    assert (r["source"], r["target"]) == (_ins(2), _outs(2))
    assert r["tokens"] == sum(w.size - 1 for w in WINDOWS) and r["windows"] == len(WINDOWS)
    assert abs(r["zero_ablation"] - r["clean"]) > 0.05  # zeroing the MLPs matters
    assert r["spliced"] == pytest.approx(r["clean"], abs=1e-6) and r["recovered"] == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():  # a CLT that writes zeros is the zero ablation
        clt.W_skip.zero_()
        clt.b_dec.zero_()
    z = lm_loss_increase(model, clt, WINDOWS)
    assert z["spliced"] == pytest.approx(z["zero_ablation"], rel=1e-6) and z["clean"] == pytest.approx(r["clean"])


def _reference_loss(model, clt, windows) -> float:
    """The replacement model by hand: a pre-hook on each MLP keeps its dense code, a hook
    replaces its output by ``sum_{s <= t} a_s W_dec[t][s*m:(s+1)*m] + b_dec[t] (+ W_skip x_t)``."""
    L, k = clt.n_layers, clt.cfg.k
    codes, xs = [None] * L, [None] * L

    def encode(s, x):
        pre = x @ clt.W_enc[s].T + clt.b_enc[s]
        if clt.act == "topk":
            v, i = pre.topk(k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, i, v.relu())
        return pre * (pre > clt.log_threshold[s].exp())  # jumprelu

    def pre_hook(s):
        def fn(_mod, args):
            xs[s] = args[0]
            codes[s] = encode(s, args[0])

        return fn

    def post_hook(t):
        def fn(_mod, _args, _out):
            y = sum(codes[s] @ clt.W_dec[t][s * M : (s + 1) * M] for s in range(t + 1)) + clt.b_dec[t]
            return y + xs[t] @ clt.W_skip[t].T if clt.W_skip is not None else y

        return fn

    handles = []
    for i, layer in enumerate(model.model.layers):
        handles += [layer.mlp.register_forward_pre_hook(pre_hook(i)), layer.mlp.register_forward_hook(post_hook(i))]
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for w in windows:  # one window per forward: no padding
                ids = torch.from_numpy(w)[None]
                lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
                total -= float(lp.gather(-1, ids[0, 1:, None]).sum())
                count += w.size - 1
    finally:
        for h in handles:
            h.remove()
    return total / count


@pytest.mark.parametrize("arch,activation", [("clt", "topk"), ("skip_clt", "jumprelu")])
def test_a_clt_with_decoders_across_layers_matches_the_replacement_by_hand(llama3, arch, activation):
    model, _ = llama3
    clt = _clt(arch, 3, activation)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for w in clt.W_dec:  # every s -> t block non-zero
            w.copy_(torch.randn(w.shape, generator=g) * 2.0)
        clt.b_dec.copy_(torch.randn(clt.b_dec.shape, generator=g) * 0.1)
        if clt.W_skip is not None:
            clt.W_skip.copy_(torch.randn(clt.W_skip.shape, generator=g) * 0.05)
            clt.log_threshold.fill_(math.log(0.05))
    r = lm_loss_increase(model, clt, WINDOWS, batch=2)
    ref = _reference_loss(model, clt, WINDOWS)
    assert r["spliced"] == pytest.approx(ref, rel=1e-5)
    # the comparison means something: the replacement moves the loss, and so do its cross-layer blocks
    with torch.no_grad():
        for t, w in enumerate(clt.W_dec):
            w[: t * M].zero_()
    assert abs(r["spliced"] - r["clean"]) > 1e-3 and abs(_reference_loss(model, clt, WINDOWS) - ref) > 1e-3


def test_a_target_before_its_source_or_a_missing_hook_is_one_line(llama3):
    model, _ = llama3
    model(torch.ones(1, 2, dtype=torch.long))  # transformers adds its own hooks on a first forward
    before = _hooks(model)
    swapped = build(SAEConfig("clt", D, M, k=4, d_out=D, activation="topk", sources=_outs(3), targets=_ins(3)))
    with pytest.raises(SAEError) as e:
        lm_loss_increase(model, swapped, WINDOWS)
    msg = str(e.value)
    assert "\n" not in msg and "'model.layers.0.mlp:input' ran before its source 'model.layers.0.mlp'" in msg
    lost = build(SAEConfig("clt", D, M, k=4, d_out=D, activation="topk", sources=_ins(3),
                           targets=[*_outs(2), "model.layers.7.mlp"]))  # fmt: skip
    with pytest.raises(SAEError) as e:
        lm_loss_increase(model, lost, WINDOWS)
    assert "\n" not in str(e.value) and "lacks the CLT's target 'model.layers.7.mlp'" in str(e.value)
    assert _hooks(model) == before  # the taps and edits are gone after either failure
    with pytest.raises(SAEError, match="leave hook= out"):
        lm_loss_increase(model, _clt("clt", 3), WINDOWS, hook="model.layers.*.mlp:input")


@pytest.mark.slow
def test_train_reports_a_clt_spliced_in_place_of_every_mlp(llama3, tmp_path):
    _, path = llama3
    ids = np.random.default_rng(2).integers(1, VOCAB, size=(40, 32)).astype(np.int64)
    actstore.capture(path, ["model.layers.*.mlp:input", "model.layers.*.mlp"], ids, str(tmp_path / "s"), context=32,
                     batch_size=8, dtype="fp32", progress=False)  # fmt: skip
    s = train(
        store=str(tmp_path / "s"),
        source="model.layers.*.mlp:input",
        target="model.layers.*.mlp",
        arch="clt",
        latents=32,
        k=4,
        tokens=64 * 20,
        batch_size=64,
        lr=3e-3,
        eval_rows=256,
        eval_model=path,
        out=str(tmp_path / "o"),
        progress=False,
    )
    em = s["eval_model"]
    assert em["model"] == path and (em["source"], em["target"]) == (_ins(3), _outs(3))
    assert em["tokens"] == 248 and em["windows"] == 8  # 8 windows of 32, 31 predictions each
    assert all(np.isfinite(em[k]) for k in ("clean", "spliced", "zero_ablation", "increase", "recovered"))
    assert em["clean"] < em["zero_ablation"]
    # the same figure from the saved CLT and the held-out windows, outside the trainer
    cols = {k: v.numpy() for k, v in actstore.open(str(tmp_path / "s")).tokens(slice(40 * 32 - 256, None)).items()}
    again = lm_loss_increase(path, load(tmp_path / "o" / "sae"), windows_from_rows(cols["token"], cols["doc"],
                             cols["pos"], 32))  # fmt: skip
    assert again["spliced"] == pytest.approx(em["spliced"], rel=1e-6)
