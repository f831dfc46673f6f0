"""Capture records where each hook sits relative to a normalization (provenance ``hooks``,
``Store.hook_norm``), found in a forward: a tiny HF Llama and tiny TransformerLens models
built from configs, a model without norms, an older store, and a detection that fails."""

from __future__ import annotations

import pytest
import torch

import actstore
from actstore.cli.info import format_info
from actstore.store.errors import UnknownHookError
from helpers.capture_models import TinyLM, token_array

UNKNOWN = {"norm": None, "norm_module": None, "norm_gain_folded": None, "norm_gain_applied": None}
OPTS = {"context": 8, "batch_size": 4, "tokens": 64, "dtype": "fp32", "progress": False}


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a gain that is not all ones: applying it or not shows in the numbers
        for layer in m.model.layers:
            layer.post_attention_layernorm.weight.uniform_(0.5, 2.0)
    return m


def test_hf_llama_mlp_input_is_post_norm_and_the_norms_input_is_pre(tmp_path):
    m = _llama()
    ln = "model.layers.1.post_attention_layernorm"
    hooks = ["model.layers.1.mlp:input", f"{ln}:input", "model.layers.1.mlp", "model.layers.0", "lm_head:input"]
    actstore.capture(m, hooks, token_array(8, seed=1, length=16), tmp_path / "s", **OPTS)
    s = actstore.open(tmp_path / "s")
    assert s.hook_norm("model.layers.1.mlp:input") == {
        "norm": "post",
        "norm_module": ln,
        "norm_gain_folded": False,
        "norm_gain_applied": True,
    }
    assert s.hook_norm(f"{ln}:input") == {
        "norm": "pre",
        "norm_module": ln,
        "norm_gain_folded": False,
        "norm_gain_applied": False,
    }
    assert s.hook_norm("model.layers.1.mlp") == UNKNOWN  # the MLP's output is added to the residual
    # a decoder layer's output is the next layer's input_layernorm's input
    assert s.hook_norm("model.layers.0")["norm"] == "pre"
    assert s.hook_norm("model.layers.0")["norm_module"] == "model.layers.1.input_layernorm"
    assert s.hook_norm("lm_head:input")["norm"] == "post"
    assert s.hook_norm("lm_head:input")["norm_module"] == "model.norm"
    # what was recorded matches the numbers: the pre rows through that norm are the post rows
    with torch.no_grad():
        want = m.get_submodule(ln)(s.read(f"{ln}:input"))
    torch.testing.assert_close(s.read("model.layers.1.mlp:input"), want, rtol=1e-5, atol=1e-5)
    info = s.info()
    for h in hooks:
        assert info["hooks"][h]["norm"] == s.hook_norm(h)
    entry = next(e for e in info["provenance"]["hooks"] if e["name"] == f"{ln}:input")
    assert entry["module"] == ln and entry["output"] is False and entry["norm"] == "pre"
    text = format_info(info)
    assert f"post-norm ({ln})" in text and f"pre-norm ({ln})" in text
    with pytest.raises(UnknownHookError):
        s.hook_norm("model.layers.2.mlp:input")


