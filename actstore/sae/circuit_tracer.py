"""circuit-tracer's layout: per-layer transcoder sets and cross-layer transcoders, both ways.

circuit-tracer (PyPI ``circuit-tracer`` 0.5.0; decoderesearch/circuit-tracer) builds attribution
graphs from a model whose MLPs it replaces with transcoders. It reads a folder holding
``config.yaml`` and the weights, the layout of its Hugging Face repos and of its own cache
(``circuit_tracer/utils/caching.py``). ``ReplacementModel.from_pretrained(model, FOLDER)`` reads
such a folder by its absolute path, offline: ``load_transcoder_from_hub`` takes a folder that
holds ``config.yaml`` as a cached set.

- ``config.yaml``: ``model_kind`` (``transcoder_set`` | ``cross_layer_transcoder``),
  ``feature_input_hook``, ``feature_output_hook`` (TransformerLens hook names relative to a
  block, the same on every layer), optional ``scan`` and ``model_name``; actstore adds an
  ``actstore`` mapping (arch, activation, k, hooks) that circuit-tracer ignores and
  :func:`from_circuit_tracer` reads.
- per-layer set: ``layer_{l}.safetensors`` for every layer ``l`` of the model, each
  ``W_enc [m, d]``, ``W_dec [m, d]``, ``b_enc [m]``, ``b_dec [d]``, the JumpReLU
  ``activation_function.threshold [m]`` and a skip transcoder's ``W_skip [d, d]``
  (``x @ W_skip.T``, actstore's own layout); ``load_relu_transcoder`` reads it. Without a
  threshold circuit-tracer applies a ReLU.
- CLT: ``W_enc_{s}.safetensors`` holding ``W_enc_{s} [m, d]``, ``b_enc_{s} [m]``,
  ``b_dec_{s} [d]`` (target ``s``'s bias), ``threshold_{s} [m]``; ``W_dec_{s}.safetensors``
  holding ``W_dec_{s} [m, L-s, d]``, with ``W_dec_s[:, l-s]`` the decoder ``s -> l`` (rows
  ``s*m:(s+1)*m`` of actstore's ``W_dec[l]``); ``load_clt`` reads it.

What circuit-tracer can hold, and so what the export accepts:

- activations: JumpReLU (``theta = exp(log_threshold)``) and BatchTopK in its inference form, a
  JumpReLU with the inference ``threshold`` on every latent (as the SAELens export). TopK has
  no threshold form: its loaders build a ReLU or a JumpReLU only.
- ``d_out == d``: its transcoders read and write one ``d_model``.
- every layer ``0..L-1`` (its replacement model encodes at every layer of the model), one ``m``
  on all of them, skip on all or none.
- a CLT without skip: ``load_clt`` reads no ``W_skip`` (0.5.0), so a skip CLT would load as one
  without it.

Hooks (the input is what the encoder reads, the output what the decoder replaces; circuit-tracer's
TransformerLens backend resolves any hook point under ``blocks.{l}``, its nnsight backend only the
names in its ``tl_nnsight_mapping`` for the architecture):

=====================================================  =======================  ===================
actstore hook                                          what it is               circuit-tracer
=====================================================  =======================  ===================
``model.layers.{l}.mlp:input`` (HF)                   the pre-MLP norm's       ``mlp.hook_in``
                                                       output (gain applied)
``model.layers.{l}.post_attention_layernorm:input``    that norm's input, the   ``hook_resid_mid``
(Llama, Qwen, Mistral; Gemma:                          residual stream
``pre_feedforward_layernorm:input``)
``model.layers.{l}.mlp`` (HF)                          the MLP's output         ``mlp.hook_out``
``model.layers.{l}.post_feedforward_layernorm``        Gemma's MLP output       ``hook_mlp_out``
``blocks.{l}.mlp:input`` / ``blocks.{l}.mlp`` (TL)     the MLP's input, output  ``mlp.hook_in`` /
                                                                                ``mlp.hook_out``
``blocks.{l}.HOOK`` (a TransformerLens hook point)     --                       ``HOOK``
=====================================================  =======================  ===================

On Gemma, ``post_attention_layernorm:input`` is the attention's output, not the residual stream:
pass ``feature_input_hook=`` there. circuit-tracer loads TransformerLens models with
``fold_ln=False``, so its ``mlp.hook_in`` has the norm's gain applied. A store captured from a
model whose norm gain was folded (TransformerLens ``RMSNormPre``/``LNPre``) holds the normalized
tensor without the gain, which is circuit-tracer's ``ln2.hook_normalized``: pass ``store=`` and
the export reads :meth:`~actstore.store.reader.Store.hook_norm` of each source hook (``"pre"`` ->
``hook_resid_mid``; ``"post"`` with the gain applied -> ``mlp.hook_in``, without it ->
``ln2.hook_normalized``; a record at another norm than the layer's pre-MLP one is refused).
``feature_input_hook=`` / ``feature_output_hook=`` override all of this.

Offline: ``ReplacementModel.from_pretrained(MODEL, str(folder), backend="transformerlens")``
reads the export; with a local model folder, circuit-tracer 0.5.0 and the project's pins it
needs two shims (``tests/sae/test_circuit_tracer.py``): ``huggingface_hub.constants.
HF_HUB_ENABLE_HF_TRANSFER = False`` before importing it (huggingface_hub 1.0 removed the constant
its ``hf_utils`` imports), and the folder appended to TransformerLens'
``loading_from_pretrained.OFFICIAL_MODEL_NAMES`` (``HookedTransformer.from_pretrained`` checks
the name before its loaders, which read local folders). Its nnsight backend does not import with
nnsight 0.8 (``nnsight.intervention.tracing.tracer`` moved, ``CONFIG.APP.CROSS_INVOKER`` gone).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch

from ..errors import DependencyError, SAEError, SAEFileError
from .io import _assign, _load_weights, write_file, write_safetensors

CONFIG = "config.yaml"
SET, CLT = "transcoder_set", "cross_layer_transcoder"
# Module paths under which an HF decoder layer ``l`` lives (Llama, Qwen, Gemma, Mistral, GPT-OSS...)
# and a TransformerLens block.
_HF = re.compile(r"^(?:model\.|language_model\.|model\.language_model\.)?layers\.(\d+)\.(.+)$")
_TL = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_INPUTS = {
    "mlp:input": "mlp.hook_in",
    "post_attention_layernorm:input": "hook_resid_mid",
    "pre_feedforward_layernorm:input": "hook_resid_mid",
}
_HF_OUTPUTS = {"mlp": "mlp.hook_out", "post_feedforward_layernorm": "hook_mlp_out"}
# TransformerLens module paths (an actstore hook may be any module's output or ``:input``).
_TL_MODULES = {"mlp:input": "mlp.hook_in", "mlp": "mlp.hook_out"}
# The norm a source hook may read, by layer: HF's pre-MLP norm, TransformerLens' ln2.
_PRE_MLP_NORM = re.compile(
    r"(?:^|\.)(?:layers|blocks)\.(\d+)\.(?:post_attention_layernorm|pre_feedforward_layernorm|ln2)$"
)


def _layer_and_name(hook: str | None, side: str, norm: dict | None) -> tuple[int | None, str | None]:
    """``(layer, circuit-tracer name)`` of an actstore hook (either may be None: not known).
    ``side`` is ``"input"`` or ``"output"``; ``norm`` the store's :meth:`hook_norm` record."""
    if not hook:
        return None, None
    tl, hf = _TL.match(hook), _HF.match(hook)
    if tl:  # circuit-tracer's TransformerLens backend resolves any hook point under the block
        layer, rest = int(tl.group(1)), tl.group(2)
        name = _TL_MODULES.get(rest) or (rest if rest.rsplit(".", 1)[-1].startswith("hook_") else None)
    elif hf:
        layer, rest = int(hf.group(1)), hf.group(2)
        name = (_HF_INPUTS if side == "input" else _HF_OUTPUTS).get(rest)
    else:
        return None, None
    if side == "input" and norm and norm.get("norm") in ("pre", "post"):
        module = norm.get("norm_module") or ""
        at = _PRE_MLP_NORM.search(module)
        if not at or int(at.group(1)) != layer:
            raise SAEError(
                f"source hook {hook!r} was captured at norm {module!r}, not layer {layer}'s pre-MLP norm: "
                "circuit-tracer's transcoders read the MLP input; pass feature_input_hook= if this is intended"
            )
        if norm["norm"] == "pre":
            name = "hook_resid_mid"
        else:  # a gain folded into the next weights is absent here, and present in circuit-tracer's unfolded model
            name = "mlp.hook_in" if norm.get("norm_gain_applied") else "ln2.hook_normalized"
    return layer, name


