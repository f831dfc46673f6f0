"""Saving and loading SAEs: actstore's own format, SAELens' and sparsify's. Never pickles.

- actstore: ``DIR/config.json`` (:class:`~actstore.sae.config.SAEConfig`) and
  ``DIR/sae.safetensors`` (the module's state dict). ``save`` folds the training
  normalization into the weights first, so a saved SAE takes raw activations.
- SAELens (``cfg.json`` + ``sae_weights.safetensors``): ``W_enc`` is ``[d, m]`` there.
  topk -> ``topk``; relu -> ``standard``; jumprelu -> ``jumprelu``; gated -> ``gated``;
  batchtopk and matryoshka_batchtopk -> ``jumprelu`` with the inference threshold on every
  latent (what SAELens does with its own at inference), with SAELens' record of what was
  trained (``metadata.training_architecture``, ``training_architecture_details``: ``k``,
  ``matryoshka_widths``), by which the import reads them back as the class they were.
  Transcoders: jumprelu -> ``jumprelu_transcoder`` / ``jumprelu_skip_transcoder``, batchtopk
  -> the same with its threshold, topk -> none (SAELens has none); ``d_out``,
  ``apply_b_dec_to_input`` false, ``metadata.hook_name`` the source and ``hook_name_out``
  the target. Imports read those, SAELens' ``batchtopk`` and ``matryoshka_batchtopk``
  training saves (``rescale_acts_by_decoder_norm`` folded into the weights) and its
  inference saves of them. Every export folds the normalization (``scale``, ``scale_out``).
- sparsify (``cfg.json`` + ``sae.safetensors``, keys ``encoder.weight [m, d]``,
  ``encoder.bias``, ``W_dec``, ``b_dec``, ``W_skip``): TopK SAEs and TopK (skip)
  transcoders (``transcode``, ``skip_connection``; ``d_out == d`` there) import and export.
"""

from __future__ import annotations

