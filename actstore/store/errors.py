"""The store's exceptions; they live in ``actstore.errors`` (one module for the package)."""

from ..errors import (
    ActstoreError,
    AppendError,
    CaptureError,
    CorruptDataError,
    FormatVersionError,
    LoaderError,
    MissingObjectError,
    StoreError,
    UnknownHookError,
)

__all__ = [
    "ActstoreError",
    "AppendError",
    "CaptureError",
    "CorruptDataError",
    "FormatVersionError",
    "LoaderError",
    "MissingObjectError",
    "StoreError",
    "UnknownHookError",
]
