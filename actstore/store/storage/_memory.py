"""A store held in this process's memory: a dict of key -> immutable bytes.

For tests and throw-away pipelines (``actstore.create("memory://scratch", ...)``), and the
second backend that keeps the storage contract honest. ``memory://NAME`` names one store
per process: every :func:`open_storage` of the same name gets the same object, until
:func:`forget` drops it. Nothing survives the process.

Puts replace one dict entry under a lock, so they are atomic without a temporary
(``atomic_rename`` is False); locks are in-process (two writers of one segment in one
process conflict, as they do on local disk); a blob is the bytes object current when it
was opened, so it is one version by construction.
"""

from __future__ import annotations

import threading
import uuid

from ..errors import MissingObjectError, StoreError
from ._base import Blob, Lock, Storage, VersionConflict, check_key

_REGISTRY: dict[str, "MemoryStorage"] = {}
_REGISTRY_LOCK = threading.Lock()


def named(name: str) -> "MemoryStorage":
    """The process's memory store called ``name``, made on first use."""
    with _REGISTRY_LOCK:
        st = _REGISTRY.get(name)
        if st is None:
            st = _REGISTRY[name] = MemoryStorage(name)
        return st


def forget(name: str) -> None:
    """Drop the memory store called ``name`` (its bytes are freed once nothing holds it)."""
    with _REGISTRY_LOCK:
        _REGISTRY.pop(name, None)


class _MemoryBlob(Blob):
    def __init__(self, data: bytes):
        self._data = data
        self.size = len(data)

    def pread(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


class _MemoryLock(Lock):
    def __init__(self, owner: "MemoryStorage", prefix: str):
        self._owner, self._prefix = owner, prefix

    def release(self) -> None:
        if self._owner is not None:
            with self._owner._mutex:
                self._owner._held.discard(self._prefix)
            self._owner = None


class MemoryStorage(Storage):
    """Objects in a dict, in this process; see the module docstring."""

    supports_lock = True
    atomic_rename = False
    conditional_put = True
    versioned_put = True
    max_gap_bytes = 0
    max_get_bytes = 0

    def __init__(self, name: str | None = None):
        self.name = name or uuid.uuid4().hex
        self.url = f"memory://{self.name}"
        self._objects: dict[str, bytes] = {}
        self._versions: dict[str, str] = {}  # key -> version of its current bytes (a counter)
        self._counter = 0
        self._held: set[str] = set()
        self._mutex = threading.Lock()

    @staticmethod
    def _bytes(data) -> bytes:
        parts = data if isinstance(data, (list, tuple)) else [data]
        return b"".join(bytes(p) for p in parts)

    def _missing(self, key: str) -> StoreError:
        return MissingObjectError(f"missing object {key!r} in store {self.url}")

    def read(self, key: str) -> bytes:
        try:
            return self._objects[check_key(key)]
        except KeyError:
            raise self._missing(key) from None

    def _set(self, key: str, value: bytes) -> str:  # under self._mutex
        self._counter += 1
        self._objects[key] = value
        self._versions[key] = f"m{self._counter}"
        return self._versions[key]

    def write_atomic(self, key: str, data) -> None:
        value = self._bytes(data)  # joined before the lock: readers never see a partial object
        with self._mutex:
            self._set(check_key(key), value)

    def write_exclusive(self, key: str, data) -> bool:
        value = self._bytes(data)
        with self._mutex:
            if check_key(key) in self._objects:
                return False
            self._set(key, value)
            return True

    def write_if(self, key: str, data, expect: str | None) -> str:
        value = self._bytes(data)
        with self._mutex:
            current = self._versions.get(check_key(key))
            if current != expect:
                what = "exists" if expect is None else f"is version {current}, not {expect}"
                raise VersionConflict(f"object {key!r} in store {self.url} {what}", current)
            return self._set(key, value)

    def version(self, key: str) -> str | None:
        return self._versions.get(check_key(key))

    def exists(self, key: str) -> bool:
        return check_key(key) in self._objects

    def size(self, key: str) -> int:
        return len(self.read(key))

    def _under(self, prefix: str) -> list[str]:
        head = f"{check_key(prefix)}/" if prefix else ""
        with self._mutex:
            return [k for k in self._objects if k.startswith(head)]

    def list(self, prefix: str) -> list[str]:
        skip = len(prefix) + 1 if prefix else 0
        return sorted({k[skip:].split("/", 1)[0] for k in self._under(prefix)})

    def delete(self, key: str) -> None:
        with self._mutex:
            self._objects.pop(check_key(key), None)
            self._versions.pop(key, None)

    def delete_prefix(self, prefix: str) -> None:
        keys = self._under(prefix)
        with self._mutex:
            for k in keys:
                self._objects.pop(k, None)
                self._versions.pop(k, None)

    def total_bytes(self, prefix: str = "") -> int:
        return sum(len(self._objects.get(k, b"")) for k in self._under(prefix))

    def lock(self, prefix: str) -> Lock:
        check_key(prefix)
        with self._mutex:
            if prefix in self._held:
                raise StoreError(
                    f"{prefix!r} in {self.url} is being written by another writer; one writer per "
                    "segment: use another segment name"
                )
            self._held.add(prefix)
        return _MemoryLock(self, prefix)

    def open_blob(self, key: str, *, whole: bool = False) -> Blob:
        return _MemoryBlob(self.read(key))
