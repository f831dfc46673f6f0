"""``actstore.sae``: the SAE family on actstore's fused ops, their file formats, and the
trainer.

- modules: :class:`TopKSAE`, :class:`BatchTopKSAE`, :class:`JumpReLUSAE`,
  :class:`GatedSAE`, :class:`ReLUSAE` (one interface: ``encode`` / ``decode`` /
  ``forward`` / ``loss``; see ``base.py``), the transcoders, crosscoders
  (:class:`TopKCrosscoder`, :class:`BatchTopKCrosscoder`, :class:`ReLUCrosscoder`) and
  :class:`CrossLayerTranscoder`, built from an :class:`SAEConfig` by :func:`build`
  (``registry.py``: arch name -> class);
- formats: :func:`save` / :func:`load` (safetensors + JSON), :func:`to_saelens` /
  :func:`from_saelens`, :func:`from_sparsify` / :func:`to_sparsify`;
- training: :func:`train` (``actstore train`` on the command line).
"""

from typing import TYPE_CHECKING

from .. import _lazy

if TYPE_CHECKING:  # the same names, imported at once: for type checkers and the API docs (mkdocstrings
    # reads the source statically and follows these imports; they never run)
    from .base import SparseAutoencoder
    from .clt import CrossLayerTranscoder
    from .config import ARCHS, SAEConfig, TrainConfig
    from .crosscoder import BatchTopKCrosscoder, ReLUCrosscoder, TopKCrosscoder
    from .gated import GatedSAE
    from .io import from_saelens, from_sparsify, load, save, to_saelens, to_sparsify
    from .jumprelu import JumpReLUSAE
    from .latents import Latents
    from .registry import build
    from .relu import ReLUSAE
    from .topk import BatchTopKSAE, TopKSAE
    from .train import train

# Imported on first use (actstore/_lazy.py): ``actstore train --help`` reads TrainConfig
# without importing the SAEs (and torch).
_lazy.attach(
    __name__,
    {
        ".base": ("SparseAutoencoder",),
        ".clt": ("CrossLayerTranscoder",),
        ".crosscoder": ("BatchTopKCrosscoder", "ReLUCrosscoder", "TopKCrosscoder"),
        ".config": ("ARCHS", "SAEConfig", "TrainConfig"),
        ".gated": ("GatedSAE",),
        ".io": ("from_saelens", "from_sparsify", "load", "save", "to_saelens", "to_sparsify"),
        ".jumprelu": ("JumpReLUSAE",),
        ".latents": ("Latents",),
        ".registry": ("build",),
        ".relu": ("ReLUSAE",),
        ".topk": ("BatchTopKSAE", "TopKSAE"),
        ".train": ("train",),
    },
)

__all__ = [
    "ARCHS",
    "SAEConfig",
    "SparseAutoencoder",
    "Latents",
    "TopKSAE",
    "BatchTopKSAE",
    "JumpReLUSAE",
    "GatedSAE",
    "ReLUSAE",
    "TopKCrosscoder",
    "BatchTopKCrosscoder",
    "ReLUCrosscoder",
    "CrossLayerTranscoder",
    "build",
    "save",
    "load",
    "to_saelens",
    "from_saelens",
    "from_sparsify",
    "to_sparsify",
    "TrainConfig",
    "train",
]
