"""The SAE classes by arch name, in one place: ``CLASSES[arch]`` and :func:`build`.

Every lookup by name goes through here: :func:`build` (a new SAE from an
:class:`~actstore.sae.config.SAEConfig`), ``load`` and the SAELens / sparsify importers in
``actstore.sae.io``. ``SAELENS_READS`` maps SAELens' ``architecture`` names to the class
that reads them (each class's ``saelens_reads``).
"""

from __future__ import annotations

from ..errors import SAEError
from .base import SparseAutoencoder
from .config import ARCHS, SAEConfig
from .gated import GatedSAE
from .jumprelu import JumpReLUSAE
from .relu import ReLUSAE
from .topk import BatchTopKSAE, TopKSAE

CLASSES: dict[str, type[SparseAutoencoder]] = {
    c.arch: c for c in (TopKSAE, BatchTopKSAE, JumpReLUSAE, GatedSAE, ReLUSAE)
}
if set(CLASSES) != set(ARCHS):  # a programming error, caught at import rather than at first use
    raise ImportError(f"actstore.sae: arch classes {sorted(CLASSES)} do not match config.ARCHS {sorted(ARCHS)}")

SAELENS_READS: dict[str, type[SparseAutoencoder]] = {c.saelens_reads: c for c in CLASSES.values()}


def sae_class(arch: str) -> type[SparseAutoencoder]:
    """The class of ``arch`` (one of ``ARCHS``)."""
    try:
        return CLASSES[arch]
    except KeyError:
        raise SAEError(f"unknown SAE arch {arch!r}: use one of {', '.join(ARCHS)}") from None


def build(cfg: SAEConfig, **kw) -> SparseAutoencoder:
    """A freshly initialized SAE of ``cfg.arch`` (``kw``: ``device``, ``dtype``, ``seed``)."""
    return sae_class(cfg.arch)(cfg, **kw)
