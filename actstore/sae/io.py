"""Saving and loading SAEs: actstore's own format, SAELens' and sparsify's. Never pickles.

- actstore: ``DIR/config.json`` (:class:`~actstore.sae.config.SAEConfig`) and
  ``DIR/sae.safetensors`` (the module's state dict). ``save`` folds the training
  normalization into the weights first, so a saved SAE takes raw activations.
- SAELens (``cfg.json`` + ``sae_weights.safetensors``): ``W_enc`` is ``[d, m]`` there.
  topk -> ``topk``; relu -> ``standard``; jumprelu -> ``jumprelu``; gated -> ``gated``;
  batchtopk -> ``jumprelu`` with its inference threshold on every latent (what SAELens does
  with its own BatchTopK SAEs at inference). Imports read those and SAELens' ``batchtopk``
  training saves.
- sparsify (``cfg.json`` + ``sae.safetensors``, keys ``encoder.weight [m, d]``,
  ``encoder.bias``, ``W_dec``, ``b_dec``): TopK SAEs import and export.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..store.storage import open_storage

from .base import SparseAutoencoder
from .config import SAEConfig
from .gated import GatedSAE
from .jumprelu import JumpReLUSAE
from .relu import ReLUSAE
from .topk import BatchTopKSAE, TopKSAE

CLASSES = {c.arch: c for c in (TopKSAE, BatchTopKSAE, JumpReLUSAE, GatedSAE, ReLUSAE)}


def build(cfg: SAEConfig, **kw) -> SparseAutoencoder:
    """A freshly initialized SAE of ``cfg.arch``."""
    return CLASSES[cfg.arch](cfg, **kw)


def put(folder: Path, name: str, data: bytes | str) -> None:
    """Write ``folder/name`` atomically and durably (the store's own ``write_atomic``: temp
    file, fsync, rename, directory fsync; a full disk is a one-line StoreError)."""
    open_storage(folder).write_atomic(name, data.encode() if isinstance(data, str) else data)


def put_tensors(folder: Path, name: str, tensors: dict) -> None:
    put(folder, name, safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))


def save(sae: SparseAutoencoder, path, *, fold_scale: bool = True) -> Path:
    """Write ``path/config.json`` and ``path/sae.safetensors``; with ``fold_scale`` a copy
    with the normalization folded in is written (``sae`` itself is left as it is)."""
    path = Path(path)
    if fold_scale and sae.cfg.scale != 1.0:
        import copy

        sae = copy.deepcopy(sae)
        sae.fold_scale()
    put_tensors(path, "sae.safetensors", sae.state_dict())
    put(path, "config.json", sae.export_config().to_json())
    return path


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: is {path.parent} a saved {what}?") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the {what} is damaged") from None


def _load_weights(path: Path, what: str) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {path.parent} a saved {what}?")
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damage
        raise ValueError(f"{path} could not be read as safetensors ({type(e).__name__}: {e}); "
                         f"the {what} is damaged") from None


def _assign(sae: SparseAutoencoder, state: dict, source: Path) -> SparseAutoencoder:
    own = sae.state_dict()
    missing, extra = set(own) - set(state), set(state) - set(own)
    if missing or extra:
        raise ValueError(f"{source}: weights do not match a {sae.arch} SAE (missing {sorted(missing)}, "
                         f"unexpected {sorted(extra)})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, the config says {tuple(own[k].shape)}")
    sae.load_state_dict(state)
    return sae


def load(path, *, device=None) -> SparseAutoencoder:
    """Load an SAE written by :func:`save`."""
    path = Path(path)
    cfg = SAEConfig.from_dict(_read_json(path / "config.json", "actstore SAE"))
    state = _load_weights(path / "sae.safetensors", "actstore SAE")
    sae = build(cfg)
    _assign(sae, state, path / "sae.safetensors")
    return sae.to(device) if device is not None else sae


# -- SAELens ---------------------------------------------------------------------------------

_TO_SAELENS = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu", "gated": "gated", "batchtopk": "jumprelu"}


def to_saelens(sae: SparseAutoencoder, path) -> Path:
    """Write SAELens' on-disk format (``SAE.load_from_disk(path)`` reads it)."""
    import copy

    path = Path(path)
    sae = copy.deepcopy(sae).cpu()
    sae.fold_scale()
    c = sae.cfg
    st = {"W_enc": sae.W_enc.detach().t().contiguous(), "W_dec": sae.W_dec.detach().contiguous(),
          "b_dec": sae.b_dec.detach().contiguous()}
    if c.arch == "gated":
        st.update(b_gate=sae.b_gate.detach(), r_mag=sae.r_mag.detach(), b_mag=sae.b_mag.detach())
    else:
        st["b_enc"] = sae.b_enc.detach().contiguous()
    if c.arch == "jumprelu":
        st["threshold"] = sae.log_threshold.detach().exp().to(sae.W_enc.dtype).contiguous()
    if c.arch == "batchtopk":
        t = float(sae.threshold)
        if t < 0:
            raise ValueError("this BatchTopK SAE has no inference threshold yet (train it first): "
                             "SAELens stores BatchTopK SAEs in their JumpReLU form")
        st["threshold"] = torch.full((c.m,), t, dtype=sae.W_enc.dtype)
    doc = {"d_in": c.d, "d_sae": c.m, "dtype": str(sae.W_enc.dtype).removeprefix("torch."), "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "architecture": _TO_SAELENS[c.arch], "metadata": {"hook_name": c.hook} if c.hook else {}}
    if c.arch == "topk":
        doc.update(k=c.k, rescale_acts_by_decoder_norm=False)
    put_tensors(path, "sae_weights.safetensors", st)
    put(path, "cfg.json", json.dumps(doc))
    return path


def from_saelens(path, *, device=None) -> SparseAutoencoder:
    """Load an SAE saved by SAELens (``save_model``) or written by :func:`to_saelens`."""
    path = Path(path)
    doc = _read_json(path / "cfg.json", "SAELens SAE")
    st = _load_weights(path / "sae_weights.safetensors", "SAELens SAE")
    arch_in = doc.get("architecture", "standard")
    arch = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated",
            "batchtopk": "batchtopk"}.get(arch_in)
    if arch is None:
        raise ValueError(f"{path}: SAELens architecture {arch_in!r} has no actstore counterpart "
                         "(supported: standard, topk, batchtopk, jumprelu, gated)")
    if doc.get("normalize_activations", "none") != "none":
        raise ValueError(f"{path}: normalize_activations={doc['normalize_activations']!r} is not supported; "
                         "export the SAE with its normalization folded in")
    if doc.get("rescale_acts_by_decoder_norm") or doc.get("reshape_activations", "none") != "none":
        raise ValueError(f"{path}: rescale_acts_by_decoder_norm / reshape_activations are not supported")
    d, m = int(doc["d_in"]), int(doc["d_sae"])
    k = doc.get("k")
    dtype = st["W_dec"].dtype
    if arch == "batchtopk":
        thr = st.get("topk_threshold")
        cfg = SAEConfig(arch, d, m, k=int(k), threshold=None if thr is None else float(thr),
                        dtype=str(dtype).removeprefix("torch."))
    else:
        cfg = SAEConfig(arch, d, m, k=int(k) if k else None, dtype=str(dtype).removeprefix("torch."))
    cfg.hook = (doc.get("metadata") or {}).get("hook_name")
    sae = build(cfg)
    W_enc = st["W_enc"].t()
    state = {"W_enc": W_enc, "W_dec": st["W_dec"], "b_dec": st["b_dec"]}
    bias_key = "b_gate" if arch == "gated" else "b_enc"
    if not doc.get("apply_b_dec_to_input", True):
        # Their pre-activation is x W + b; ours subtracts b_dec first: fold W b_dec into the bias.
        fix = W_enc.float() @ st["b_dec"].float()
        st[bias_key] = (st[bias_key].float() + fix).to(dtype)
        if arch == "gated":
            st["b_mag"] = (st["b_mag"].float() + st["r_mag"].float().exp() * fix).to(dtype)
    if arch == "gated":
        state.update(b_gate=st["b_gate"], r_mag=st["r_mag"], b_mag=st["b_mag"])
    else:
        state["b_enc"] = st["b_enc"]
    if arch == "jumprelu":
        theta = st["threshold"].float()
        if (theta <= 0).any():
            raise ValueError(f"{path}: JumpReLU thresholds must be positive to import (log-parameterized here)")
        state["log_threshold"] = theta.log()
    if arch == "batchtopk":
        state["threshold"] = torch.tensor(-1.0 if cfg.threshold is None else cfg.threshold)
    sae = _assign(sae, {k_: v.contiguous() for k_, v in state.items()}, path)
    return sae.to(device) if device is not None else sae