def _feature_hook(hooks: list, side: str, given: str | None, norms: list) -> tuple[str, list]:
    """The one circuit-tracer name of ``hooks`` (layer order) and their parsed layers; ``given``
    overrides the names (the layers are then the list order where the names say none)."""
    got = [_layer_and_name(h, side, None if given else n) for h, n in zip(hooks, norms)]
    layers = [layer for layer, _ in got]
    if given:
        return given, layers
    names = {name for _, name in got}
    if None in names:
        bad = next(h for h, (_, name) in zip(hooks, got) if name is None)
        raise SAEError(
            f"no circuit-tracer name for {side} hook {bad!r} (it knows the MLP input and output: "
            f"model.layers.N.mlp{':input' if side == 'input' else ''}, blocks.N.NAME): "
            f"pass feature_{side}_hook= (e.g. {'mlp.hook_in' if side == 'input' else 'mlp.hook_out'})"
        )
    if len(names) > 1:
        raise SAEError(
            f"circuit-tracer takes one feature_{side}_hook for every layer, but these hooks map to {sorted(names)}"
        )
    return names.pop(), layers


def _check_layers(layers: list, what: str) -> None:
    """Layers ``0..L-1`` in order (circuit-tracer replaces every MLP of the model)."""
    if any(layer is not None for layer in layers) and layers != list(range(len(layers))):
        missing = sorted(set(range(max(x for x in layers if x is not None) + 1)) - set(layers))
        raise SAEError(
            f"circuit-tracer needs one {what} per layer 0..L-1 in order, got layers {layers}"
            + (f" (missing {missing})" if missing else "")
            + ": export a full set (its replacement model encodes at every layer of the model)"
        )


