"""A local whole-shard disk cache for object storage, with a size cap.

``ACTSTORE_CACHE_DIR`` turns it on and ``ACTSTORE_CACHE_GB`` caps it (default 50). A shard
opened for reading is fetched whole once (one GET) into ``DIR/<sha256 of url, key and
ETag>``, written to a temporary and renamed into place, and then read with ``pread`` like
a local store: a second epoch, or a second process on the node (DataLoader workers),
reads the disk, not the network. The ETag is part of the name, so a replaced object is
never served stale. After each insertion the oldest files (by mtime, refreshed on every
hit) are removed until the cache fits its cap; a file removed while another process has
it open stays readable there (POSIX), so eviction never breaks a reader.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from ..errors import StoreError
from ._base import Blob


class _FileBlob(Blob):
    def __init__(self, path: Path, etag: str):
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        self.etag = etag

    def pread(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ShardCache:
    """Whole objects on local disk, keyed by (store URL, key, ETag), at most ``cap`` bytes."""

    def __init__(self, root: str | os.PathLike, cap: int):
        self.root = Path(root)
        self.cap = int(cap)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot make the shard cache ACTSTORE_CACHE_DIR={root} ({e.strerror}); fix the path"
            ) from None
        self.hits = 0
        self.misses = 0

    def _file(self, url: str, key: str, etag: str) -> Path:
        return self.root / hashlib.sha256(f"{url}\0{key}\0{etag}".encode()).hexdigest()[:40]

    def open(self, storage, key: str, etag: str, size: int) -> Blob:
        path = self._file(storage.url, key, etag)
        try:
            blob = _FileBlob(path, etag)
            if blob.size == size:
                self.hits += 1
                os.utime(path)  # recently used: evicted last
                return blob
            blob.close()  # a foreign or damaged file: fetch again
        except FileNotFoundError:
            pass
        self.misses += 1
        data, got_etag = storage._get_whole(key)
        if etag and got_etag and got_etag != etag:
            path = self._file(storage.url, key, got_etag)  # replaced since the HEAD: cache what we got
        tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                f.write(memoryview(data))
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(
                f"cannot write the shard cache {self.root} ({e.strerror}); free space or unset ACTSTORE_CACHE_DIR"
            ) from None
        self._evict(keep=path)
        return _FileBlob(path, got_etag or etag)

    def _evict(self, keep: Path) -> None:
        files = []
        for entry in os.scandir(self.root):
            if entry.is_file() and not entry.name.startswith(".tmp-"):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                files.append((st.st_mtime_ns, st.st_size, entry.path))
        total = sum(f[1] for f in files)
        for _, nbytes, p in sorted(files):
            if total <= self.cap:
                break
            if p == str(keep):
                continue
            try:
                os.unlink(p)
                total -= nbytes
            except FileNotFoundError:
                pass

    def bytes(self) -> int:
        return sum(e.stat().st_size for e in os.scandir(self.root) if e.is_file())
