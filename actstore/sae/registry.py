"""The SAE classes by arch name, in one place: ``CLASSES[arch]`` and :func:`build`.

Every lookup by name goes through here: :func:`build` (a new SAE from an
:class:`~actstore.sae.config.SAEConfig`), ``load`` and the SAELens / sparsify importers in
``actstore.sae.io``. ``SAELENS_READS`` maps SAELens' ``architecture`` names to the class
that reads them (each class's ``saelens_reads``).
"""

from __future__ import annotations

from ..errors import SAEError
from .base import SparseAutoencoder
from .config import ARCHS, TRANSCODER_ACTIVATIONS, TRANSCODER_ARCHS, SAEConfig
from .gated import GatedSAE
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaBatchTopKSAE
from .relu import ReLUSAE
from .topk import BatchTopKSAE, TopKSAE
from .transcoder import CLASSES as TRANSCODERS

CLASSES: dict[str, type[SparseAutoencoder]] = {
    c.arch: c for c in (TopKSAE, BatchTopKSAE, JumpReLUSAE, GatedSAE, ReLUSAE, MatryoshkaBatchTopKSAE)
}
# A programming error, caught at import rather than at first use: every arch has its class(es).
if set(CLASSES) | {a for a, _ in TRANSCODERS} != set(ARCHS) or set(TRANSCODERS) != {
    (a, f) for a in TRANSCODER_ARCHS for f in TRANSCODER_ACTIVATIONS
}:
    raise ImportError(f"actstore.sae: arch classes {sorted(CLASSES)} do not match config.ARCHS {sorted(ARCHS)}")

SAELENS_READS: dict[str, type[SparseAutoencoder]] = {c.saelens_reads: c for c in CLASSES.values()}


def sae_class(arch: str, activation: str | None = None) -> type[SparseAutoencoder]:
    """The class of ``arch`` (one of ``ARCHS``); a transcoder's also depends on its
    ``activation`` (default topk)."""
    if arch in TRANSCODER_ARCHS:
        try:
            return TRANSCODERS[arch, activation or "topk"]
        except KeyError:
            raise SAEError(
                f"arch {arch!r} takes activation {' | '.join(TRANSCODER_ACTIVATIONS)}, got {activation!r}"
            ) from None
    try:
        return CLASSES[arch]
    except KeyError:
        raise SAEError(f"unknown SAE arch {arch!r}: use one of {', '.join(ARCHS)}") from None


def build(cfg: SAEConfig, **kw) -> SparseAutoencoder:
    """A freshly initialized SAE of ``cfg.arch`` (``kw``: ``device``, ``dtype``, ``seed``)."""
    return sae_class(cfg.arch, cfg.activation)(cfg, **kw)