def _theta(dictionary, layer: int | None = None) -> torch.Tensor:
    """The JumpReLU thresholds ``[m]`` circuit-tracer applies (``pre * (pre > theta)``)."""
    act = dictionary.cfg.act
    if act == "jumprelu":
        lt = dictionary.log_threshold.detach()
        return (lt if layer is None else lt[layer]).float().exp()
    if act == "batchtopk":
        t = dictionary.threshold.detach().float()
        t = t if layer is None else t[layer]
        if float(t) < 0:
            raise SAEError(
                "this BatchTopK dictionary has no inference threshold yet (train it first): "
                "circuit-tracer runs it in its JumpReLU form"
            )
        m = dictionary.W_enc.shape[-2]
        return torch.full((m,), float(t))
    raise SAEError(
        f"circuit-tracer has no {act} activation (its loaders build ReLU or JumpReLU): "
        "train with --activation jumprelu or batchtopk to export to it"
    )


_LAYOUT_FILE = re.compile(r"^(layer|W_enc|W_dec)_(\d+)\.safetensors$")


def _check_stale(path: Path, kind: str, n_layers: int) -> None:
    """Refuse a folder holding weight files that this export would not replace (of another
    export): circuit-tracer reads every ``layer_*`` / ``W_enc_*`` file it finds."""
    if not path.is_dir():
        return
    own = ("layer",) if kind == SET else ("W_enc", "W_dec")
    stale = sorted(
        f.name
        for f in path.iterdir()
        if (mt := _LAYOUT_FILE.match(f.name)) and (mt.group(1) not in own or int(mt.group(2)) >= n_layers)
    )
    if stale:
        raise SAEError(
            f"{path} holds files of another export ({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}), "
            "which circuit-tracer would read too: export into an empty folder"
        )


def _yaml(doc: dict) -> str:
    """``config.yaml``: one ``key: value`` line each, values as JSON (strings, ints, lists and
    mappings of them are YAML flow scalars and collections as well)."""
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in doc.items() if v is not None)


def _norms(store, hooks: list) -> list:
    if store is None:
        return [None] * len(hooks)
    return [store.hook_norm(h) if h else None for h in hooks]


def _folded(dictionary):
    """A CPU copy with the training normalization folded into the weights."""
    d = copy.deepcopy(dictionary).cpu()
    fold = getattr(d, "fold_scale", None)
    if fold is not None:
        fold()
    return d


