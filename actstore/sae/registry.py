"""The SAE classes by arch name, in one place: ``CLASSES[arch]`` and :func:`build`.

Every lookup by name goes through here: :func:`build` (a new SAE from an
:class:`~actstore.sae.config.SAEConfig`), ``load`` and the SAELens / sparsify importers in
``actstore.sae.io``, from each class's own attributes:

- ``SAELENS_READS``: SAELens' ``architecture`` -> the class that reads it (``saelens_reads``);
- ``SAELENS_TRAINED_AS``: ``(architecture, metadata.training_architecture)`` -> the class
  whose export that pair is (``saelens_arch``, ``saelens_trained_as``: BatchTopK and
  Matryoshka SAEs and BatchTopK transcoders, stored in the JumpReLU form), which reads such a
  file back when it :meth:`~actstore.sae.base.SparseAutoencoder.saelens_holds` it;
- ``SPARSIFY_READS``: sparsify's ``(transcode, skip_connection)`` -> the class (``sparsify_reads``).
"""

from __future__ import annotations

from ..errors import SAEError
from .base import SparseAutoencoder
from .clt import CrossLayerTranscoder
from .config import ACTIVATIONS, ARCHS, CLT_ARCHS, SAEConfig
from .crosscoder import CLASSES as CROSSCODERS
from .gated import GatedSAE
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaBatchTopKSAE
from .relu import ReLUSAE
from .topk import BatchTopKSAE, TopKSAE
from .transcoder import CLASSES as TRANSCODERS

CLASSES: dict[str, type[SparseAutoencoder]] = {
    c.arch: c for c in (TopKSAE, BatchTopKSAE, JumpReLUSAE, GatedSAE, ReLUSAE, MatryoshkaBatchTopKSAE)
}
# The archs that take an activation: (arch, activation) -> class. A CLT is one class for
# every activation (the activation is a branch of its encoder, not a class of its own).
BY_ACTIVATION: dict[tuple[str, str], type] = {
    **TRANSCODERS,
    **CROSSCODERS,
    **{(a, f): CrossLayerTranscoder for a in CLT_ARCHS for f in ACTIVATIONS[a]},
}
# A programming error, caught at import rather than at first use: every arch has its class(es).
if set(CLASSES) | {a for a, _ in BY_ACTIVATION} != set(ARCHS) or set(BY_ACTIVATION) != {
    (a, f) for a, acts in ACTIVATIONS.items() for f in acts
}:
    raise ImportError(f"actstore.sae: arch classes {sorted(CLASSES)} do not match config.ARCHS {sorted(ARCHS)}")


def _index(key) -> dict:
    """``{key(c): c}`` over every class whose key is not None; a key two classes share is a
    programming error, caught at import."""
    out: dict = {}
    for c in (*CLASSES.values(), *TRANSCODERS.values(), *CROSSCODERS.values()):
        k = key(c)
        if k is None:
            continue
        if k in out:
            raise ImportError(f"actstore.sae: {out[k].__name__} and {c.__name__} both claim {k!r}")
        out[k] = c
    return out


SAELENS_READS: dict[str, type[SparseAutoencoder]] = _index(lambda c: c.saelens_reads or None)
SAELENS_TRAINED_AS: dict[tuple[str, str], type[SparseAutoencoder]] = _index(
    lambda c: (c.saelens_arch, c.saelens_trained_as) if c.saelens_trained_as else None
)
SPARSIFY_READS: dict[tuple[bool, bool], type[SparseAutoencoder]] = _index(lambda c: c.sparsify_reads)


def sae_class(arch: str, activation: str | None = None) -> type[SparseAutoencoder]:
    """The class of ``arch`` (one of ``ARCHS``); a transcoder's, crosscoder's or CLT's also
    depends on its ``activation`` (default: the arch's first)."""
    if arch in ACTIVATIONS:
        try:
            return BY_ACTIVATION[arch, activation or ACTIVATIONS[arch][0]]
        except KeyError:
            raise SAEError(
                f"arch {arch!r} takes activation {' | '.join(ACTIVATIONS[arch])}, got {activation!r}"
            ) from None
    try:
        return CLASSES[arch]
    except KeyError:
        raise SAEError(f"unknown SAE arch {arch!r}: use one of {', '.join(ARCHS)}") from None


def build(cfg: SAEConfig, **kw) -> SparseAutoencoder:
    """A freshly initialized SAE of ``cfg.arch`` (``kw``: ``device``, ``dtype``, ``seed``)."""
    return sae_class(cfg.arch, cfg.activation)(cfg, **kw)
