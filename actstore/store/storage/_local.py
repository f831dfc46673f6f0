"""A store in a directory on the local file system.

Durability: :meth:`LocalStorage.write_atomic` writes a temporary file in the key's
directory, fsyncs it, renames it over the key and fsyncs the directory, so a SIGKILL or a
power loss leaves either the old or the new object, never a torn one. Temporaries start
with ``.tmp-``; :meth:`list` hides them and :meth:`discard_temporaries` removes them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from pathlib import Path

from ..errors import MissingObjectError, StoreError
from ._base import Blob, Lock, Storage, check_key

TMP = ".tmp-"


class _LocalBlob(Blob):
    def __init__(self, path: Path, key: str, url: str):
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError):
            raise MissingObjectError(f"missing object {key!r} in store {url}") from None
        # The fd pins this inode: a concurrent atomic replace of the key by its writer
        # does not mix two versions within one read.
        self.size = os.fstat(self._fd).st_size

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _LocalLock(Lock):
    def __init__(self, fd: int):
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by its path (a folder's fsync makes its entries durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path, durable: bool) -> None:
    """``mkdir -p path``; where ``durable``, each folder it creates is made durable by an
    fsync of its parent. A new folder's entry lives in its parent folder: the fsync of a
    file and of the file's own folder does not cover it, so without this a power loss after
    a commit could lose a new segment's, shard's or commit's folder, and the whole store with
    a new root (found by tests/store/test_power_loss.py's strictest disk)."""
    if path.is_dir():
        return
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            if not p.is_dir():
                raise
            # made meanwhile by another thread or process, which may not have synced it yet
        if durable:
            fsync_path(p.parent)


class LocalStorage(Storage):
    """A directory on the local file system; see the module docstring for durability."""

    supports_lock = True
    atomic_rename = True
    conditional_put = True
    max_gap_bytes = 0
    max_get_bytes = 0  # a pread costs a system call, not a round trip: never merge (see store/chunks.py)

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
        except (FileNotFoundError, IsADirectoryError):
            raise MissingObjectError(f"missing object {key!r} in store {self.url}") from None

    def _write_tmp(self, path: Path, data) -> Path:
        tmp = path.parent / f"{TMP}{path.name}-{uuid.uuid4().hex[:12]}"
        parts = data if isinstance(data, (list, tuple)) else [data]
        try:
            make_dirs(path.parent, self.durable)
            with open(tmp, "wb") as f:
                for part in parts:
                    f.write(part)
                if self.durable:
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(
                f"cannot write {path} ({e.strerror or e}); free disk space or fix permissions, then resume"
            ) from e
        return tmp

    def write_atomic(self, key: str, data) -> None:
        path = self._path(key)
        tmp = self._write_tmp(path, data)
        os.replace(tmp, path)
        if self.durable:
            fsync_path(path.parent)

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
            fsync_path(path.parent)
        return created

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise MissingObjectError(f"missing object {key!r} in store {self.url}")
        return path.stat().st_size

    def list(self, prefix: str) -> list[str]:
        path = self._path(prefix) if prefix else self.root
        try:
            names = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in names if not n.startswith(TMP))

    def delete(self, key: str) -> None:
        path = self._path(key)
        if not path.is_dir():
            path.unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def total_bytes(self, prefix: str = "") -> int:
        base = self._path(prefix) if prefix else self.root
        total = 0
        for dirpath, _, files in os.walk(base):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    pass  # deleted while walking
        return total

    def lock(self, prefix: str) -> Lock:
        path = self._path(prefix)
        make_dirs(path, self.durable)
        # flock on the directory itself: no lock file to clean up, and the kernel drops
        # the lock when the holder dies (SIGKILL included).
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(
                f"{prefix!r} in {self.url} is being written by another process; one writer per segment: "
                "use another segment name"
            ) from None
        return _LocalLock(fd)

    def discard_temporaries(self, prefix: str) -> None:
        for dirpath, _, files in os.walk(self._path(prefix)):
            for name in files:
                if name.startswith(TMP):
                    Path(dirpath, name).unlink(missing_ok=True)

    def open_blob(self, key: str, *, whole: bool = False) -> Blob:
        return _LocalBlob(self._path(key), key, self.url)