@pytest.mark.parametrize("norm_type", ["LN", "LNPre", "RMS", "RMSPre"])
def test_transformerlens_hook_normalized_and_resid_mid(tmp_path, norm_type):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        n_ctx=16,
        d_vocab=97,
        act_fn="gelu",
        normalization_type=norm_type,
    )
    m = HookedTransformer(cfg).eval()
    ln2 = m.blocks[1].ln2
    folded = norm_type.endswith("Pre")
    if not folded:
        with torch.no_grad():  # the gain (and bias) after hook_normalized, far from 1 (and 0)
            ln2.w.uniform_(0.5, 2.0)
            if norm_type == "LN":
                ln2.b.uniform_(-1.0, 1.0)
    hooks = "blocks.1.hook_resid_mid,blocks.1.ln2.hook_scale,blocks.1.ln2.hook_normalized,blocks.1.mlp:input"
    actstore.capture(m, hooks, token_array(8, seed=2, length=16), tmp_path / "s", **OPTS)
    s = actstore.open(tmp_path / "s")
    assert s.hook_norm("blocks.1.ln2.hook_normalized") == {
        "norm": "post",
        "norm_module": "blocks.1.ln2",
        "norm_gain_folded": folded,
        # taken before w (and b) when the norm has them; a folded norm has no gain to apply
        "norm_gain_applied": None if folded else False,
    }
    assert s.hook_norm("blocks.1.mlp:input") == {
        "norm": "post",
        "norm_module": "blocks.1.ln2",
        "norm_gain_folded": folded,
        "norm_gain_applied": None if folded else True,
    }
    assert s.hook_norm("blocks.1.hook_resid_mid") == {
        "norm": "pre",
        "norm_module": "blocks.1.ln2",
        "norm_gain_folded": folded,
        "norm_gain_applied": False,
    }
    assert s.hook_norm("blocks.1.ln2.hook_scale") == UNKNOWN  # inside the norm, but not the normalized tensor
    # the numbers agree: the MLP reads hook_normalized * w + b, or hook_normalized itself when folded
    x = s.read("blocks.1.ln2.hook_normalized")
    if not folded:
        x = x * ln2.w.detach() + (ln2.b.detach() if norm_type == "LN" else 0)
    torch.testing.assert_close(s.read("blocks.1.mlp:input"), x, rtol=1e-5, atol=1e-5)


def test_no_norm_module_older_stores_and_a_failed_detection_read_as_unknown(tmp_path, monkeypatch):
    # a model without normalization modules
    actstore.capture(TinyLM(), "layers.1.mlp.0:input,layers.2", token_array(4, length=16), tmp_path / "a", **OPTS)
    a = actstore.open(tmp_path / "a")
    assert a.hook_norm("layers.1.mlp.0:input") == UNKNOWN and a.hook_norm("layers.2") == UNKNOWN
    # a store written without capture, with free-form provenance (or none)
    provs = [{"hooks": ["h"]}, {"hooks": [{"name": "h", "module": "h", "output": True}]}, {"hooks": 3}, None]
    for i, prov in enumerate(provs):
        actstore.create(tmp_path / f"b{i}", {"h": 8}, provenance=prov).close()
        assert actstore.open(tmp_path / f"b{i}").hook_norm("h") == UNKNOWN
    # the detection failing never fails the capture: every hook is recorded as unknown
    from actstore.models import norms

    def broken(*_a):
        raise RuntimeError("boom")

    monkeypatch.setattr(norms, "_same", broken)
    actstore.capture(_llama(), "model.layers.1.mlp:input", token_array(4, length=16), tmp_path / "c", **OPTS)
    c = actstore.open(tmp_path / "c")
    assert c.rows == 64 and c.hook_norm("model.layers.1.mlp:input") == UNKNOWN


def test_detection_stops_the_forward_once_every_hook_is_settled():
    from actstore.models import resolve_hooks
    from actstore.models.norms import detect_norms

    m = _llama()
    ran = []
    for i, layer in enumerate(m.model.layers):
        layer.register_forward_hook(lambda *_a, i=i: ran.append(i))
    ids = torch.ones(1, 4, dtype=torch.long)
    got = detect_norms(m, resolve_hooks(m, "model.layers.0.mlp:input"), lambda: m(input_ids=ids))
    assert got["model.layers.0.mlp:input"]["norm"] == "post" and ran == []  # stopped inside layer 0
    got = detect_norms(m, resolve_hooks(m, "model.layers.0.mlp"), lambda: m(input_ids=ids))
    # unknown: it ran on until the first norm past the hook (layer 1's input_layernorm) had read its input
    assert got["model.layers.0.mlp"] == UNKNOWN and ran == [0]
    inside = list(m.model.layers[0].modules())[1:]  # the detection's temporary hooks are gone
    assert inside and not any(mod._forward_hooks or mod._forward_pre_hooks for mod in inside)
