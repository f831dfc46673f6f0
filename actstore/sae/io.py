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

import copy
import json
from pathlib import Path

from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..errors import SAEError, SAEFileError
from ..store.storage import open_storage
from .base import SparseAutoencoder
from .config import SAEConfig
from .registry import SAELENS_READS, build, sae_class
from .topk import TopKSAE


def write_file(folder: Path, name: str, data: bytes | str) -> None:
    """Write ``folder/name`` atomically and durably (the store's own ``write_atomic``: temp
    file, fsync, rename, directory fsync; a full disk is a one-line StoreError)."""
    open_storage(folder).write_atomic(name, data.encode() if isinstance(data, str) else data)


def write_safetensors(folder: Path, name: str, tensors: dict) -> None:
    """Write ``tensors`` (detached, made contiguous, moved to the CPU) as the safetensors file
    ``folder/name``, atomically and durably as :func:`write_file`."""
    write_file(folder, name, safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))


def save(sae: SparseAutoencoder, path, *, fold_scale: bool = True) -> Path:
    """Write ``path/config.json`` and ``path/sae.safetensors``; with ``fold_scale`` a copy
    with the normalization folded in is written (``sae`` itself is left as it is)."""
    path = Path(path)
    if fold_scale and sae.cfg.scale != 1.0:
        sae = copy.deepcopy(sae)
        sae.fold_scale()
    write_safetensors(path, "sae.safetensors", sae.state_dict())
    write_file(path, "config.json", sae.export_config().to_json())
    return path


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SAEFileError(f"{path} not found: is {path.parent} a saved {what}?") from None
    except json.JSONDecodeError as e:
        raise SAEError(f"{path} is not valid JSON ({e}); the {what} is damaged") from None


def _load_weights(path: Path, what: str) -> dict:
    if not path.exists():
        raise SAEFileError(f"{path} not found: is {path.parent} a saved {what}?")
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damage
        raise SAEError(
            f"{path} could not be read as safetensors ({type(e).__name__}: {e}); the {what} is damaged"
        ) from None


def _assign(sae: SparseAutoencoder, state: dict, source: Path) -> SparseAutoencoder:
    own = sae.state_dict()
    missing, extra = set(own) - set(state), set(state) - set(own)
    if missing or extra:
        raise SAEError(
            f"{source}: weights do not match a {sae.arch} SAE (missing {sorted(missing)}, unexpected {sorted(extra)})"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise SAEError(f"{source}: {k} has shape {tuple(v.shape)}, the config says {tuple(own[k].shape)}")
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


def to_saelens(sae: SparseAutoencoder, path) -> Path:
    """Write SAELens' on-disk format (``SAE.load_from_disk(path)`` reads it)."""
    path = Path(path)
    sae = copy.deepcopy(sae).cpu()
    sae.fold_scale()
    c = sae.cfg
    doc = {
        "d_in": c.d,
        "d_sae": c.m,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "architecture": sae.saelens_arch,
        "metadata": {"hook_name": c.hook} if c.hook else {},
        **sae.saelens_config(),
    }
    write_safetensors(path, "sae_weights.safetensors", sae.saelens_state())
    write_file(path, "cfg.json", json.dumps(doc))
    return path


def from_saelens(path, *, device=None) -> SparseAutoencoder:
    """Load an SAE saved by SAELens (``save_model``) or written by :func:`to_saelens`."""
    path = Path(path)
    doc = _read_json(path / "cfg.json", "SAELens SAE")
    st = _load_weights(path / "sae_weights.safetensors", "SAELens SAE")
    arch_in = doc.get("architecture", "standard")
    cls = SAELENS_READS.get(arch_in)
    if cls is None:
        raise SAEError(
            f"{path}: SAELens architecture {arch_in!r} has no actstore counterpart "
            f"(supported: {', '.join(sorted(SAELENS_READS))})"
        )
    if doc.get("normalize_activations", "none") != "none":
        raise SAEError(
            f"{path}: normalize_activations={doc['normalize_activations']!r} is not supported; "
            "export the SAE with its normalization folded in"
        )
    if doc.get("rescale_acts_by_decoder_norm") or doc.get("reshape_activations", "none") != "none":
        raise SAEError(f"{path}: rescale_acts_by_decoder_norm / reshape_activations are not supported")
    d, m = int(doc["d_in"]), int(doc["d_sae"])
    cfg = cls.config_from_saelens(doc, st, d, m, str(st["W_dec"].dtype).removeprefix("torch."))
    cfg.hook = (doc.get("metadata") or {}).get("hook_name")
    sae = build(cfg)
    # Their pre-activation is x W + b without apply_b_dec_to_input; ours subtracts b_dec
    # first, so W b_dec folds into the encoder biases.
    shift = None if doc.get("apply_b_dec_to_input", True) else st["W_enc"].t().float() @ st["b_dec"].float()
    state = sae.state_from_saelens(st, path, shift)
    sae = _assign(sae, {k_: v.contiguous() for k_, v in state.items()}, path)
    return sae.to(device) if device is not None else sae


# -- sparsify --------------------------------------------------------------------------------


def from_sparsify(path, *, device=None) -> TopKSAE:
    """Load a sparsify TopK checkpoint (``SparseCoder.save_to_disk``)."""
    path = Path(path)
    doc = _read_json(path / "cfg.json", "sparsify checkpoint")
    st = _load_weights(path / "sae.safetensors", "sparsify checkpoint")
    if doc.get("activation", "topk") != "topk":
        raise SAEError(f"{path}: sparsify activation {doc['activation']!r} is not supported (only topk)")
    if doc.get("transcode") or doc.get("skip_connection"):
        raise SAEError(f"{path}: sparsify transcoders / skip connections are not supported")
    W = st["encoder.weight"]
    m, d = W.shape
    if int(doc.get("d_in", d)) != d:
        raise SAEError(f"{path}: d_in={doc['d_in']} but encoder.weight is {tuple(W.shape)}")
    cfg = SAEConfig(
        "topk",
        d,
        m,
        k=int(doc["k"]),
        normalize_decoder=bool(doc.get("normalize_decoder", True)),
        dtype=str(W.dtype).removeprefix("torch."),
    )
    sae = sae_class("topk")(cfg)
    state = {"W_enc": W, "b_enc": st["encoder.bias"], "W_dec": st["W_dec"], "b_dec": st["b_dec"]}
    sae = _assign(sae, {k_: v.contiguous() for k_, v in state.items()}, path)
    return sae.to(device) if device is not None else sae


def to_sparsify(sae: TopKSAE, path) -> Path:
    """Write a TopK SAE as a sparsify checkpoint (``SparseCoder.load_from_disk`` reads it)."""
    path = Path(path)
    sae = copy.deepcopy(sae).cpu()
    sae.fold_scale()
    st, doc = sae.sparsify_state()  # raises for archs sparsify cannot hold
    write_safetensors(path, "sae.safetensors", st)
    write_file(path, "cfg.json", json.dumps(doc))
    return path


__all__ = ["save", "load", "to_saelens", "from_saelens", "from_sparsify", "to_sparsify"]
