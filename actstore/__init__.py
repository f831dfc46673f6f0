"""actstore: capture, store and stream transformer activations.

Public entry points: :func:`open` (read a store), :func:`create` (write a segment),
:class:`Store`, :class:`SegmentWriter` and the errors they raise. See README.md.
"""

from ._version import __version__
from .api import create, open
from .capture import CaptureConfig, capture
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

__all__ = [
    "__version__",
    "create",
    "open",
    "capture",
    "ActivationLoader",
    "ActivationDataset",
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
