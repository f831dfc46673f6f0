"""The one storage layer every store read and write goes through.

Keys are relative POSIX paths inside the store ("segments/r0/acts/x/c/0/0"). Every key
is checked by :func:`check_key` before it touches the file system, so a manifest or an
attribute cannot point outside the store.

Only local paths are implemented. Object storage will be a second ``Storage`` subclass
behind :func:`open_storage`; callers never branch on the kind of storage. The methods
are the ones object storage also offers cheaply: whole-object put (atomic), ranged get,
prefix listing, delete.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from .errors import StoreError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative path inside a store, else raise.

    Refused: empty keys, absolute paths, ``..`` or ``.`` components, backslashes,
    drive letters and URLs. Used for every key, and for every path-valued field read
    from a manifest or attribute.
    """
    if not isinstance(key, str) or not key:
        raise StoreError(f"invalid store key {key!r}: must be a non-empty relative path")
    if _URL.match(key) or key.startswith("/") or "\\" in key or re.match(r"^[A-Za-z]:", key):
        raise StoreError(f"refusing path {key!r}: it points outside the store (absolute path or URL)")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"refusing path {key!r}: it points outside the store ('..', '.' or empty component)")
    return key


class Storage:
    """Abstract key -> bytes storage. Subclasses: :class:`LocalStorage`."""

    url: str

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def write_atomic(self, key: str, data) -> None:
        """Write ``data`` (bytes-like or a list of them) so that readers see either
        the old object or the whole new one, and it is durable on return."""
        raise NotImplementedError

    def write_exclusive(self, key: str, data) -> bool:
        """Like :meth:`write_atomic` but only if ``key`` does not exist; returns
        whether this call created it."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def size(self, key: str) -> int:
        raise NotImplementedError

    def list(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (one level, sorted)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Delete ``key`` if it exists."""
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> None:
        raise NotImplementedError

    def total_bytes(self, prefix: str = "") -> int:
        """Bytes stored under ``prefix`` (the whole store for "")."""
        raise NotImplementedError

    def lock(self, prefix: str):
        """Take an exclusive lock on ``prefix`` for this process; returns a handle with
        ``release()``. Raises :class:`StoreError` if another process holds it."""
        raise NotImplementedError

    def discard_temporaries(self, prefix: str) -> None:
        """Remove leftovers of interrupted writes under ``prefix``."""

    def open_blob(self, key: str) -> "Blob":
        """Open ``key`` once for several ranged reads that must see one version of it."""
        raise NotImplementedError


class Blob:
    """One version of one object: ``size`` and ``pread``. Thread-safe."""

    size: int

    def pread(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _LocalBlob(Blob):
    def __init__(self, path: Path, key: str, url: str):
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StoreError(f"missing object {key!r} in store {url}") from None
        # The fd pins this inode: a concurrent atomic replace of the key by its writer
        # does not mix two versions within one read.
        self.size = os.fstat(self._fd).st_size

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _LocalLock:
    def __init__(self, fd: int):
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage(Storage):
    """A directory on the local file system.

    Durability: :meth:`write_atomic` writes a temporary file in the same directory,
    fsyncs it, renames it over the key, and fsyncs the directory, so a SIGKILL or
    power loss leaves either the old or the new object, never a torn one. Temporary
    files start with ``.tmp-`` and are ignored by :meth:`list`.
    """

    def __init__(self, root: str | os.PathLike, *, durable: bool = True):
        self.root = Path(root).absolute()
        self.url = str(self.root)
        # durable=False skips fsync; only for throw-away stores in benchmarks of the
        # codec path, never the default.
        self.durable = durable

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"missing object {key!r} in store {self.url}") from None

    def _write_tmp(self, path: Path, data) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:12]}"
        parts = data if isinstance(data, (list, tuple)) else [data]
        try:
            with open(tmp, "wb") as f:
                for part in parts:
                    f.write(part)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {path} ({e.strerror or e}); free disk space or fix permissions, then resume") from e
        return tmp

    def write_atomic(self, key: str, data) -> None:
        path = self._path(key)
        tmp = self._write_tmp(path, data)
        os.replace(tmp, path)
        if self.durable:
            _fsync_dir(path.parent)

    def write_exclusive(self, key: str, data) -> bool:
        path = self._path(key)
        if path.exists():
            return False
        tmp = self._write_tmp(path, data)
        try:
            # link() fails if the target exists: an atomic create-if-absent.
            os.link(tmp, path)
            created = True
        except FileExistsError:
            created = False
        finally:
            tmp.unlink(missing_ok=True)
        if created and self.durable:
            _fsync_dir(path.parent)
        return created

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise StoreError(f"missing object {key!r} in store {self.url}") from None

    def list(self, prefix: str) -> list[str]:
        path = self._path(prefix) if prefix else self.root
        try:
            names = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in names if not n.startswith(".tmp-"))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        import shutil

        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def total_bytes(self, prefix: str = "") -> int:
        base = self._path(prefix) if prefix else self.root
        total = 0
        for dirpath, _, files in os.walk(base):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    pass
        return total


    def lock(self, prefix: str):
        import fcntl

        path = self._path(prefix)
        path.mkdir(parents=True, exist_ok=True)
        # flock on the directory itself: no lock file to clean up, and the kernel drops
        # the lock when the holder dies (SIGKILL included).
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{prefix!r} in {self.url} is being written by another process; one writer per segment: use another segment name") from None
        return _LocalLock(fd)

    def discard_temporaries(self, prefix: str) -> None:
        for dirpath, _, files in os.walk(self._path(prefix)):
            for name in files:
                if name.startswith(".tmp-"):
                    Path(dirpath, name).unlink(missing_ok=True)

    def open_blob(self, key: str) -> Blob:
        return _LocalBlob(self._path(key), key, self.url)


def open_storage(location: str | os.PathLike, *, durable: bool = True) -> Storage:
    """Return the storage for a local path or ``file://`` URL.

    Object-storage URLs (s3://, gs://, ...) are not supported yet and get a one-line
    error rather than a silent local directory named "s3:".
    """
    loc = os.fspath(location)
    if loc.startswith("file://"):
        loc = loc[len("file://"):]
    elif _URL.match(loc):
        scheme = loc.split("://", 1)[0]
        raise StoreError(f"unsupported store URL scheme {scheme!r}: only local paths are supported so far; copy the store to local disk")
    return LocalStorage(loc, durable=durable)
