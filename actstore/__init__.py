"""actstore: capture, store and stream transformer activations.

Public entry points:

- :func:`open` (read a store: :class:`Store`), :func:`create` (write a segment:
  :class:`SegmentWriter`);
- :func:`capture` with :class:`CaptureConfig` (model activations into a store);
- :class:`ActivationLoader` and :class:`ActivationDataset` (shuffled, resumable batches);
- subpackages: ``actstore.sae`` (SAEs and their trainer), ``actstore.ops`` (fused SAE ops),
  ``actstore.models`` (hooks, recorder, :class:`~actstore.models.Intervention`),
  ``actstore.analysis`` (streaming analyses over a store);
- :func:`steer` (add steering vectors after the prompt during ``generate`` or a forward);
- every error is an ``actstore.errors.ActstoreError``; the common ones are re-exported here.

See README.md, and docs/ARCHITECTURE.md for how the parts fit.
"""

from typing import TYPE_CHECKING

from . import _lazy
from ._version import __version__

if TYPE_CHECKING:  # the same names, imported at once: for type checkers and the API docs (mkdocstrings
    # reads the source statically and follows these imports; they never run)
    from .api import create, open
    from .capture import CaptureConfig, capture
    from .errors import ActstoreError
    from .loader import ActivationDataset, ActivationLoader
    from .store import (
        FLAG_BOS,
        FLAG_PAD,
        FLAG_SPECIAL,
        FORMAT_VERSION,
        AppendError,
        CaptureError,
        CorruptDataError,
        FormatVersionError,
        LoaderError,
        SegmentWriter,
        Store,
        StoreError,
        UnknownHookError,
    )

# Imported on first use (_lazy.py): ``import actstore`` stays free of torch, which the
# command line's help and ``actstore info`` never need.
_lazy.attach(
    __name__,
    {
        ".api": ("create", "open"),
        ".capture": ("CaptureConfig", "capture"),
        ".errors": ("ActstoreError",),
        ".loader": ("ActivationDataset", "ActivationLoader"),
        ".store": (
            "FLAG_BOS",
            "FLAG_PAD",
            "FLAG_SPECIAL",
            "FORMAT_VERSION",
            "AppendError",
            "CaptureError",
            "CorruptDataError",
            "FormatVersionError",
            "LoaderError",
            "SegmentWriter",
            "Store",
            "StoreError",
            "UnknownHookError",
        ),
    },
)


def steer(model, vectors, scale: float = 1.0, positions: str = "after_prompt", **kw):
    """``actstore.analysis.steer.steer``: a context manager that adds ``scale * vector`` at
    each vector's hook, at the positions after the prompt (see that module)."""
    from .analysis.steer import steer as _steer  # deferred: the analysis package is not needed to read a store

    return _steer(model, vectors, scale, positions, **kw)


__all__ = [
    "steer",
    "__version__",
    "create",
    "open",
    "capture",
    "ActivationLoader",
    "ActivationDataset",
    "ActstoreError",
    "LoaderError",
    "Store",
    "SegmentWriter",
    "StoreError",
    "AppendError",
    "CaptureError",
    "CaptureConfig",
    "CorruptDataError",
    "FormatVersionError",
    "UnknownHookError",
    "FORMAT_VERSION",
    "FLAG_BOS",
    "FLAG_PAD",
    "FLAG_SPECIAL",
]
