"""The v1 activation store: format, storage layer, segment writer and reader."""

from .. import _lazy

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
