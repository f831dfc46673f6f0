"""The one storage layer every store read and write goes through.

``open_storage(location)`` picks the backend from the location; callers never branch on
the kind of storage, only on its declared capabilities (``supports_lock``,
``atomic_rename``, ``conditional_put``; see ``_base``). One module per backend:

- ``_local``: a local path or ``file://`` URL (durable puts by fsync + rename, flock).
- ``_memory``: ``memory://NAME``, a dict in this process (tests, throw-away pipelines).

- ``_object``: ``s3://``, ``gs://``, ``az://`` through obstore (``pip install actstore[s3]``),
  with ``_cache`` its optional local whole-shard disk cache.

Any other URL scheme gets a one-line error rather than a silent local directory named "http:".
"""

from __future__ import annotations

import os

from ..errors import StoreError
from ._base import URL, Blob, Lock, Storage, VersionConflict, check_key
from ._local import LocalStorage, fsync_path
from ._memory import MemoryStorage, forget, named

OBJECT_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss", "adl")

__all__ = [
    "Blob",
    "Lock",
    "Storage",
    "VersionConflict",
    "LocalStorage",
    "MemoryStorage",
    "check_key",
    "fsync_path",
    "open_storage",
    "forget",
]


def open_storage(location: str | os.PathLike, *, durable: bool = True) -> Storage:
    """The storage for a local path, a ``file://`` URL, ``memory://NAME``, or an object
    storage URL (``s3://bucket/prefix``, ``gs://...``, ``az://...``).

    durable: fsync local objects before they are renamed into place (benchmarks of the codec
        path turn it off; memory is never durable).
    """
    loc = os.fspath(location)
    if loc.startswith("file://"):
        return LocalStorage(loc[len("file://") :], durable=durable)
    if loc.startswith("memory://"):
        name = loc[len("memory://") :]
        if not name or "/" in name:
            raise StoreError(f"memory store URL {loc!r} needs one name without '/', like memory://scratch")
        return named(name)
    if URL.match(loc):
        scheme = loc.split("://", 1)[0]
        if scheme.lower() in OBJECT_SCHEMES:
            from ._object import ObjectStorage  # obstore is optional: imported only for such URLs

            return ObjectStorage(loc)
        raise StoreError(
            f"unsupported store URL scheme {scheme!r}: use a local path, file://, memory://, s3://, gs:// or az://"
        )
    return LocalStorage(loc, durable=durable)
