"""Exceptions raised by the store. Every message is one line naming the cause and what to do."""


class StoreError(Exception):
    """Any problem with a store: missing, unreadable, or refused."""


class FormatVersionError(StoreError):
    """The store was written in a format version this actstore does not read."""


class CorruptDataError(StoreError):
    """A chunk or shard that the manifest says is committed is missing, short or fails to decode."""


class AppendError(StoreError, ValueError):
    """Rows given to a writer do not match the store's schema (hooks, shapes, dtypes)."""


class UnknownHookError(StoreError, KeyError):
    """A hook name that the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CaptureError(StoreError):
    """A capture cannot start or go on: bad hook names, data, options, or a failed write."""


class LoaderError(StoreError, ValueError):
    """A loader cannot start or resume: bad options, no rows, or a state that does not fit."""
