"""The v1 activation store: format, storage layer, segment writer and reader."""

from typing import TYPE_CHECKING

from .. import _lazy

if TYPE_CHECKING:  # the same names, imported at once: for type checkers and the API docs (mkdocstrings
    # reads the source statically and follows these imports; they never run)
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

# Imported on first use (actstore/_lazy.py): reading a store's metadata needs no torch.
_lazy.attach(
    __name__,
    {
        ".errors": (
            "AppendError",
            "CaptureError",
            "CorruptDataError",
            "FormatVersionError",
            "LoaderError",
            "StoreError",
            "UnknownHookError",
        ),
        ".format": ("FLAG_BOS", "FLAG_PAD", "FLAG_SPECIAL", "FORMAT_VERSION"),
        ".reader": ("Store",),
        ".writer": ("SegmentWriter",),
    },
)

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