def _export_set(tcs: list, path: Path, doc: dict, store, inp: str | None, out: str | None) -> None:
    if not tcs:
        raise SAEError("an empty transcoder set: pass one transcoder per layer")
    for i, t in enumerate(tcs):
        cfg = getattr(t, "cfg", None)
        if cfg is None or not cfg.is_transcoder:
            raise SAEError(
                f"item {i} is a {getattr(cfg, 'arch', type(t).__name__)}, not a transcoder: circuit-tracer's "
                "per-layer sets hold transcoders (MLP input -> MLP output)"
            )
        if cfg.d_target != cfg.d:
            raise SAEError(
                f"layer {i}: d_out={cfg.d_target} != d={cfg.d}; circuit-tracer's transcoders read and write "
                "one d_model (the residual stream)"
            )
    ms, skips = {t.cfg.m for t in tcs}, {t.W_skip is not None for t in tcs}
    if len(ms) > 1 or len({t.cfg.d for t in tcs}) > 1:
        raise SAEError(f"circuit-tracer's set needs one m and d on every layer, got m {sorted(ms)}")
    if len(skips) > 1:
        raise SAEError("circuit-tracer's set has a skip connection on every layer or none: these are mixed")
    # Sort by the layer the hooks name (they may come in any order).
    parsed = [_layer_and_name(t.cfg.hook, "input", None)[0] for t in tcs]
    if None not in parsed:
        order = sorted(range(len(tcs)), key=parsed.__getitem__)
        tcs = [tcs[i] for i in order]
    sources, targets = [t.cfg.hook for t in tcs], [t.cfg.target for t in tcs]
    doc["feature_input_hook"], in_layers = _feature_hook(sources, "input", inp, _norms(store, sources))
    doc["feature_output_hook"], out_layers = _feature_hook(targets, "output", out, [None] * len(tcs))
    _check_layers(in_layers, "transcoder")
    _check_layers(out_layers, "transcoder")
    _check_stale(path, SET, len(tcs))
    c = tcs[0].cfg
    doc["actstore"] = {
        "arch": c.arch,
        "activation": c.act,
        "k": c.k,
        "sources": sources if None not in sources else None,
        "targets": targets if None not in targets else None,
    }
    for layer, t in enumerate(tcs):
        t = _folded(t)
        st = {
            "W_enc": t.W_enc.detach(),
            "W_dec": t.W_dec.detach(),
            "b_enc": t.b_enc.detach(),
            "b_dec": t.b_dec.detach(),
            "activation_function.threshold": _theta(t).to(t.W_enc.dtype),
        }
        if t.W_skip is not None:
            st["W_skip"] = t.W_skip.detach()
        write_safetensors(path, f"layer_{layer}.safetensors", st)


def _export_clt(clt, path: Path, doc: dict, store, inp: str | None, out: str | None) -> None:
    c = clt.cfg
    if getattr(clt, "world", 1) != 1:
        raise SAEError("this CLT is one rank's shard of the latents: export the gathered CLT (world 1)")
    if c.arch != "clt":
        raise SAEError(
            f"circuit-tracer 0.5.0 cannot load a {c.arch}: its load_clt reads no W_skip, so the skip term "
            "would be dropped; train arch clt to export to it"
        )
    if c.d_target != c.d:
        raise SAEError(
            f"d_out={c.d_target} != d={c.d}; circuit-tracer's CLT reads and writes one d_model (the residual stream)"
        )
    _theta(clt, 0)  # refuses an activation circuit-tracer has none of, before anything is written
    L, m = clt.n_layers, c.m
    doc["feature_input_hook"], in_layers = _feature_hook(list(c.sources), "input", inp, _norms(store, c.sources))
    doc["feature_output_hook"], out_layers = _feature_hook(list(c.targets), "output", out, [None] * L)
    _check_layers(in_layers, "source")
    _check_layers(out_layers, "target")
    _check_stale(path, CLT, L)
    doc["actstore"] = {
        "arch": c.arch,
        "activation": c.act,
        "k": c.k,
        "sources": list(c.sources),
        "targets": list(c.targets),
    }
    clt = _folded(clt)
    dtype = clt.W_enc.dtype
    for s in range(L):
        enc = {
            f"W_enc_{s}": clt.W_enc[s].detach(),
            f"b_enc_{s}": clt.b_enc[s].detach(),
            f"b_dec_{s}": clt.b_dec[s].detach(),
            f"threshold_{s}": _theta(clt, s).to(dtype),
        }
        dec = torch.stack([clt.W_dec[t][s * m : (s + 1) * m].detach() for t in range(s, L)], dim=1)
        write_safetensors(path, f"W_enc_{s}.safetensors", enc)
        write_safetensors(path, f"W_dec_{s}.safetensors", {f"W_dec_{s}": dec})


