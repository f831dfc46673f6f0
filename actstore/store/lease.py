"""A writer's lease on its segment, where the storage has no locks (object storage).

The lease is the zarr group ``segments/<seg>/lease/zarr.json`` whose
``attributes.actstore_lease`` is ``{writer, host, pid, acquired, expires}`` (UTC ISO times).
Every change is a conditional put (``Storage.write_if``):

- acquire: create it if absent (``If-None-Match: *``); if it is there and has expired (its
  holder died or stopped), take it over with ``If-Match`` on the ETag read, so of two
  takers one wins; if it has not expired, refuse in one line naming the holder;
- renew: a heartbeat thread rewrites it every ``ttl/4`` seconds with ``If-Match`` on its
  own last ETag, so a writer that was stopped (SIGSTOP, a long GC pause, a suspended VM)
  and wakes up after a takeover finds another ETag and knows it lost the segment;
- release: write it back already expired (``If-Match``), so the next writer need not wait.

``ACTSTORE_LEASE_SECONDS`` (default 60) is the time a lease lasts without renewal; the
clocks of writers of one segment must agree to well within it. The lease alone does not
fence a writer stopped between its check and its put: every object a writer writes is
also a conditional put (store/writer.py), and a writer that takes over writes a commit
record first, so the stale writer's next put or commit fails (docs/FORMAT.md).

A storage that ignores ``If-None-Match`` (some S3-compatible servers) would let two writers
both "create": acquire probes for that once and refuses to write there.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import threading

from .errors import StoreError
from .format import group_doc
from .storage import Storage, VersionConflict


def lease_seconds() -> float:
    v = os.environ.get("ACTSTORE_LEASE_SECONDS", "60")
    try:
        ttl = float(v)
    except ValueError:
        raise StoreError(f"ACTSTORE_LEASE_SECONDS={v!r} is not a number of seconds") from None
    if ttl <= 0:
        raise StoreError(f"ACTSTORE_LEASE_SECONDS={v!r} must be positive")
    return ttl


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _parse(data: bytes) -> dict:
    try:
        rec = json.loads(data)["attributes"]["actstore_lease"]
        _dt.datetime.fromisoformat(rec["expires"])
        return rec
    except (ValueError, KeyError, TypeError):
        return {"writer": "?", "host": "?", "pid": "?", "expires": "1970-01-01T00:00:00+00:00"}


class Lease:
    """The lease of ``writer`` on segment ``prefix``; :meth:`acquire` before writing."""

    def __init__(self, storage: Storage, prefix: str, writer: str, ttl: float | None = None):
        self.storage = storage
        self.prefix = prefix
        self.key = f"{prefix}/lease/zarr.json"
        self.writer = writer
        self.ttl = lease_seconds() if ttl is None else ttl
        self.etag: str | None = None
        self.took_over: dict | None = None  # the expired holder's record, when taken over
        self.lost: str | None = None  # why this writer no longer holds the segment
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self, expires: _dt.datetime) -> bytes:
        rec = {
            "writer": self.writer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired": _now().isoformat(timespec="milliseconds"),
            "expires": expires.isoformat(timespec="milliseconds"),
        }
        return json.dumps(group_doc({"actstore_lease": rec})).encode()

    def _refuse(self, rec: dict, why: str) -> StoreError:
        seg = self.prefix.rsplit("/", 1)[-1]
        return StoreError(
            f"segment {seg!r} in {self.storage.url} {why} writer {rec.get('writer')} (host {rec.get('host')}, "
            f"pid {rec.get('pid')}, lease until {rec.get('expires')}); one writer per segment: use another "
            "segment name, or wait for the lease to expire (ACTSTORE_LEASE_SECONDS)"
        )

    def acquire(self) -> None:
        self._probe_conditional()
        body = self._body(_now() + _dt.timedelta(seconds=self.ttl))
        try:
            self.etag = self.storage.write_if(self.key, body, None)
        except VersionConflict as e:
            held = _parse(self.storage.read(self.key))
            if _dt.datetime.fromisoformat(held["expires"]) > _now():
                raise self._refuse(held, "is being written by") from None
            try:
                self.etag = self.storage.write_if(self.key, body, e.current)
            except VersionConflict:
                raise self._refuse(_parse(self.storage.read(self.key)), "was just taken by") from None
            self.took_over = held
        self._thread = threading.Thread(target=self._beat, name="actstore-lease", daemon=True)
        self._thread.start()

    def _probe_conditional(self) -> None:
        """Refuse a storage that accepts a second If-None-Match create of one key."""
        probe = f"{self.prefix}/lease/probe-{self.writer}"
        try:
            self.storage.write_if(probe, b"1", None)
            try:
                self.storage.write_if(probe, b"2", None)
            except VersionConflict:
                return
            raise StoreError(
                f"storage {self.storage.url} ignores conditional writes (If-None-Match), so two writers could "
                "tear a segment; write to AWS S3, GCS, Azure or a server with conditional PUTs, or to local disk"
            )
        finally:
            self.storage.delete(probe)

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self.renew()
            except StoreError:
                return  # lost (recorded in self.lost) or unreachable: the next put finds out

    def renew(self) -> None:
        """Extend the lease; :class:`StoreError` if another writer has taken it."""
        with self._mutex:
            if self.lost:
                raise StoreError(self.lost)
            body = self._body(_now() + _dt.timedelta(seconds=self.ttl))
            try:
                self.etag = self.storage.write_if(self.key, body, self.etag)
            except VersionConflict:
                try:
                    rec = _parse(self.storage.read(self.key))
                except StoreError:
                    rec = {"writer": "?"}
                seg = self.prefix.rsplit("/", 1)[-1]
                self.lost = (
                    f"segment {seg!r} in {self.storage.url} was taken over by writer {rec.get('writer')} (host "
                    f"{rec.get('host')}, pid {rec.get('pid')}) while writer {self.writer} was stopped; this writer "
                    "stopped and its uncommitted rows are discarded: resume the segment with a new writer"
                )
                raise StoreError(self.lost) from None

    def check(self) -> None:
        """Renew now: a writer calls it before each commit."""
        self.renew()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._mutex:
            if self.lost or self.etag is None:
                return
            try:  # written back expired: the next writer need not wait out the ttl
                self.storage.write_if(self.key, self._body(_now() - _dt.timedelta(seconds=1)), self.etag)
            except StoreError:
                pass  # taken over meanwhile, or unreachable: it expires by itself
            self.etag = None