import copy
import json
from importlib import metadata as _dist_metadata
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..errors import SAEError, SAEFileError
from ..store.storage import open_storage
from .base import SparseAutoencoder
from .config import SAEConfig
from .registry import SAELENS_READS, SAELENS_TRAINED_AS, SPARSIFY_READS, build
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
    with the normalization (``scale``, a transcoder's ``scale_out``) folded in is written
    (``sae`` itself is left as it is)."""
    path = Path(path)
    c = sae.cfg
    scales = [c.scale, c.scale_out, *(c.source_scales or []), *(c.target_scales or [])]
    if fold_scale and any(v != 1.0 for v in scales):
        dist = getattr(sae, "dist", None)  # a process group does not deep-copy; the copy needs none
        if dist is not None:
            sae.dist = None
        try:
            sae = copy.deepcopy(sae)
        finally:
            if dist is not None:
                sae.dist = dist
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


def load(path, *, device=None, **kw) -> SparseAutoencoder:
    """Load an SAE written by :func:`save` (``kw``: a sharded CLT's ``shard`` and ``dist``)."""
    path = Path(path)
    cfg = SAEConfig.from_dict(_read_json(path / "config.json", "actstore SAE"))
    state = _load_weights(path / "sae.safetensors", "actstore SAE")
    sae = build(cfg, **kw)
    _assign(sae, state, path / "sae.safetensors")
    return sae.to(device) if device is not None else sae


# -- SAELens ---------------------------------------------------------------------------------


def _saelens_version() -> str:
    """The SAELens version whose format :func:`to_saelens` writes, for ``metadata.sae_lens_version``:
    the installed one, else 6.0.0 (the format's first). SAELens reads a file without it as a
    pre-6.0 config and rebuilds ``metadata`` from top-level keys, dropping what is written there."""
    try:
        return _dist_metadata.version("sae-lens")
    except _dist_metadata.PackageNotFoundError:
        return "6.0.0"


def to_saelens(sae: SparseAutoencoder, path) -> Path:
    """Write SAELens' on-disk format (``SAE.load_from_disk(path)`` reads it), with the
    normalization folded in; an arch SAELens cannot hold is a one-line SAEError."""
    path = Path(path)
    sae = copy.deepcopy(sae).cpu()
    sae.fold_scale()
    c = sae.cfg
    state = sae.saelens_state()  # raises for what SAELens cannot hold, before anything is written
    names = {"hook_name": c.hook, "hook_name_out": c.target if c.is_transcoder else None}
    doc = {
        "d_in": c.d,
        "d_sae": c.m,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        # What our encoder subtracts: b_dec for an SAE, nothing for a transcoder (SAELens forbids it there).
        "apply_b_dec_to_input": sae.pre_bias is not None,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "architecture": sae.saelens_arch,
        "metadata": {
            "sae_lens_version": _saelens_version(),
            **{k: v for k, v in names.items() if v},
            **sae.saelens_metadata(),
        },
        **sae.saelens_config(),
    }
    write_safetensors(path, "sae_weights.safetensors", state)
    write_file(path, "cfg.json", json.dumps(doc))
    return path


def _fold_decoder_norms(st: dict) -> dict:
    """SAELens' ``rescale_acts_by_decoder_norm`` (TopK family: the pre-activations are
    multiplied by the decoder row norms ``n`` before the top-k, and the code divided by them
    before the decode) folded into the weights: ``W_enc *= n``, ``b_enc *= n``, ``W_dec /= n``
    give the same code and reconstruction without it (SAELens' own ``fold_W_dec_norm``)."""
    W_dec = st["W_dec"].float()
    n = W_dec.norm(dim=1)
    safe = torch.where(n > 0, n, torch.ones_like(n))  # a zero row stays zero (and never fires)
    dtype = st["W_dec"].dtype
    return {
        **st,
        "W_enc": (st["W_enc"].float() * n[None, :]).to(dtype),
        "b_enc": (st["b_enc"].float() * n).to(dtype),
        "W_dec": (W_dec / safe[:, None]).to(dtype),
    }


def from_saelens(path, *, device=None) -> SparseAutoencoder:
    """Load an SAE or transcoder saved by SAELens (``save_model`` / ``save_inference_model``)
    or written by :func:`to_saelens`, in eval mode (a BatchTopK SAE then encodes with its
    inference threshold, as SAELens' JumpReLU form does)."""
    path = Path(path)
    doc = _read_json(path / "cfg.json", "SAELens SAE")
    st = _load_weights(path / "sae_weights.safetensors", "SAELens SAE")
    md = doc.get("metadata") or {}
    arch_in = doc.get("architecture", "standard")
    # A file in another arch's form (BatchTopK / Matryoshka saved as JumpReLU) that records
    # what was trained reads back as that class, when the file holds it exactly.
    cls = SAELENS_TRAINED_AS.get((arch_in, md.get("training_architecture")))
    if cls is None or not cls.saelens_holds(doc, st):
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
    if doc.get("reshape_activations", "none") != "none":
        raise SAEError(f"{path}: reshape_activations={doc['reshape_activations']!r} is not supported")
    if doc.get("rescale_acts_by_decoder_norm"):
        st = _fold_decoder_norms(st)
    d, m = int(doc["d_in"]), int(doc["d_sae"])
    cfg = cls.config_from_saelens(doc, st, d, m, str(st["W_dec"].dtype).removeprefix("torch."))
    cfg.hook = md.get("hook_name")
    cfg.target = md.get("hook_name_out") if cfg.is_transcoder else None
    sae = build(cfg)
    # Their pre-activation is x W + b without apply_b_dec_to_input; where ours subtracts b_dec
    # first (an SAE), W b_dec folds into the encoder biases. A transcoder subtracts nothing.
    theirs, ours = bool(doc.get("apply_b_dec_to_input", True)), sae.pre_bias is not None
    if theirs and not ours:
        raise SAEError(
            f"{path}: apply_b_dec_to_input is true, but a {sae.arch}'s b_dec is in its target's space "
            "(SAELens forbids it for transcoders): the file is damaged"
        )
    shift = st["W_enc"].t().float() @ st["b_dec"].float() if ours and not theirs else None
    state = sae.state_from_saelens(st, path, shift)
    sae = _assign(sae, {k_: v.contiguous() for k_, v in state.items()}, path)
    sae.eval()
    return sae.to(device) if device is not None else sae


# -- sparsify --------------------------------------------------------------------------------


def from_sparsify(path, *, device=None) -> TopKSAE:
    """Load a sparsify TopK checkpoint (``SparseCoder.save_to_disk``): an SAE, or with
    ``transcode`` a TopK transcoder (a skip transcoder with ``skip_connection``)."""
    path = Path(path)
    doc = _read_json(path / "cfg.json", "sparsify checkpoint")
    st = _load_weights(path / "sae.safetensors", "sparsify checkpoint")
    if doc.get("activation", "topk") != "topk":
        raise SAEError(f"{path}: sparsify activation {doc['activation']!r} is not supported (only topk)")
    cls = SPARSIFY_READS.get((bool(doc.get("transcode")), bool(doc.get("skip_connection"))))
    if cls is None:
        raise SAEError(f"{path}: sparsify's skip connection without transcode (an SAE with W_skip) is not supported")
    W = st["encoder.weight"]
    m, d = W.shape
    if int(doc.get("d_in", d)) != d:
        raise SAEError(f"{path}: d_in={doc['d_in']} but encoder.weight is {tuple(W.shape)}")
    cfg = cls.new_config(
        d,
        m,
        d_out=int(st["W_dec"].shape[-1]),
        k=int(doc["k"]),
        normalize_decoder=bool(doc.get("normalize_decoder", True)),
        dtype=str(W.dtype).removeprefix("torch."),
    )
    sae = build(cfg)
    state = sae.state_from_sparsify(st)
    sae = _assign(sae, {k_: v.contiguous() for k_, v in state.items()}, path)
    return sae.to(device) if device is not None else sae


def to_sparsify(sae: TopKSAE, path) -> Path:
    """Write a TopK SAE or TopK (skip) transcoder with ``d_out == d`` as a sparsify checkpoint
    (``SparseCoder.load_from_disk`` reads it), with the normalization folded in."""
    path = Path(path)
    sae = copy.deepcopy(sae).cpu()
    sae.fold_scale()
    st, doc = sae.sparsify_state()  # raises for archs sparsify cannot hold
    write_safetensors(path, "sae.safetensors", st)
    write_file(path, "cfg.json", json.dumps(doc))
    return path


__all__ = ["save", "load", "to_saelens", "from_saelens", "from_sparsify", "to_sparsify"]