def to_circuit_tracer(
    dictionary,
    path,
    *,
    model_name: str | None = None,
    feature_input_hook: str | None = None,
    feature_output_hook: str | None = None,
    store=None,
    scan: str | None = None,
) -> Path:
    """Write ``dictionary`` in circuit-tracer's layout into the folder ``path`` (see the module
    docstring), with the normalization folded in, and return ``path``.

    ``dictionary``: a cross-layer transcoder (``actstore.sae.clt.CrossLayerTranscoder``, arch
    ``clt``), or a list of per-layer transcoders, one per layer of the model (any order; their
    source hooks name the layers). ``feature_input_hook`` / ``feature_output_hook``:
    circuit-tracer's hook names (relative to a block), instead of those the hooks map to.
    ``store``: the store the dictionary was trained on, whose record of where each source hook
    sits relative to a norm decides the input name. ``model_name`` and ``scan`` are written to
    ``config.yaml`` as they are. Whatever circuit-tracer cannot hold is a one-line SAEError,
    raised before anything is written; ``config.yaml`` is written last."""
    path = Path(path)
    doc: dict = {"model_kind": None, "feature_input_hook": None, "feature_output_hook": None}
    if isinstance(dictionary, (list, tuple)):
        doc["model_kind"] = SET
        _export_set(list(dictionary), path, doc, store, feature_input_hook, feature_output_hook)
    elif getattr(getattr(dictionary, "cfg", None), "is_clt", False):
        doc["model_kind"] = CLT
        _export_clt(dictionary, path, doc, store, feature_input_hook, feature_output_hook)
    elif getattr(getattr(dictionary, "cfg", None), "is_transcoder", False):
        raise SAEError(
            "circuit-tracer replaces every MLP of the model: pass a list of transcoders, one per layer "
            "(a single transcoder is a set of one only for a one-layer model: pass [transcoder])"
        )
    else:
        raise SAEError(
            f"circuit-tracer holds transcoder sets and CLTs, not {type(dictionary).__name__}: pass a list of "
            "per-layer transcoders or a CrossLayerTranscoder"
        )
    doc["model_name"], doc["scan"] = model_name, scan
    write_file(path, CONFIG, _yaml(doc))
    return path


# -- reading it back -------------------------------------------------------------------------------


def _read_config(path: Path) -> dict:
    try:
        import yaml
    except ImportError:
        raise DependencyError("reading circuit-tracer's config.yaml needs pyyaml: pip install pyyaml") from None
    f = path / CONFIG
    if not f.is_file():
        raise SAEFileError(f"{f} not found: is {path} a circuit-tracer transcoder folder?")
    try:
        doc = yaml.safe_load(f.read_text())
    except yaml.YAMLError as e:
        raise SAEError(f"{f} is not valid YAML ({e}); the folder is damaged") from None
    if not isinstance(doc, dict) or doc.get("model_kind") not in (SET, CLT):
        raise SAEError(
            f"{f}: model_kind must be {SET} or {CLT}, got {doc.get('model_kind') if isinstance(doc, dict) else doc!r}"
        )
    return doc


def _count(path: Path, pattern: str) -> int:
    n = 0
    while (path / pattern.format(n)).is_file():
        n += 1
    if n == 0:
        raise SAEFileError(f"{path}: no {pattern.format(0)}: is it a circuit-tracer transcoder folder?")
    return n


def _activation_keys(meta: dict, theta: torch.Tensor | None, source) -> tuple[str, dict, torch.Tensor | None]:
    """``(activation, config keys, BatchTopK thresholds [blocks] or None)`` for circuit-tracer
    thresholds ``theta`` (``[m]``, or a CLT's ``[L, m]``): BatchTopK where the folder records
    it (one threshold on every latent of a layer, at least 0), else JumpReLU (theta > 0: it is
    log-parameterized here)."""
    if theta is None:
        raise SAEError(
            f"{source}: a ReLU transcoder (no threshold) has no actstore counterpart (JumpReLU needs theta > 0)"
        )
    theta = theta.float()
    if meta.get("activation") == "batchtopk" and meta.get("k"):
        rows = theta.reshape(-1, theta.shape[-1])
        if bool((rows == rows[:, :1]).all()) and bool((rows[:, 0] >= 0).all()):
            return "batchtopk", {"k": int(meta["k"])}, rows[:, 0].contiguous()
    if (theta <= 0).any():
        raise SAEError(f"{source}: JumpReLU thresholds must be positive to import (log-parameterized here)")
    return "jumprelu", {}, None


