"""The storage contract every backend keeps: keys -> bytes, with declared capabilities.

Keys are relative POSIX paths inside the store ("segments/r0/acts/x/c/0/0"). Every key is
checked by :func:`check_key` before a backend touches anything, so a manifest or an
attribute cannot point outside the store.

The abstract methods are the ones object storage also offers cheaply: whole-object put
(atomic: a reader sees the old object or the whole new one), ranged get through
:class:`Blob`, one-level listing, delete. What only some backends can do is declared by
a capability flag, and callers check the flag instead of assuming the method works:

- ``supports_lock``: :meth:`Storage.lock` gives an exclusive, crash-released lock on a
  prefix (a local ``flock``; object storage has none, so there one writer per segment is
  the caller's promise).
- ``atomic_rename``: puts are a temporary object renamed into place, so a crash can leave
  temporaries behind, which :meth:`Storage.discard_temporaries` removes. Backends whose
  put is atomic by itself (object storage, memory) leave none.
- ``conditional_put``: :meth:`Storage.write_exclusive` creates an object only if it is
  absent, atomically (a local hard link; ``If-None-Match: *`` on object storage).
- ``versioned_put``: :meth:`Storage.write_if` creates (``If-None-Match: *``) or replaces
  only the version the caller last saw (``If-Match: <etag>``), and :meth:`Storage.version`
  names the current version. Object storage, where no lock exists, publishes commits this
  way (store/lease.py, store/writer.py); a lost response on such a put is resolved inside
  the backend by reading the object back.

``max_gap_bytes``, ``max_get_bytes``: ranged reads of one object no further apart than
the gap are merged into one get of at most ``max_get_bytes`` (see ``store/chunks.py``).
Where a get costs a system call, not a round trip (local disk, memory), ``max_get_bytes``
is 0: nothing is merged. ``inflight``: ranged gets worth keeping in flight at once (object
storage: the latency-bandwidth product; 0 where a get is a system call): readers size
their pools to at least this.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

from ..errors import StoreError

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative path inside a store, else raise.

    Refused: empty keys, absolute paths, ``..`` or ``.`` components, backslashes,
    drive letters and URLs. Used for every key, and for every path-valued field read
    from a manifest or attribute.
    """
    if not isinstance(key, str) or not key:
        raise StoreError(f"invalid store key {key!r}: must be a non-empty relative path")
    if URL.match(key) or key.startswith("/") or "\\" in key or re.match(r"^[A-Za-z]:", key):
        raise StoreError(f"refusing path {key!r}: it points outside the store (absolute path or URL)")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"refusing path {key!r}: it points outside the store ('..', '.' or empty component)")
    return key


class Blob(ABC):
    """One version of one object, opened for several ranged reads: ``size`` and ``pread``.

    Thread-safe. A concurrent atomic replace of the key does not mix two versions within
    one blob's reads."""

    size: int

    @abstractmethod
    def pread(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset`` (fewer only at the end of the object)."""

    def close(self) -> None:  # noqa: B027 - optional: a blob that holds nothing has nothing to release
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VersionConflict(StoreError):
    """A conditional put found another version than the one expected (another writer's
    object, or one created since). ``current`` is the version found (None: absent)."""

    def __init__(self, message: str, current: str | None = None):
        super().__init__(message)
        self.current = current


class Lock(ABC):
    """A held lock; ``release()`` is idempotent."""

    @abstractmethod
    def release(self) -> None: ...


class Storage(ABC):
    """Abstract key -> bytes storage. Backends: ``_local.LocalStorage``, ``_memory.MemoryStorage``."""

    url: str
    supports_lock: bool = False
    atomic_rename: bool = False
    conditional_put: bool = False
    versioned_put: bool = False
    max_gap_bytes: int = 0
    max_get_bytes: int = 0
    inflight: int = 0

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The whole object; :class:`StoreError` if it is missing."""

    @abstractmethod
    def write_atomic(self, key: str, data) -> None:
        """Write ``data`` (bytes-like or a list of them) so that readers see either the old
        object or the whole new one, and it is durable on return."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether object ``key`` exists."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size of object ``key`` in bytes; :class:`StoreError` if it is missing."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (one level, sorted; "" is the root), objects and
        prefixes alike; [] when there are none. Temporaries are never listed."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete object ``key`` if it exists."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix``."""

    @abstractmethod
    def total_bytes(self, prefix: str = "") -> int:
        """Bytes stored under ``prefix`` (the whole store for "")."""

    @abstractmethod
    def open_blob(self, key: str, *, whole: bool = False) -> Blob:
        """Open ``key`` once for several ranged reads that must see one version of it;
        :class:`StoreError` if it is missing. ``whole``: the caller will read most of it,
        or it may be replaced meanwhile (a partial shard): a backend with round trips
        fetches it in one get now."""

    # -- capabilities: callers check the flag before calling ------------------------------

    def write_exclusive(self, key: str, data) -> bool:
        """Like :meth:`write_atomic` but only if ``key`` does not exist; returns whether this
        call created it. Only where ``conditional_put``."""
        raise StoreError(f"storage {self.url} has no conditional put; check Storage.conditional_put before calling")

    def write_if(self, key: str, data, expect: str | None) -> str:
        """Conditional put: create ``key`` if ``expect`` is None and it is absent, or replace
        it if its current version is ``expect``; returns the new version. Raises
        :class:`VersionConflict` otherwise. Only where ``versioned_put``."""
        raise StoreError(f"storage {self.url} has no versioned put; check Storage.versioned_put before calling")

    def version(self, key: str) -> str | None:
        """The current version (ETag) of ``key``, None if it is absent. Only where ``versioned_put``."""
        raise StoreError(f"storage {self.url} has no versioned put; check Storage.versioned_put before calling")

    def lock(self, prefix: str) -> Lock:
        """Take an exclusive lock on ``prefix``, released by ``release()`` or when the holder
        dies; :class:`StoreError` if another holder has it. Only where ``supports_lock``."""
        raise StoreError(f"storage {self.url} has no locks; check Storage.supports_lock before calling")

    def discard_temporaries(self, prefix: str) -> None:
        """Remove leftovers of interrupted writes under ``prefix``. Only where ``atomic_rename``."""
        raise StoreError(f"storage {self.url} leaves no temporaries; check Storage.atomic_rename before calling")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
