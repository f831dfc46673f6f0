"""The v1 activation store: format, storage layer, segment writer and reader."""

from .errors import (
    AppendError,
    CaptureError,
    CorruptDataError,
    FormatVersionError,
    LoaderError,
    StoreError,
    UnknownHookError,
)
from .format import FLAG_BOS, FLAG_PAD, FLAG_SPECIAL, FORMAT_VERSION
from .reader import Store
from .writer import SegmentWriter

__all__ = [
    "AppendError",
    "CaptureError",
    "LoaderError",
    "CorruptDataError",
    "FormatVersionError",
    "StoreError",
    "UnknownHookError",
    "FLAG_BOS",
    "FLAG_PAD",
    "FLAG_SPECIAL",
    "FORMAT_VERSION",
    "Store",
    "SegmentWriter",
]