def from_circuit_tracer(path, *, device=None):
    """Read a circuit-tracer folder (a transcoder set or a CLT, as :func:`to_circuit_tracer`
    writes it, or one of circuit-tracer's own in that layout) back into actstore objects, in
    eval mode: a list of per-layer transcoders, or a ``CrossLayerTranscoder``. Hooks come from
    the ``actstore`` record, else ``blocks.{l}.{feature hook}``. A set exported from BatchTopK
    reads back as BatchTopK; thresholds of other sets make JumpReLU transcoders."""
    from .config import SAEConfig
    from .registry import build

    path = Path(path)
    doc = _read_config(path)
    meta = doc.get("actstore") or {}
    inp, out = doc.get("feature_input_hook"), doc.get("feature_output_hook")
    if doc["model_kind"] == SET:
        n = _count(path, "layer_{}.safetensors")
        sources = meta.get("sources") or [f"blocks.{i}.{inp}" for i in range(n)]
        targets = meta.get("targets") or [f"blocks.{i}.{out}" for i in range(n)]
        tcs = []
        for i in range(n):
            f = path / f"layer_{i}.safetensors"
            st = _load_weights(f, "circuit-tracer transcoder")
            theta = st.get("activation_function.threshold")
            act, keys, t = _activation_keys(meta, theta, f)
            m, d = st["W_enc"].shape
            arch = "skip_transcoder" if "W_skip" in st else "transcoder"
            cfg = SAEConfig(
                arch, d, m, activation=act, d_out=int(st["b_dec"].shape[0]), hook=sources[i], target=targets[i],
                dtype=str(st["W_dec"].dtype).removeprefix("torch."), **keys,
                threshold=None if t is None else float(t[0]),
            )  # fmt: skip
            tc = build(cfg)
            state = {k: st[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
            if "W_skip" in st:
                state["W_skip"] = st["W_skip"]
            if t is None:
                state["log_threshold"] = theta.float().log()
            else:
                state["threshold"] = t[0].clone()
            _assign(tc, state, f)
            tcs.append(tc.eval().to(device) if device is not None else tc.eval())
        return tcs
    n = _count(path, "W_enc_{}.safetensors")
    enc = [_load_weights(path / f"W_enc_{s}.safetensors", "circuit-tracer CLT") for s in range(n)]
    dec = [_load_weights(path / f"W_dec_{s}.safetensors", "circuit-tracer CLT")[f"W_dec_{s}"] for s in range(n)]
    if any(f"threshold_{s}" not in e for s, e in enumerate(enc)):
        theta = None
    else:
        theta = torch.stack([e[f"threshold_{s}"].float() for s, e in enumerate(enc)])
    act, keys, t = _activation_keys(meta, theta, path)
    m, d = enc[0]["W_enc_0"].shape
    cfg = SAEConfig(
        "clt", d, m, activation=act, d_out=int(enc[0]["b_dec_0"].shape[0]),
        sources=meta.get("sources") or [f"blocks.{s}.{inp}" for s in range(n)],
        targets=meta.get("targets") or [f"blocks.{s}.{out}" for s in range(n)],
        dtype=str(enc[0]["W_enc_0"].dtype).removeprefix("torch."), **keys,
    )  # fmt: skip
    clt = build(cfg)
    state = {
        "W_enc": torch.stack([e[f"W_enc_{s}"] for s, e in enumerate(enc)]),
        "b_enc": torch.stack([e[f"b_enc_{s}"] for s, e in enumerate(enc)]),
        "b_dec": torch.stack([e[f"b_dec_{s}"] for s, e in enumerate(enc)]),
        **({"log_threshold": theta.float().log()} if t is None else {"threshold": t}),
    }
    for t in range(n):  # target t: the decoders s -> t of every s <= t, stacked by source
        state[f"W_dec.{t}"] = torch.cat([dec[s][:, t - s] for s in range(t + 1)])
    _assign(clt, state, path)
    clt.eval()
    return clt.to(device) if device is not None else clt


__all__ = ["to_circuit_tracer", "from_circuit_tracer"]