# -- sparsify --------------------------------------------------------------------------------


def from_sparsify(path, *, device=None) -> TopKSAE:
    """Load a sparsify TopK checkpoint (``SparseCoder.save_to_disk``)."""
    path = Path(path)
    doc = _read_json(path / "cfg.json", "sparsify checkpoint")
    st = _load_weights(path / "sae.safetensors", "sparsify checkpoint")
    if doc.get("activation", "topk") != "topk":
        raise ValueError(f"{path}: sparsify activation {doc['activation']!r} is not supported (only topk)")
    if doc.get("transcode") or doc.get("skip_connection"):
        raise ValueError(f"{path}: sparsify transcoders / skip connections are not supported")
    W = st["encoder.weight"]
    m, d = W.shape
    if int(doc.get("d_in", d)) != d:
        raise ValueError(f"{path}: d_in={doc['d_in']} but encoder.weight is {tuple(W.shape)}")
    cfg = SAEConfig("topk", d, m, k=int(doc["k"]), normalize_decoder=bool(doc.get("normalize_decoder", True)),
                    dtype=str(W.dtype).removeprefix("torch."))
    sae = build(cfg)
    state = {"W_enc": W, "b_enc": st["encoder.bias"], "W_dec": st["W_dec"], "b_dec": st["b_dec"]}
    sae = _assign(sae, {k_: v.contiguous() for k_, v in state.items()}, path)
    return sae.to(device) if device is not None else sae


def to_sparsify(sae: TopKSAE, path) -> Path:
    """Write a TopK SAE as a sparsify checkpoint (``SparseCoder.load_from_disk`` reads it)."""
    import copy

    if sae.arch != "topk":
        raise ValueError(f"sparsify holds TopK SAEs only, not {sae.arch!r}")
    path = Path(path)
    sae = copy.deepcopy(sae).cpu()
    sae.fold_scale()
    c = sae.cfg
    st = {"encoder.weight": sae.W_enc.detach().contiguous(), "encoder.bias": sae.b_enc.detach().contiguous(),
          "W_dec": sae.W_dec.detach().contiguous(), "b_dec": sae.b_dec.detach().contiguous()}
    put_tensors(path, "sae.safetensors", st)
    doc = {"activation": "topk", "expansion_factor": max(1, c.m // c.d), "normalize_decoder": c.normalize_decoder,
           "num_latents": c.m, "k": c.k, "multi_topk": False, "skip_connection": False, "transcode": False,
           "d_in": c.d}
    put(path, "cfg.json", json.dumps(doc))
    return path


__all__ = ["build", "save", "load", "to_saelens", "from_saelens", "from_sparsify", "to_sparsify"]
